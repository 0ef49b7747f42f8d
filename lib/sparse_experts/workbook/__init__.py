"""The workbook layer: what the notebooks call. One config per notebook (:mod:`.configs`: its knobs with
their checks, values per preset, expected run time and headline figures) and the preset table that maps
notebook names to them (:mod:`.presets`), a notebook's session and its saved figures (:mod:`.session`), the
artifact cache of trained models (:mod:`.cache`), notebook 02's models (:mod:`.zoo`), shared figures
(:mod:`.viz`) and the headless runner (:mod:`.runner`, ``python -m sparse_experts.workbook``).

Layer: the top; imports every layer below it.
"""

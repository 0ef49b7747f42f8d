"""The workbook layer: what the notebooks call. Notebook presets and knobs (:mod:`.presets`), a notebook's
session and its saved figures (:mod:`.session`), the artifact cache of trained models (:mod:`.cache`),
notebook 02's models (:mod:`.zoo`), shared figures (:mod:`.viz`) and the headless runner (:mod:`.runner`,
``python -m sparse_experts.workbook``).

Layer: the top; imports every layer below it.
"""

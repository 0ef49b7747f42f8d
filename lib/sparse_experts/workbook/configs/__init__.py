"""One config per notebook, big_vision style: a frozen dataclass of its knobs with the check next to each
field (:mod:`.base`), ``PRESETS`` (its knob values under every preset), ``EXPECTED_SECONDS`` (per preset,
None where not measured; the runner flags a run well over) and, in its docstring, the headline figures it
reports. :mod:`sparse_experts.workbook.presets` maps notebook names (``00_tour``, ...) to these modules.
"""

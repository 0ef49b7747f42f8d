"""One config per notebook, big_vision style: a frozen dataclass of its knobs with the check next to each
field, its values under every preset, the expected run time and the headline figures it reports.

==========================  ======================
``tour``                    ``00_tour``
``vit22b_recipe``           ``01_vit22b_recipe``
``train_vmoe``              ``02_train_vmoe``
``routing_explorer``        ``03_routing_explorer``
``adaptive_compute``        ``04_adaptive_compute``
==========================  ======================

Each module exports ``Config``, ``PRESETS`` (knob values per preset) and ``EXPECTED_SECONDS`` (per preset;
None where not measured). :mod:`sparse_experts.workbook.presets` maps notebook names to these modules.
"""

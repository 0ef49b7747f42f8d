"""Presets, and each notebook's config under each: the one entry the runner and :mod:`.session` use.

A preset is a named bundle of knob values:

- ``smoke``: CI. Seconds per notebook, tiny data and models; checks that the code runs, not the science.
- ``cpu``: the default. Minutes per notebook on a 2-core laptop, embedded offline data.
- ``gpu``: one accelerator. Catalog datasets (CIFAR-100 upstream, VTAB-like downstream tasks) and real sizes.
- ``tpu``: a TPU slice. ImageNet-scale upstream data and real sizes.

Each notebook's knobs, their checks, their values under every preset, its expected run time and its headline
figures live in its own config module under :mod:`sparse_experts.workbook.configs`. Adding a notebook means
adding such a module and listing it in :data:`NOTEBOOKS`; ``tests/test_presets.py`` checks every notebook
has one, with values for every preset that pass the config's checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType, ModuleType
from typing import Any

from sparse_experts.workbook.configs import (
    adaptive_compute,
    routing_explorer,
    tour,
    train_vmoe,
    vit22b_recipe,
)
from sparse_experts.workbook.configs.base import (
    DEFAULT_PRESET,
    PRESET_NAMES,
    NotebookConfig,
    ParameterError,
    from_preset,
    one_of,
)

__all__ = ["DEFAULT_PRESET", "PRESET_NAMES", "NotebookConfig", "ParameterError", "from_preset"]

PRESET_DESCRIPTIONS: Mapping[str, str] = MappingProxyType(
    {
        "smoke": "CI: seconds per notebook on embedded data; proves the code runs, not the science",
        "cpu": "default: minutes per notebook on 2 CPU cores, embedded offline data",
        "gpu": "one GPU: catalog datasets (CIFAR-100 upstream, VTAB-like tasks), real sizes",
        "tpu": "TPU slice: ImageNet-scale upstream, real sizes",
    }
)

# Process settings the runner gives a notebook's kernel under each preset. Under smoke, XLA compiles without
# backend optimisation: about 3x faster compiles on CPU, slower steps (smoke checks that code runs, and its
# timings mean nothing).
PRESET_XLA_FLAGS: Mapping[str, str] = MappingProxyType({"smoke": "--xla_backend_optimization_level=0"})

# What the accelerator presets assume about the machine; the tests dry-run each gpu/tpu preset against it
# (shapes by abstract evaluation, memory per device from models.memory_plan).
PRESET_DEVICES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "gpu": {"devices": 1, "memory_gib": 80, "example": "one A100/H100 80 GB"},
        "tpu": {"devices": 4, "memory_gib": 32, "example": "a TPU v4-8 slice (4 chips of 32 GiB)"},
    }
)

# Notebook name -> its config module (exporting Config, PRESETS and EXPECTED_SECONDS).
NOTEBOOKS: dict[str, ModuleType] = {
    module.Config.notebook: module
    for module in (tour, vit22b_recipe, train_vmoe, routing_explorer, adaptive_compute)
}

# The type of a notebook's resolved knobs (the name zoo and older code use).
Params = NotebookConfig

# Notebook 02's model names (sparse_experts.workbook.zoo defines each).
ZOO_MODELS = train_vmoe.MODEL_NAMES


def check_preset(preset: Any) -> str:
    return one_of(*PRESET_NAMES)("preset", preset)


def config_module(notebook: str) -> ModuleType:
    if notebook not in NOTEBOOKS:
        raise ParameterError(
            f"notebook {notebook!r} has no config in presets.NOTEBOOKS; "
            f"known notebooks: {', '.join(NOTEBOOKS)}"
        )
    return NOTEBOOKS[notebook]


def resolve(notebook: str, preset: str = DEFAULT_PRESET, seed: int = 0, **knobs: Any) -> NotebookConfig:
    """The validated config of ``notebook``: the preset's values, except the knobs given (not ``None``).

    Raises ``ParameterError`` for an unknown notebook, preset or knob, or a value out of range, naming the
    knob, the value and what is allowed; nothing is computed before.
    """
    module = config_module(notebook)
    return from_preset(module.Config, module.PRESETS, preset, seed=seed, **knobs)


def knob_names(notebook: str) -> tuple[str, ...]:
    """All parameters a notebook declares, in order: ``preset``, ``seed``, then its knobs."""
    return config_module(notebook).Config.knob_names()


def expected_seconds(notebook: str, preset: str) -> float | None:
    """How long a run of ``notebook`` under ``preset`` is expected to take (None: not measured)."""
    return config_module(notebook).EXPECTED_SECONDS.get(preset)

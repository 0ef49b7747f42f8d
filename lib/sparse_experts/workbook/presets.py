"""Presets, and each notebook's config under each: the one entry the runner and :mod:`.session` use.

A preset is a named bundle of knob values (:data:`PRESET_DESCRIPTIONS`). Adding a notebook means adding its
config module under :mod:`sparse_experts.workbook.configs` and listing it in :data:`NOTEBOOKS`;
``tests/test_presets.py`` checks that every notebook has one, whose values under every preset pass its checks.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from sparse_experts.workbook.configs import (
    adaptive_compute,
    ensembles,
    expert_models,
    routing_explorer,
    scale_out,
    tour,
    train_vmoe,
    vit22b_recipe,
)
from sparse_experts.workbook.configs.base import (
    DEFAULT_PRESET,
    PRESET_NAMES,
    NotebookConfig,
    ParameterError,
    one_of,
)

PRESET_DESCRIPTIONS = {
    "smoke": "CI: seconds per notebook on embedded data; proves the code runs, not the science",
    "cpu": "default: minutes per notebook on 2 CPU cores, embedded offline data",
    "gpu": "one GPU: catalog datasets (CIFAR-100 upstream, VTAB-like tasks), real sizes",
    "tpu": "TPU slice: ImageNet-scale upstream, real sizes",
    "gpu_embedded": "one GPU, offline: embedded sets at full size, gpu-sized models, minutes (the GPU CI)",
}

# Process settings the runner gives a notebook's kernel under each preset. Under smoke, XLA compiles without
# backend optimisation: about 3x faster compiles on CPU, slower steps (smoke checks that code runs, and its
# timings mean nothing).
PRESET_XLA_FLAGS = {"smoke": "--xla_backend_optimization_level=0"}

# What the accelerator presets assume about the machine; the tests dry-run each gpu/tpu preset against it
# (shapes by abstract evaluation, memory per device from models.memory_plan).
PRESET_DEVICES = {
    "gpu": {"devices": 1, "memory_gib": 80, "example": "one A100/H100 80 GB"},
    "tpu": {"devices": 4, "memory_gib": 32, "example": "a TPU v4-8 slice (4 chips of 32 GiB)"},
    "gpu_embedded": {"devices": 1, "memory_gib": 80, "example": "one A100/H100 80 GB (or an H200)"},
}

# Notebook name -> its config module (exporting Config, PRESETS and EXPECTED_SECONDS).
NOTEBOOKS: dict[str, ModuleType] = {
    module.Config.notebook: module
    for module in (
        tour,
        vit22b_recipe,
        train_vmoe,
        routing_explorer,
        adaptive_compute,
        ensembles,
        expert_models,
        scale_out,
    )
}


def check_preset(preset: Any) -> str:
    return one_of(*PRESET_NAMES)("preset", preset)


def config_module(notebook: str) -> ModuleType:
    if notebook not in NOTEBOOKS:
        raise ParameterError(
            f"notebook {notebook!r} has no config in presets.NOTEBOOKS; known notebooks: "
            + ", ".join(NOTEBOOKS)
        )
    return NOTEBOOKS[notebook]


def resolve(notebook: str, preset: str = DEFAULT_PRESET, seed: int = 0, **knobs: Any) -> NotebookConfig:
    """The validated config of ``notebook``: the preset's values, except the knobs given (not ``None``).

    Raises ``ParameterError`` for an unknown notebook, preset or knob, or a value out of range, naming the
    knob, the value and what is allowed; nothing is computed before.
    """
    module = config_module(notebook)
    given = {k: v for k, v in dict(knobs, seed=seed).items() if v is not None}
    values = {**module.PRESETS[check_preset(preset)], **given, "preset": preset}
    try:
        return module.Config(**values)
    except TypeError:  # the dataclass refuses a knob it does not have: say which, and list the valid ones
        names = module.Config.knob_names()
        unknown = sorted(set(values) - set(names))
        if not unknown:
            raise
        raise ParameterError(
            f"{notebook} has no parameter {unknown[0]!r}; its parameters are: {', '.join(names)}"
        ) from None


def knob_names(notebook: str) -> tuple[str, ...]:
    """All parameters a notebook declares, in order: ``preset``, ``seed``, then its knobs."""
    return config_module(notebook).Config.knob_names()


def expected_seconds(notebook: str, preset: str) -> float | None:
    """How long a run of ``notebook`` under ``preset`` is expected to take (None: not measured)."""
    return config_module(notebook).EXPECTED_SECONDS.get(preset)

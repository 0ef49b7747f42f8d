"""Presets and notebook knobs: the one place that says what each preset means for each notebook.

A preset is a named bundle of knob values:

- ``smoke``: CI. Seconds per notebook, tiny data and models; checks that the code runs, not the science.
- ``cpu``: the default. Minutes per notebook on a 2-core laptop, embedded offline data.
- ``gpu``: one accelerator. Catalog datasets (CIFAR-100 upstream, VTAB-like downstream tasks) and real sizes.
- ``tpu``: a TPU slice. ImageNet-scale upstream data and real sizes.

Every notebook starts with a papermill ``parameters`` cell whose first knobs are ``preset`` and ``seed``;
its other knobs default to ``None``, meaning "the preset's value". :func:`resolve` fills those in and
validates everything before any compute, raising :class:`ParameterError` that names the knob, the value
and what is allowed.

Adding a notebook means adding its knobs to :data:`NOTEBOOK_KNOBS` (with a validator each) and a value for
every knob under every preset in :data:`PRESET_VALUES`; ``tests/test_presets.py`` checks both are complete.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NoReturn

import tensorflow_datasets as tfds

from sparse_experts import datasets, models

PRESET_NAMES: tuple[str, ...] = ("smoke", "cpu", "gpu", "tpu")
DEFAULT_PRESET = "cpu"

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
# (shapes by abstract evaluation, memory per device from sharding.memory_plan).
PRESET_DEVICES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "gpu": {"devices": 1, "memory_gib": 80, "example": "one A100/H100 80 GB"},
        "tpu": {"devices": 4, "memory_gib": 32, "example": "a TPU v4-8 slice (4 chips of 32 GiB)"},
    }
)


class ParameterError(ValueError):
    """A notebook knob has a value outside what is allowed. The message names knob, value and allowed."""


def _fail(name: str, value: Any, allowed: str) -> NoReturn:
    raise ParameterError(f"parameter {name}={value!r} is not allowed; expected {allowed}")


# ---------------------------------------------------------------------------------------------------------
# Validators: each takes (name, value) and raises ParameterError, or returns the (normalised) value.
# ---------------------------------------------------------------------------------------------------------
Validator = Callable[[str, Any], Any]


def choice(*allowed: Any) -> Validator:
    def check(name: str, value: Any) -> Any:
        if value not in allowed:
            _fail(name, value, "one of " + ", ".join(repr(a) for a in allowed))
        return value

    check.allowed = allowed  # type: ignore[attr-defined]
    return check


def integer(low: int | None = None, high: int | None = None) -> Validator:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(name, value, f"an integer{_range_text(low, high)}")
        if (low is not None and value < low) or (high is not None and value > high):
            _fail(name, value, f"an integer{_range_text(low, high)}")
        return int(value)

    return check


def real(low: float | None = None, high: float | None = None, *, low_open: bool = False) -> Validator:
    def check(name: str, value: Any) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value <= high
        if not ok:
            bound = f" > {low}" if low_open and low is not None else _range_text(low, high)
            _fail(name, value, f"a finite number{bound}")
        return float(value)

    return check


def boolean() -> Validator:
    def check(name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            _fail(name, value, "True or False")
        return value

    return check


def dataset_name(name: str, value: Any) -> str:
    """An embedded dataset name, or a TFDS catalog name (checked against the TFDS registry, offline)."""

    if not isinstance(value, str) or not value:
        _fail(
            name, value, "a dataset name: one of " + ", ".join(datasets.list_datasets()) + " or a TFDS name"
        )
    if value in datasets.list_datasets():
        return value
    if _is_catalog_name(value):
        return value
    _fail(
        name,
        value,
        "an embedded dataset (" + ", ".join(datasets.list_datasets()) + ") or a TFDS catalog dataset name",
    )


def dataset_list(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) == 0:
        _fail(name, value, "a non-empty list of dataset names")
    return tuple(dataset_name(f"{name}[{i}]", v) for i, v in enumerate(value))


def vit_size(name: str, value: Any) -> str:
    """A ViT size string such as 'mu/4', 'Ti/16', 'B/16' (checked by decoding it)."""

    try:
        models.vit_config(value)
    except (ValueError, TypeError) as err:
        _fail(name, value, f"a ViT size string ({err})")
    return value


def lr_grid(name: str, value: Any) -> tuple[float, ...]:
    """At least 5 positive learning rates spanning at least 2 orders of magnitude."""
    ok = not isinstance(value, str) and isinstance(value, Sequence) and len(value) >= 5
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in value)
    if not ok or max(value) / min(value) < 100:
        _fail(name, value, "a list of >= 5 learning rates > 0 whose largest is >= 100x the smallest")
    return tuple(float(v) for v in sorted(value))


def names_from(allowed: Sequence[str]) -> Validator:
    """A non-empty list of distinct names, each one of ``allowed``."""

    def check(name: str, value: Any) -> tuple[str, ...]:
        ok = not isinstance(value, str) and isinstance(value, Sequence) and len(value) > 0
        ok = ok and all(v in allowed for v in value) and len(set(value)) == len(value)
        if not ok:
            _fail(name, value, "a non-empty list of distinct names from " + ", ".join(map(repr, allowed)))
        return tuple(value)

    check.allowed = tuple(allowed)  # type: ignore[attr-defined]
    return check


def _is_catalog_name(value: str) -> bool:

    base = value.split(":")[0].split("/")[0]
    return base in set(tfds.list_builders(with_community_datasets=False))


def _range_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""


@dataclass(frozen=True)
class Knob:
    """One notebook parameter: what it means and how to check it."""

    doc: str
    check: Validator


# ---------------------------------------------------------------------------------------------------------
# The knobs of every notebook, and their values under every preset.
# ---------------------------------------------------------------------------------------------------------
NOTEBOOK_KNOBS: dict[str, dict[str, Knob]] = {
    "00_tour": {
        "upstream": Knob("upstream (pretraining) dataset to show", dataset_name),
        "downstream": Knob("downstream tasks to show, a list of dataset names", dataset_list),
        "images_per_class": Knob("images per class in each example grid", integer(1, 16)),
        "classes_shown": Knob("classes shown per example grid", integer(1, 40)),
    },
    "01_vit22b_recipe": {
        "dataset": Knob("dataset for the small-scale experiments (upstream)", dataset_name),
        "image_size": Knob("image side in pixels fed to the models", integer(8, 512)),
        "model": Knob("ViT size string for the experiments, e.g. 'mu/4' or 'S/16'", vit_size),
        "batch_size": Knob("training batch size", integer(1, 65536)),
        "learning_rates": Knob("learning rates of the QK-norm sweep (>= 5, spanning >= 2 orders)", lr_grid),
        "sweep_steps": Knob("training steps per learning rate in the sweep", integer(1, 1_000_000)),
        "compare_steps": Knob(
            "training steps for the parallel vs sequential comparison", integer(2, 1_000_000)
        ),
        "plan_devices": Knob(
            "devices of the mesh on which the 22B memory plan is computed", integer(1, 65536)
        ),
        "plan_model_axis": Knob(
            "size of the 'model' axis of that mesh (divides plan_devices)", integer(1, 1024)
        ),
    },
}

# Notebook 02's model names; sparse_experts.workbook.zoo defines each (zoo.MODEL_NAMES is this tuple, kept
# here so presets imports nothing heavy).
ZOO_MODELS = (
    "dense",
    "vmoe_every2_k2",
    "vmoe_last2_k2",
    "vmoe_every2_k1",
    "expert_choice",
    "soft_moe",
    "dense_large",
)
NOTEBOOK_KNOBS["02_train_vmoe"] = {
    "dataset": Knob("upstream dataset the models are trained on", dataset_name),
    "label": Knob("which labels to learn: 'label' (fine) or 'coarse_label'", choice("label", "coarse_label")),
    "image_size": Knob("image side in pixels fed to the models", integer(4, 512)),
    "patch_size": Knob("patch side in pixels", integer(1, 64)),
    "width": Knob("backbone width D", integer(8, 8192)),
    "depth": Knob("backbone depth L (>= 6 so that every-2 and last-2 placements differ)", integer(1, 128)),
    "mlp_dim": Knob("MLP hidden width H of the backbone (and of each expert)", integer(8, 65536)),
    "num_heads": Knob("attention heads", integer(1, 128)),
    "large_width": Knob("width of the larger dense model (its MLP is 4x wider)", integer(8, 8192)),
    "large_depth": Knob("depth of the larger dense model", integer(1, 128)),
    "num_experts": Knob("experts E per MoE layer", integer(2, 1024)),
    "capacity_factor": Knob("top-k capacity factor during training", real(0, 16, low_open=True)),
    "eval_capacity_factor": Knob("top-k capacity factor at evaluation", real(0, 16, low_open=True)),
    "group_size": Knob("images per routing group", integer(1, 4096)),
    "batch_size": Knob("training batch size", integer(1, 65536)),
    "steps": Knob("training steps per model", integer(1, 10_000_000)),
    "warmup_steps": Knob("linear warmup steps (then cosine decay)", integer(0, 1_000_000)),
    "learning_rate": Knob("peak learning rate (AdamW)", real(0, 1, low_open=True)),
    "weight_decay": Knob("decoupled weight decay on matrices", real(0, 10)),
    "seeds": Knob("seeds for the dense model and the main V-MoE (the spread)", integer(1, 10)),
    "models": Knob("which models to train (names from sparse_experts.workbook.zoo)", names_from(ZOO_MODELS)),
    "eval_batch_size": Knob("evaluation batch size (fixed: routing depends on the group)", integer(1, 65536)),
    "eval_every": Knob("validation every this many steps", integer(1, 10_000_000)),
    "checkpoint_every": Knob("orbax checkpoint every this many steps", integer(1, 10_000_000)),
}

_EMBEDDED_DOWNSTREAM = (
    "shapes_novel",
    "shapes_finegrained",
    "shapes_texture",
    "shapes_count",
    "shapes_position",
    "shapes_orientation",
    "shapes_shift",
)
_CATALOG_DOWNSTREAM = ("cifar10", "oxford_flowers102", "dtd", "oxford_iiit_pet", "svhn_cropped", "eurosat")

PRESET_VALUES: dict[str, dict[str, dict[str, Any]]] = {
    "00_tour": {
        "smoke": dict(
            upstream="shapes_upstream_small",
            downstream=_EMBEDDED_DOWNSTREAM[:2],
            images_per_class=2,
            classes_shown=6,
        ),
        "cpu": dict(
            upstream="shapes_upstream",
            downstream=_EMBEDDED_DOWNSTREAM,
            images_per_class=4,
            classes_shown=12,
        ),
        "gpu": dict(
            upstream="cifar100", downstream=_CATALOG_DOWNSTREAM, images_per_class=4, classes_shown=12
        ),
        "tpu": dict(
            upstream="imagenet2012", downstream=_CATALOG_DOWNSTREAM, images_per_class=4, classes_shown=12
        ),
    },
}


_SWEEP_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
PRESET_VALUES["01_vit22b_recipe"] = {
    "smoke": dict(
        dataset="digits",
        image_size=8,
        model="mu/2",
        batch_size=16,
        learning_rates=(1e-3, 1e-2, 1e-1, 3e-1, 1.0),
        sweep_steps=12,
        compare_steps=6,
        plan_devices=1024,
        plan_model_axis=8,
    ),
    # digits learns within a few hundred steps on 2 cores, so the loss against learning rate is informative;
    # on the shapes upstream set a micro ViT is still near chance after 200 steps (measured: loss 3.8-4.1
    # against ln 60 = 4.09), which leaves nothing to compare.
    "cpu": dict(
        dataset="digits",
        image_size=8,
        model="mu/2",
        batch_size=64,
        learning_rates=_SWEEP_RATES,
        sweep_steps=300,
        compare_steps=300,
        plan_devices=1024,
        plan_model_axis=8,
    ),
    "gpu": dict(
        dataset="cifar100",
        image_size=32,
        model="S/4",
        batch_size=256,
        learning_rates=_SWEEP_RATES,
        sweep_steps=2000,
        compare_steps=2000,
        plan_devices=1024,
        plan_model_axis=8,
    ),
    "tpu": dict(
        dataset="imagenet2012",
        image_size=224,
        model="S/16",
        batch_size=128,
        learning_rates=_SWEEP_RATES,
        sweep_steps=5000,
        compare_steps=5000,
        plan_devices=1024,
        plan_model_axis=8,
    ),
}


_ZOO_COMMON = dict(label="label", warmup_steps=50, weight_decay=1e-4, eval_batch_size=500)
PRESET_VALUES["02_train_vmoe"] = {
    # A reduced set of tiny models: proves the pipeline (train, cache, evaluate, plot) runs.
    "smoke": dict(
        _ZOO_COMMON, dataset="shapes_upstream_small", image_size=16, patch_size=4, width=32, depth=2,
        mlp_dim=64, num_heads=2, large_width=48, large_depth=2, num_experts=4, capacity_factor=1.05,
        eval_capacity_factor=1.05, group_size=2, batch_size=32, steps=12, warmup_steps=2, learning_rate=3e-3,
        seeds=1, models=("dense", "vmoe_every2_k2", "expert_choice", "soft_moe"), eval_batch_size=250,
        eval_every=12, checkpoint_every=6,
    ),
    "cpu": dict(
        _ZOO_COMMON, dataset="shapes_upstream", image_size=16, patch_size=4, width=64, depth=6, mlp_dim=256,
        num_heads=4, large_width=96, large_depth=6, num_experts=8, capacity_factor=1.05,
        eval_capacity_factor=1.05, group_size=8, batch_size=128, steps=320, learning_rate=3e-3, seeds=3,
        models=ZOO_MODELS, eval_batch_size=1000, eval_every=80, checkpoint_every=160,
    ),
    "gpu": dict(
        _ZOO_COMMON, dataset="cifar100", image_size=32, patch_size=4, width=384, depth=12, mlp_dim=1536,
        num_heads=6, large_width=768, large_depth=12, num_experts=8, capacity_factor=1.05,
        eval_capacity_factor=1.05, group_size=4, batch_size=256, steps=20_000, warmup_steps=1000,
        learning_rate=1e-3, weight_decay=0.05, seeds=3, models=ZOO_MODELS, eval_every=2000,
        checkpoint_every=2000,
    ),
    "tpu": dict(
        _ZOO_COMMON, dataset="imagenet2012", image_size=224, patch_size=16, width=768, depth=12,
        mlp_dim=3072, num_heads=12, large_width=1536, large_depth=24, num_experts=32, capacity_factor=1.05,
        eval_capacity_factor=1.05, group_size=1, batch_size=1024, steps=90_000, warmup_steps=10_000,
        learning_rate=1e-3, weight_decay=0.1, seeds=3, models=ZOO_MODELS, eval_every=5000,
        checkpoint_every=5000,
    ),
}  # fmt: skip


def _zoo_constraints(values: dict[str, Any]) -> None:

    if values["image_size"] % values["patch_size"]:
        _fail("image_size", values["image_size"], f"a multiple of patch_size={values['patch_size']}")
    for width in ("width", "large_width"):
        if values[width] % values["num_heads"]:
            _fail(width, values[width], f"a multiple of num_heads={values['num_heads']}")
    for batch in ("batch_size", "eval_batch_size"):
        if values[batch] % values["group_size"]:
            _fail(batch, values[batch], f"a multiple of group_size={values['group_size']}")
    if values["warmup_steps"] > values["steps"]:
        _fail("warmup_steps", values["warmup_steps"], f"at most steps={values['steps']}")
    chosen = set(values["models"])
    if chosen & {"vmoe_every2_k2", "vmoe_last2_k2", "vmoe_every2_k1", "expert_choice", "soft_moe"}:
        if values["depth"] < 2:
            _fail("depth", values["depth"], "at least 2 (MoE layers go in odd layers 1, 3, ...)")
    if {"vmoe_every2_k2", "vmoe_last2_k2"} <= chosen:
        every = models.placement_layers("every-2", values["depth"])
        last = models.placement_layers("last-2", values["depth"])
        if every == last:
            _fail("depth", values["depth"], f"at least 6: every-2 and last-2 both give layers {every}")


def _recipe_constraints(values: dict[str, Any]) -> None:

    if values["plan_devices"] % values["plan_model_axis"]:
        _fail(
            "plan_model_axis",
            values["plan_model_axis"],
            f"a divisor of plan_devices={values['plan_devices']}",
        )
    patch = models.vit_config(values["model"]).patch_size
    if values["image_size"] % patch:
        _fail(
            "image_size",
            values["image_size"],
            f"a multiple of the patch size {patch} of model={values['model']!r}",
        )


# Checks that involve several knobs of one notebook, run after each knob passed its own check.
CONSTRAINTS: dict[str, list[Callable[[dict[str, Any]], None]]] = {
    "01_vit22b_recipe": [_recipe_constraints],
    "02_train_vmoe": [_zoo_constraints],
}


class Params(Mapping[str, Any]):
    """Resolved, validated knobs of one notebook run: read as ``params.seed`` or ``params["seed"]``."""

    def __init__(self, notebook: str, values: Mapping[str, Any], given: Mapping[str, Any]):
        self._notebook = notebook
        self._values = dict(values)
        self._given = dict(given)

    @property
    def notebook(self) -> str:
        return self._notebook

    @property
    def given(self) -> dict[str, Any]:
        """The knobs as passed (``None`` where the preset's value was used)."""
        return dict(self._given)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{self._notebook} has no parameter {name!r}") from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"Params[{self._notebook}]({inner})"


def check_preset(preset: Any) -> str:
    if preset not in PRESET_NAMES:
        _fail("preset", preset, "one of " + ", ".join(repr(p) for p in PRESET_NAMES))
    return preset


def check_seed(seed: Any) -> int:
    return integer(0, 2**31 - 1)("seed", seed)


def knob_names(notebook: str) -> tuple[str, ...]:
    """All parameters a notebook declares, in order: ``preset``, ``seed``, then its knobs."""
    return ("preset", "seed", *_knobs(notebook))


def _knobs(notebook: str) -> dict[str, Knob]:
    if notebook not in NOTEBOOK_KNOBS:
        raise ParameterError(
            f"notebook {notebook!r} has no knobs registered in presets.NOTEBOOK_KNOBS; "
            f"known notebooks: {', '.join(sorted(NOTEBOOK_KNOBS))}"
        )
    return NOTEBOOK_KNOBS[notebook]


def preset_value(notebook: str, preset: str, knob: str) -> Any:
    check_preset(preset)
    return PRESET_VALUES[notebook][preset][knob]


def resolve(notebook: str, preset: str = DEFAULT_PRESET, seed: int = 0, **knobs: Any) -> Params:
    """Validate a notebook's parameters and fill every ``None`` with the preset's value.

    Raises ``ParameterError`` for an unknown preset, an unknown knob, or a value out of range, before any
    compute happens. Returns a read-only :class:`Params` holding ``preset``, ``seed`` and every knob.
    """
    check_preset(preset)
    seed = check_seed(seed)
    spec = _knobs(notebook)
    unknown = sorted(set(knobs) - set(spec))
    if unknown:
        raise ParameterError(
            f"{notebook} has no parameter {unknown[0]!r}; its parameters are: "
            + ", ".join(knob_names(notebook))
        )
    values: dict[str, Any] = {"preset": preset, "seed": seed}
    for name, knob in spec.items():
        value = knobs.get(name)
        if value is None:
            value = PRESET_VALUES[notebook][preset][name]
        values[name] = knob.check(name, value)
    for constraint in CONSTRAINTS.get(notebook, ()):
        constraint(values)
    given = {"preset": preset, "seed": seed, **{k: knobs.get(k) for k in spec}}
    return Params(notebook, values, given)


# --- 03_routing_explorer: knobs and preset values (below this line) ---
_EXPLORER_MODELS = ("vmoe_every2_k2", "vmoe_last2_k2", "vmoe_every2_k1", "expert_choice", "soft_moe")
NOTEBOOK_KNOBS["03_routing_explorer"] = {
    "eval_images": Knob(
        "test images analysed (the first ones in stored order; a multiple of notebook 02's group_size)",
        integer(1, 1_000_000),
    ),
    "image_index": Knob("which of those images the patch view shows first (0-based)", integer(0, 999_999)),
    "layer": Knob(
        "MoE layer shown first: a layer index, or -1 for each model's first MoE layer", integer(-1, 127)
    ),
    "k": Knob("top-k choices per token at test time (at most notebook 02's num_experts)", integer(1, 1024)),
    "capacity_factor": Knob("test-time capacity factor", real(0, 16, low_open=True)),
    "batch_priority": Knob("Batch Prioritized Routing at test time (training used none)", boolean()),
    "ablate_expert": Knob(
        "expert switched off in the ablation: an index, or -1 for the most specialised one", integer(-1, 1023)
    ),
    "models": Knob(
        "MoE models of notebook 02 to explore (each among notebook 02's models for the preset)",
        names_from(_EXPLORER_MODELS),
    ),
}
_EXPLORER_COMMON = dict(
    image_index=0, layer=-1, k=2, capacity_factor=1.05, batch_priority=False, ablate_expert=-1
)
PRESET_VALUES["03_routing_explorer"] = {
    "smoke": dict(_EXPLORER_COMMON, eval_images=250, models=("vmoe_every2_k2", "expert_choice", "soft_moe")),
    "cpu": dict(_EXPLORER_COMMON, eval_images=2000, models=_EXPLORER_MODELS),
    "gpu": dict(_EXPLORER_COMMON, eval_images=2000, models=_EXPLORER_MODELS),
    "tpu": dict(_EXPLORER_COMMON, eval_images=2000, models=_EXPLORER_MODELS),
}


def _explorer_constraints(values: dict[str, Any]) -> None:
    """Against notebook 02's knobs under the same preset: the models exist, k and the ablated expert fit E,
    the image set splits into whole routing groups, the layer is an MoE layer of every explored model."""

    zoo = resolve("02_train_vmoe", values["preset"], values["seed"])
    trained = ", ".join(m for m in zoo["models"] if m in _EXPLORER_MODELS)
    if any(m not in zoo["models"] for m in values["models"]):
        _fail("models", values["models"], f"models notebook 02 trains under {values['preset']!r}: {trained}")
    group, experts = zoo["group_size"], zoo["num_experts"]
    if values["eval_images"] % group:
        _fail("eval_images", values["eval_images"], f"a multiple of notebook 02's group_size={group}")
    if values["image_index"] >= values["eval_images"]:
        _fail("image_index", values["image_index"], f"an integer in [0, eval_images={values['eval_images']})")
    if values["k"] > experts:
        _fail("k", values["k"], f"an integer in [1, num_experts={experts}] (notebook 02's num_experts)")
    if values["ablate_expert"] >= experts:
        _fail("ablate_expert", values["ablate_expert"], f"-1 or an expert index in [0, {experts})")
    if values["layer"] >= 0:
        for name in values["models"]:
            placement = "last-2" if name == "vmoe_last2_k2" else "every-2"
            layers = models.placement_layers(placement, zoo["depth"])
            if values["layer"] not in layers:
                allowed = f"-1 or an MoE layer of every explored model ({name}: {layers})"
                _fail("layer", values["layer"], allowed)


CONSTRAINTS["03_routing_explorer"] = [_explorer_constraints]


# --- 04_adaptive_compute: knobs and preset values (below this line) ---
def capacity_factor_list(name: str, value: Any) -> tuple[float, ...]:
    """At least 2 distinct capacity factors, each in (0, 16]; returned sorted."""
    ok = not isinstance(value, str) and isinstance(value, Sequence) and len(value) >= 2
    ok = ok and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and 0 < v <= 16
        for v in value
    )
    if not ok or len(set(value)) != len(value):
        _fail(name, value, "a list of >= 2 distinct capacity factors, each in (0, 16]")
    return tuple(float(v) for v in sorted(value))


NOTEBOOK_KNOBS["04_adaptive_compute"] = {
    "capacity_factors": Knob("test-time capacity factors of the sweep (top-k V-MoE)", capacity_factor_list),
    "low_capacity_factor": Knob(
        "capacity factor at which compute per image is shown", real(0, 16, low_open=True)
    ),
    "claim_threshold": Knob(
        "capacity factors at or below this count as 'well below 1' in the claim check", real(0, 1)
    ),
    "eval_images": Knob("test images evaluated (the first ones, stored order)", integer(1, 1_000_000)),
    "eval_batch_size": Knob(
        "images per evaluation batch (fixed; a multiple of notebook 02's group_size)", integer(1, 65536)
    ),
    "extremes_shown": Knob("images shown with the most and with the least compute", integer(1, 32)),
}
# Every factor compiles the forward pass once per sweep (3 sweeps): under cpu about 9 s per factor and sweep
# on the full 5000-image test split (measured on 2 busy cores), so 6 factors keep the notebook near 3 min.
_ADAPTIVE_FACTORS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5)
PRESET_VALUES["04_adaptive_compute"] = {
    "smoke": dict(
        capacity_factors=(0.5, 1.0), low_capacity_factor=0.5, claim_threshold=0.5, eval_images=250,
        eval_batch_size=250, extremes_shown=6,
    ),
    "cpu": dict(
        capacity_factors=_ADAPTIVE_FACTORS, low_capacity_factor=0.25, claim_threshold=0.5, eval_images=5000,
        eval_batch_size=1000, extremes_shown=8,
    ),
    "gpu": dict(
        capacity_factors=_ADAPTIVE_FACTORS, low_capacity_factor=0.25, claim_threshold=0.5,
        eval_images=10_000, eval_batch_size=1000, extremes_shown=8,
    ),
    "tpu": dict(
        capacity_factors=_ADAPTIVE_FACTORS, low_capacity_factor=0.25, claim_threshold=0.5,
        eval_images=50_000, eval_batch_size=1024, extremes_shown=8,
    ),
}  # fmt: skip


def _adaptive_constraints(values: dict[str, Any]) -> None:
    group = PRESET_VALUES["02_train_vmoe"][values["preset"]]["group_size"]
    for knob in ("eval_batch_size", "eval_images"):
        if values[knob] % group:
            _fail(knob, values[knob], f"a multiple of notebook 02's group_size={group} under this preset")


CONSTRAINTS["04_adaptive_compute"] = [_adaptive_constraints]

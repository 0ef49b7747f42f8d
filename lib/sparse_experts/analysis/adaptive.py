"""Adaptive per-image compute (notebook 04): the capacity factor as a test-time dial, with vanilla routing
and with Batch Prioritized Routing (BPR), and how the compute a top-k V-MoE spends spreads over images.

Shape letters: B images. Everything runs through :func:`.routes.route`, so the same images in the same
order and batch size give the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flax import nnx

from sparse_experts import models
from sparse_experts.analysis.routes import _forward, capacity_sweep, compute_per_image, route
from sparse_experts.routing import check_int

ROUTINGS = {"vanilla": False, "BPR": True}  # routing name -> batch_priority
EXPERT_CHOICE = "expert choice"


def capacity_sweeps(
    model: models.ViT,
    images: np.ndarray,
    labels: np.ndarray,
    capacity_factors: Sequence[float],
    *,
    batch_size: int,
    expert_choice: models.ViT | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """:func:`.routes.capacity_sweep` of the top-k ``model`` with vanilla routing (``"vanilla"``) and with
    BPR (``"BPR"``); with ``expert_choice`` also that model's sweep (``"expert choice"``) at twice each
    factor (its factor c is the mean number of experts per token, so 2x a top-2 factor gives the same
    expert slots)."""
    sweeps = {}
    for name, bpr in ROUTINGS.items():
        sweeps[name] = capacity_sweep(
            model, images, labels, capacity_factors, batch_size=batch_size, batch_priority=bpr
        )
    if expert_choice is not None:
        doubled = [2 * float(cf) for cf in capacity_factors]
        sweeps[EXPERT_CHOICE] = capacity_sweep(expert_choice, images, labels, doubled, batch_size=batch_size)
    return sweeps


def sweep_table(sweeps: Mapping[str, Mapping[str, np.ndarray]]) -> list[dict[str, float]]:
    """One row per capacity factor of the vanilla and BPR sweeps: accuracy of each, GFLOPs per image (the
    same for both: the slots are allocated either way), dropped fraction of each, and the expert
    token-choices per image (vanilla)."""
    vanilla, bpr = sweeps["vanilla"], sweeps["BPR"]
    factors = vanilla["capacity_factor"]
    if not np.array_equal(factors, bpr["capacity_factor"]):
        raise ValueError(f"sweeps: vanilla factors {factors} differ from BPR's {bpr['capacity_factor']}")
    columns = {
        "capacity_factor": (vanilla, "capacity_factor"),
        "vanilla_accuracy": (vanilla, "accuracy"),
        "bpr_accuracy": (bpr, "accuracy"),
        "gflops_per_image": (vanilla, "gflops"),
        "vanilla_dropped_fraction": (vanilla, "dropped_fraction"),
        "bpr_dropped_fraction": (bpr, "dropped_fraction"),
        "expert_choices_per_image": (vanilla, "tokens_per_image"),
    }
    return [
        {name: float(sweep[key][i]) for name, (sweep, key) in columns.items()} for i in range(len(factors))
    ]


def sweep_records(sweep: Mapping[str, np.ndarray] | None) -> list[dict[str, float]] | None:
    """A sweep ``{column: [factors]}`` as one dict per factor (None stays None), for the figures JSON."""
    if sweep is None:
        return None
    columns = list(sweep)
    return [{c: float(sweep[c][i]) for c in columns} for i in range(len(sweep[columns[0]]))]


def sweep_curves(sweeps: Mapping[str, Mapping[str, np.ndarray]], model_name: str = "V-MoE top-2") -> dict:
    """The curves of :func:`sparse_experts.workbook.viz.accuracy_vs_gflops`: ``{label: (gflops, accuracy,
    capacity_factor)}`` per sweep, the top-k ones labelled ``"<model_name>, vanilla"`` / ``", BPR"``."""
    labels = {"vanilla": f"{model_name}, vanilla", "BPR": f"{model_name}, BPR"}
    labels[EXPERT_CHOICE] = "expert choice (c)"
    return {
        labels.get(name, name): (sweep["gflops"], sweep["accuracy"], sweep["capacity_factor"])
        for name, sweep in sweeps.items()
    }


def fixed_points(
    fixed: Mapping[str, models.ViT], images: np.ndarray, labels: np.ndarray, *, batch_size: int
) -> dict[str, tuple[float, float]]:
    """Models without a capacity dial (dense, Soft MoE) as single points ``{label: (GFLOPs per image,
    accuracy)}``."""
    points = {}
    for label, model in fixed.items():
        correct = predict(model, images, batch_size=batch_size).argmax(axis=1) == np.asarray(labels)
        points[label] = (models.flops_per_image(model.config) / 1e9, float(np.mean(correct)))
    return points


def predict(model: models.ViT, images: np.ndarray, *, batch_size: int) -> np.ndarray:
    """Logits ``[B, Y]`` of ``model`` (with or without MoE layers) in eval mode on ``images`` in order, in
    batches of ``batch_size``."""
    batch_size = check_int("batch_size", batch_size)
    images = np.asarray(images)
    if len(images) == 0:
        raise ValueError("images is empty: nothing to predict")
    graphdef, state = nnx.split(model)
    forward = _forward(graphdef, None)
    starts = range(0, len(images), batch_size)
    return np.concatenate([np.asarray(forward(state, images[i : i + batch_size])[0]) for i in starts])


@dataclass(frozen=True)
class ComputeAtCapacity:
    """One routing at one capacity factor: expert token-choices processed per image ``per_image [B]`` and
    whether each image was classified right ``correct [B]``."""

    per_image: np.ndarray
    correct: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct))


def compute_at_capacity(
    model: models.ViT, images: np.ndarray, labels: np.ndarray, capacity_factor: float, *, batch_size: int
) -> dict[str, ComputeAtCapacity]:
    """``{"vanilla": ..., "BPR": ...}`` at ``capacity_factor``: each image's expert compute (summed over
    the MoE layers) and correctness."""
    out = {}
    for name, bpr in ROUTINGS.items():
        overrides = dict(capacity_factor=capacity_factor, batch_priority=bpr)
        logits, records = route(model, images, batch_size=batch_size, moe_overrides=overrides)
        out[name] = ComputeAtCapacity(compute_per_image(records), logits.argmax(axis=1) == np.asarray(labels))
    return out


def max_expert_choices(config: models.VitConfig) -> int:
    """The most token-choices experts can process for one image: k x tokens x MoE layers."""
    if config.moe is None:
        raise ValueError(f"model {config.name} has no MoE layers (config.moe is None)")
    return config.moe.k * config.num_tokens * len(models.moe_layers(config))


def compute_spread(at_capacity: Mapping[str, ComputeAtCapacity]) -> list[dict[str, Any]]:
    """One row per routing of :func:`compute_at_capacity`: mean, std, min and max of the compute per image,
    the fraction of images with no expert compute, the accuracy, and the accuracy of the quarter of images
    with the most compute and of the quarter with the least (at least one image each; ties by index)."""
    rows = []
    for name, result in at_capacity.items():
        values = np.asarray(result.per_image, np.float64)
        correct = np.asarray(result.correct, np.float64)
        if values.ndim != 1 or values.shape != correct.shape or len(values) == 0:
            shapes = f"per_image {values.shape} and correct {correct.shape}"
            raise ValueError(f"at_capacity[{name!r}]: {shapes} must be equal non-empty [B] arrays")

        quarter = max(1, len(values) // 4)
        most = np.argsort(-values, kind="stable")[:quarter]
        least = np.argsort(values, kind="stable")[:quarter]
        rows.append({
            "routing": name,
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
            "images with no expert compute": float(np.mean(values == 0)),
            "accuracy": float(correct.mean()),
            "accuracy, most-compute quarter": float(correct[most].mean()),
            "accuracy, least-compute quarter": float(correct[least].mean()),
        })  # fmt: skip
    return rows


def spread_sentence(spread: Sequence[Mapping[str, Any]], capacity_factor: float, most_possible: int) -> str:
    """The rows of :func:`compute_spread` (vanilla and BPR) in words."""
    by = {row["routing"]: row for row in spread}
    v, b = by["vanilla"], by["BPR"]
    return (
        f"At capacity factor {capacity_factor:g}, experts processed {v['mean']:.1f} (vanilla) and "
        f"{b['mean']:.1f} (BPR) token-choices per image on average, of {most_possible} possible. The spread "
        f"across images is {v['std']:.1f} (vanilla) against {b['std']:.1f} (BPR). With BPR, the quarter of "
        f"images that got the most compute is {100 * b['accuracy, most-compute quarter']:.1f}% accurate and "
        f"the quarter that got the least {100 * b['accuracy, least-compute quarter']:.1f}%; with vanilla "
        f"routing {100 * v['accuracy, most-compute quarter']:.1f}% and "
        f"{100 * v['accuracy, least-compute quarter']:.1f}%. Overall accuracy: vanilla "
        f"{100 * v['accuracy']:.1f}%, BPR {100 * b['accuracy']:.1f}%."
    )


def headline_labels(model: str, seed: int, images: int, low: float) -> dict[str, str]:
    """What each of notebook 04's headline figures is, on which model, seed and test images (the index)."""
    on = f"{model}, one seed ({seed}), {images:,} test images"
    return {
        "claim_verdict": f"the paper's BPR claim (accuracy holds at capacity factors below 1), checked on "
        f"{on}",
        "vanilla_accuracy_at_low": f"test accuracy at capacity factor {low:g}, vanilla routing ({on})",
        "bpr_accuracy_at_low": f"test accuracy at capacity factor {low:g}, BPR ({on})",
    }

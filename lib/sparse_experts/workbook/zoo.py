"""The models notebook 02 trains, as cache specs, so notebooks 03 and 04 get the very same trained models.

Every model shares one backbone (``width``, ``depth``, ``mlp_dim``, ``num_heads``, ``patch_size``, global
average pooling) and one training recipe (AdamW, warmup + cosine, batch, steps) from the knobs of
``02_train_vmoe`` (:mod:`sparse_experts.workbook.presets`):

==================  =============================================================================
``dense``           the dense ViT
``vmoe_every2_k2``  V-MoE, E experts, k=2, MoE in every second layer (1, 3, 5, ...): the main V-MoE
``vmoe_last2_k2``   V-MoE, k=2, MoE in the last two odd layers only
``vmoe_every2_k1``  V-MoE, k=1, every second layer
``expert_choice``   experts choose tokens (Zhou et al. 2022), every second layer, capacity factor 2x the
                    top-k one (the same expert slots as k=2; k=2 counts its active parameters)
``soft_moe``        Soft MoE (Puigcerver et al. 2023), every second layer, about N slots per image
``dense_large``     a wider and deeper dense ViT (``large_width``, ``large_depth``)
==================  =============================================================================

:data:`MULTI_SEED` models are trained with ``seeds`` seeds (``seed``, ``seed + 1``, ...), the others once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from sparse_experts import datasets, models, train
from sparse_experts.workbook import cache, presets

MODEL_NAMES = presets.ZOO_MODELS
MULTI_SEED = ("dense", "vmoe_every2_k2")
NOTEBOOK = "02_train_vmoe"


def params_for(preset: str, seed: int = 0, **knobs: Any):
    """The resolved knobs of notebook 02 under ``preset``: how notebooks 03 and 04 find its models."""
    return presets.resolve(NOTEBOOK, preset, seed, **knobs)


def _num_classes(dataset: str, label: str) -> int:

    info = datasets.info(dataset)
    return info.num_coarse_classes if label == "coarse_label" else info.num_classes


def model_config(name: str, params: Mapping[str, Any]) -> models.VitConfig:
    """The :class:`models.VitConfig` of model ``name`` under the knobs ``params``."""
    if name not in MODEL_NAMES:
        raise ValueError(f"model name={name!r} is unknown; expected one of {MODEL_NAMES}")
    p = params
    large = name == "dense_large"
    base = models.vit_config(
        f"mu/{p['patch_size']}",
        image_size=p["image_size"],
        channels=_channels(p["dataset"]),
        num_classes=_num_classes(p["dataset"], p["label"]),
        width=p["large_width"] if large else p["width"],
        depth=p["large_depth"] if large else p["depth"],
        mlp_dim=4 * p["large_width"] if large else p["mlp_dim"],
        num_heads=p["num_heads"],
        pool="gap",
    )
    if name.startswith("dense"):
        return base
    moe = dict(
        num_experts=p["num_experts"],
        capacity_factor=p["capacity_factor"],
        eval_capacity_factor=p["eval_capacity_factor"],
        group_size=p["group_size"],
        placement="every-2",
        k=2,
    )
    if name == "vmoe_last2_k2":
        moe["placement"] = "last-2"
    elif name == "vmoe_every2_k1":
        moe["k"] = 1
    elif name == "expert_choice":
        moe.update(router="expert_choice", k=2, capacity_factor=2 * p["capacity_factor"],
                   eval_capacity_factor=2 * p["eval_capacity_factor"])  # fmt: skip
    elif name == "soft_moe":
        moe.update(router="soft", k=1, capacity_factor=1.0, eval_capacity_factor=None, group_size=1)
    return base.replace(moe=models.MoeConfig(**moe))


def _channels(dataset: str) -> int:

    return datasets.info(dataset).image_shape[2]


def seeds_of(name: str, params: Mapping[str, Any]) -> tuple[int, ...]:
    count = params["seeds"] if name in MULTI_SEED else 1
    return tuple(params["seed"] + i for i in range(count))


def spec(name: str, params: Mapping[str, Any], seed: int | None = None) -> cache.TrainSpec:
    """The cache spec of model ``name`` trained with ``seed`` (default: the notebook's seed)."""
    p = params
    return cache.TrainSpec(
        dataset=p["dataset"],
        model=model_config(name, p),
        train=train.TrainConfig(
            learning_rate=p["learning_rate"],
            total_steps=p["steps"],
            warmup_steps=p["warmup_steps"],
            weight_decay=p["weight_decay"],
        ),
        batch_size=p["batch_size"],
        num_steps=p["steps"],
        seed=p["seed"] if seed is None else seed,
        preset=p["preset"],
        image_size=p["image_size"],
        label=p["label"],
        eval_batch_size=p["eval_batch_size"],
        eval_every=p["eval_every"],
        checkpoint_every=p["checkpoint_every"],
    )


def get(name: str, params: Mapping[str, Any], seed: int | None = None, **kwargs: Any) -> cache.Trained:
    """Model ``name`` from the cache, trained now if it is not there (see :func:`cache.get_or_train`)."""
    return cache.get_or_train(spec(name, params, seed), description=f"{name} seed {seed}", **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Reading the results: one row per model, seed spread, the accuracy-compute comparison.
# ---------------------------------------------------------------------------------------------------------
def family(name: str) -> str:
    return "dense" if name.startswith("dense") else "sparse"


def summarize(results: Mapping[tuple[str, int], cache.Trained]) -> list[dict[str, Any]]:
    """One row per model name from ``{(name, seed): Trained}``: parameters (total, active), GFLOPs per
    image, validation and test accuracy (mean, sample std over seeds, and each seed's value) and training
    seconds (mean). Rows are ordered by GFLOPs per image."""

    by_name: dict[str, list[cache.Trained]] = {}
    for (name, _), trained in sorted(results.items()):
        by_name.setdefault(name, []).append(trained)
    rows = []
    for name, runs in by_name.items():
        val = np.array([r.metrics["validation"]["accuracy"] for r in runs])
        test = np.array([r.metrics["test"]["accuracy"] for r in runs])
        first = runs[0].metrics
        rows.append({
            "model": name,
            "family": family(name),
            "seeds": [r.spec.seed for r in runs],
            "params_total": first["params_total"],
            "params_active": first["params_active"],
            "gflops_per_image": first["gflops_per_image"],
            "val_accuracy": float(val.mean()),
            "val_accuracy_std": float(val.std(ddof=1)) if len(val) > 1 else None,
            "test_accuracy": float(test.mean()),
            "test_accuracy_std": float(test.std(ddof=1)) if len(test) > 1 else None,
            "test_accuracy_per_seed": [float(t) for t in test],
            "train_seconds": float(np.mean([r.metrics["train_seconds"] for r in runs])),
            "dropped_fraction": first["test"].get("dropped_fraction"),
        })  # fmt: skip
    return sorted(rows, key=lambda r: r["gflops_per_image"])


def compare(
    row_a: Mapping[str, Any], row_b: Mapping[str, Any], borrowed_std: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """Test accuracy of model a minus model b, with the standard error of that difference from the seed
    spread (sample std / sqrt(seeds), combined), and the GFLOPs ratio a / b. A model trained with one seed
    has no spread of its own: it takes ``borrowed_std[its family]`` when given (the spread of that family's
    multi-seed model, see :func:`family_spread`), otherwise it contributes nothing. ``resolved`` says
    whether the gap exceeds twice its standard error (None when no spread is known at all)."""

    diff = row_a["test_accuracy"] - row_b["test_accuracy"]
    variance, known, borrowed = 0.0, False, []
    for row in (row_a, row_b):
        std = row["test_accuracy_std"]
        if std is None and borrowed_std and row["family"] in borrowed_std:
            std = borrowed_std[row["family"]]
            borrowed.append(row["model"])
        if std is not None:
            variance += std**2 / len(row["seeds"])
            known = True
    se = math.sqrt(variance) if known else None
    return {
        "a": row_a["model"],
        "b": row_b["model"],
        "accuracy_gap": diff,
        "standard_error": se,
        "resolved": None if se is None else abs(diff) > 2 * se,
        "gflops_ratio": row_a["gflops_per_image"] / row_b["gflops_per_image"],
        "borrowed_spread": borrowed,
    }


def family_spread(rows: list[Mapping[str, Any]]) -> dict[str, float]:
    """Per family, the largest seed std of its multi-seed models: the seed noise assumed for its one-seed
    models (a one-seed model's accuracy is as uncertain as any seed of its family's repeated model)."""
    out: dict[str, float] = {}
    for row in rows:
        if row["test_accuracy_std"] is not None:
            out[row["family"]] = max(out.get(row["family"], 0.0), row["test_accuracy_std"])
    return out


def dominated_by(rows: list[Mapping[str, Any]], row: Mapping[str, Any]) -> list[str]:
    """Models of the other family that are at least as accurate (test) at no more GFLOPs per image."""
    return [
        other["model"]
        for other in rows
        if other["family"] != row["family"]
        and other["gflops_per_image"] <= row["gflops_per_image"]
        and other["test_accuracy"] >= row["test_accuracy"]
    ]


def claim_check(rows: list[Mapping[str, Any]], main: str = "vmoe_every2_k2") -> dict[str, Any]:
    """V-MoE's claim, "V-MoE reaches dense accuracy at lower inference compute", checked on ``rows``.

    Supported when the main V-MoE is at least as accurate as some dense model that needs more GFLOPs per
    image (it reaches that model's accuracy for less compute); "within noise" when it falls short of every
    such model by less than twice the standard error (one-seed models borrow their family's seed spread,
    :func:`family_spread`); otherwise not supported. Without a dense model that
    costs more than the main V-MoE the claim cannot be tested here. Returns the verdict, a sentence, and
    the comparisons behind it.
    """
    by_name = {r["model"]: r for r in rows}
    if main not in by_name:
        return {"verdict": "untested", "sentence": f"{main} was not trained, so the claim is not tested."}
    vmoe = by_name[main]
    costlier = [
        r for r in rows if r["family"] == "dense" and r["gflops_per_image"] > vmoe["gflops_per_image"]
    ]
    same_backbone = by_name.get("dense")
    spread = family_spread(rows)
    comparisons = [compare(vmoe, r, spread) for r in ([same_backbone] if same_backbone else []) + costlier]
    if not costlier:
        return {
            "verdict": "untested",
            "sentence": f"No dense model here costs more GFLOPs per image than {main}: claim not tested.",
            "comparisons": comparisons,
        }
    best = max(costlier, key=lambda r: r["test_accuracy"])
    gap = compare(vmoe, best, spread)
    pct = 100 * gap["gflops_ratio"]
    if gap["accuracy_gap"] >= 0:
        verdict = "supported"
        sentence = (
            f"Supported at this scale: {main} reaches {100 * vmoe['test_accuracy']:.1f}% test "
            f"accuracy, {100 * gap['accuracy_gap']:+.1f} points against {best['model']} "
            f"({100 * best['test_accuracy']:.1f}%), at {pct:.0f}% of its GFLOPs per image."
        )
    elif gap["standard_error"] is not None and -gap["accuracy_gap"] < 2 * gap["standard_error"]:
        verdict = "within noise"
        sentence = (
            f"Within seed noise: {main} is {100 * -gap['accuracy_gap']:.1f} points below "
            f"{best['model']} (2 standard errors = {200 * gap['standard_error']:.1f} points) at "
            f"{pct:.0f}% of its GFLOPs per image; neither reached nor clearly missed."
        )
    else:
        verdict = "not supported"
        sentence = (
            f"Not supported at this scale: {main} ({100 * vmoe['test_accuracy']:.1f}%) stays "
            f"{100 * -gap['accuracy_gap']:.1f} points below {best['model']} "
            f"({100 * best['test_accuracy']:.1f}%), which costs {100 / gap['gflops_ratio']:.0f}% of "
            f"{main}'s GFLOPs per image."
        )
    return {"verdict": verdict, "sentence": sentence, "comparisons": comparisons}

"""The models notebook 02 trains, as cache specs, so notebooks 03 and 04 get the very same trained models.

Every model (:data:`MODEL_NAMES`; notebook 02's introduction tables them) shares one backbone (``width``,
``depth``, ``mlp_dim``, ``num_heads``, ``patch_size``, global average pooling) and one training recipe from
the knobs of ``02_train_vmoe``; ``dense_large`` is wider and deeper (``large_width``, ``large_depth``), and
``expert_choice`` gets twice the top-k capacity factor (the same expert slots as k=2). :data:`MULTI_SEED`
models are trained with ``seeds`` seeds (``seed``, ``seed + 1``, ...), the others once.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparse_experts import analysis, datasets, models, train
from sparse_experts.routing import check_int
from sparse_experts.workbook import cache, presets
from sparse_experts.workbook.configs import train_vmoe

MODEL_NAMES = train_vmoe.MODEL_NAMES
MULTI_SEED = ("dense", "vmoe_every2_k2")
NOTEBOOK = "02_train_vmoe"


def model_config(name: str, params: Mapping[str, Any]) -> models.VitConfig:
    """The :class:`models.VitConfig` of model ``name`` under notebook 02's knobs ``params``."""
    if name not in MODEL_NAMES:
        raise ValueError(f"model name={name!r} is unknown; expected one of {MODEL_NAMES}")
    p, large = params, name == "dense_large"
    info = datasets.info(p["dataset"])
    base = models.vit_config(
        f"mu/{p['patch_size']}",
        image_size=p["image_size"],
        channels=info.image_shape[2],
        num_classes=info.num_coarse_classes if p["label"] == "coarse_label" else info.num_classes,
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
        placement="last-2" if name == "vmoe_last2_k2" else "every-2",
        k=1 if name == "vmoe_every2_k1" else 2,
    )
    if name == "expert_choice":
        moe.update(
            router="expert_choice",
            capacity_factor=2 * p["capacity_factor"],
            eval_capacity_factor=2 * p["eval_capacity_factor"],
        )
    elif name == "soft_moe":
        moe.update(router="soft", k=1, capacity_factor=1.0, eval_capacity_factor=None, group_size=1)
    return base.replace(moe=models.MoeConfig(**moe))


def seeds_of(name: str, params: Mapping[str, Any]) -> tuple[int, ...]:
    count = params["seeds"] if name in MULTI_SEED else 1
    return tuple(params["seed"] + i for i in range(count))


def spec(name: str, params: Mapping[str, Any], seed: int | None = None) -> cache.TrainSpec:
    """The cache spec of model ``name`` trained with ``seed`` (default: the notebook's seed)."""
    p = params
    knobs = "dataset batch_size preset image_size label eval_batch_size eval_every checkpoint_every".split()
    optimiser = {k: p[k] for k in ("learning_rate", "warmup_steps", "weight_decay")}
    # The record of a run older than the adam_b2 knob has no such key: that run trained with Adam's 0.999.
    return cache.TrainSpec(
        model=model_config(name, p),
        train=train.TrainConfig(total_steps=p["steps"], b2=p.get("adam_b2", 0.999), **optimiser),
        num_steps=p["steps"],
        seed=p["seed"] if seed is None else seed,
        **{k: p[k] for k in knobs},  # notebook 02's knobs of the same name
    )


def get(name: str, params: Mapping[str, Any], seed: int | None = None, **kwargs: Any) -> cache.Trained:
    """Model ``name`` from the cache, trained now if it is not there (see :func:`cache.get_or_train`)."""
    return cache.get_or_train(spec(name, params, seed), description=f"{name} seed {seed}", **kwargs)


# What a run of notebook 02 trained, and how notebooks 03 and 04 find exactly those models and images.
RECORD_FIGURE = "trained_models"
"""The figure of ``<out>/02_train_vmoe.json`` that records what notebook 02 trained (:func:`run_record`)."""
STAGING = ".staging"
"""The runner executes each notebook in ``<out>/.staging/<notebook>-<pid>/`` (:mod:`.runner`)."""


def run_record(params: Mapping[str, Any], results: Mapping[tuple[str, int], cache.Trained]) -> dict[str, Any]:
    """What notebook 02 trained, for its figures JSON: preset, seed, every knob as resolved, the knobs that
    differ from the preset's values, and the cache key of each ``(model, seed)`` in ``results``."""
    defaults = presets.resolve(NOTEBOOK, params["preset"], params["seed"])
    return {
        "preset": params["preset"],
        "seed": params["seed"],
        "knobs": {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()},
        "changed_knobs": {k: v for k, v in params.items() if defaults[k] != v},
        "models": [
            {"model": name, "seed": seed, "cache_key": trained.path.name}
            for (name, seed), trained in sorted(results.items())
        ],
    }


@dataclass(frozen=True)
class ZooRun:
    """The models of one run of notebook 02 (or, when 02 has not run in a folder, the preset's models).

    ``params``: 02's knobs as that run resolved them; ``keys``: the cache key of each ``(model, seed)``;
    ``record``: the figures JSON read (None for the preset's models); ``source``: a sentence saying which
    run this is (path, time, changed knobs) or why the preset's models are used instead.
    """

    params: presets.NotebookConfig
    keys: Mapping[tuple[str, int], str]
    record: Path | None
    source: str

    @property
    def models(self) -> tuple[str, ...]:
        """The model names this run trained, in 02's order."""
        return tuple(name for name in self.params["models"] if any(n == name for n, _ in self.keys))

    def get(self, name: str, seed: int | None = None, **kwargs: Any) -> cache.Trained:
        """Model ``name`` trained with ``seed`` (default: the run's seed) by this run: its cache entry,
        trained again from the very same spec if the entry has gone from the cache (``trained_now``)."""
        seed = self.params["seed"] if seed is None else seed
        if (name, seed) not in self.keys:
            have = ", ".join(f"{n} seed {s}" for n, s in sorted(self.keys))
            what = f"notebook 02's run in {self.record}" if self.record else "notebook 02's preset models"
            raise ValueError(
                f"model name={name!r} with seed={seed} is not among the models of {what}: {have}. "
                f"Ask for one of those, or rerun notebook 02 with models including {name!r}."
            )
        return get(name, self.params, seed, **kwargs)

    def get_all(self, names: Sequence[str], **kwargs: Any) -> dict[str, cache.Trained]:
        """``{name: Trained}`` at the run's seed for those of ``names`` this run trained, in that order."""
        return {name: self.get(name, **kwargs) for name in names if name in self.models}

    def __str__(self) -> str:
        return self.source


def models_of_run(out_dir: str | Path, preset: str, seed: int = 0) -> ZooRun:
    """The models notebook 02 trained in the output folder ``out_dir`` (the :data:`RECORD_FIGURE` of
    ``<out_dir>/02_train_vmoe.json``; from a runner's staging folder, the one in ``<out>``), when that run
    used ``preset`` and ``seed``; otherwise the models 02 trains under them with the preset's knobs.

    Every recorded cache key is checked against the spec the recorded knobs give under the current code;
    a mismatch (the training code or a split plan changed since that run) raises ``ValueError`` saying how
    to fix it, rather than silently using other models.
    """
    path = Path(out_dir) / f"{NOTEBOOK}.json"
    if not path.is_file() and path.parent.parent.name == STAGING:
        path = path.parent.parent.parent / path.name
    saved = json.loads(path.read_text()) if path.is_file() else {}
    record = saved.get("figures", {}).get(RECORD_FIGURE)
    if not path.is_file():
        reason = f"notebook 02 has not run in {path.parent} (no {path.name})"
    elif record is None:
        reason = f"{path} holds no {RECORD_FIGURE!r} record (saved by an older notebook 02)"
    elif (record["preset"], record["seed"]) != (preset, seed):
        reason = f"notebook 02's run in {path} used preset {record['preset']!r} and seed {record['seed']}"
    else:
        reason = None
    if reason is not None:
        params = presets.resolve(NOTEBOOK, preset, seed)
        keys = {(n, s): spec(n, params, s).key() for n in params["models"] for s in seeds_of(n, params)}
        source = (
            f"{reason}: using the models notebook 02 trains under preset {preset!r}, seed {seed}, with the "
            f"preset's knobs (from the cache, trained now where missing)."
        )
        return ZooRun(params, keys, None, source)
    knobs = {k: tuple(v) if isinstance(v, list) else v for k, v in record["knobs"].items()}
    params = presets.resolve(NOTEBOOK, **knobs)
    keys = {(m["model"], m["seed"]): m["cache_key"] for m in record["models"]}
    for (name, model_seed), key in keys.items():
        expected = spec(name, params, model_seed).key()
        if expected != key:
            raise ValueError(
                f"{path} records cache entry {key[:12]}... for {name} seed {model_seed}, but its knobs give "
                f"{expected[:12]}... under the current code: the training code or a split plan changed "
                f"since that run. Rerun notebook 02 in {path.parent}, or move {path.name} away to use the "
                f"preset's models."
            )
    created = saved.get("provenance", {}).get("created", "an unknown time")
    changed = ", ".join(f"{k}={v!r}" for k, v in record["changed_knobs"].items()) or "none"
    source = (
        f"Notebook 02's run recorded in {path} (saved {created}; preset {preset!r}, seed {seed}; knobs "
        f"changed from the preset: {changed}): {len(keys)} models, "
        + ", ".join(f"{n} seed {s}" for n, s in sorted(keys))
        + "."
    )
    return ZooRun(params, keys, path, source)


@dataclass(frozen=True)
class EvalSet:
    """The first whole routing groups of a test split, in stored order (with capacity limits and BPR a
    token's routing depends on the other images of its batch), as notebook 02's models see them.

    ``images [B, S, S, C]`` uint8 (:attr:`x`: float32 in [-1, 1], what the models take); ``labels [B]``: the
    classes the models predict (fine or coarse), named by ``class_names [Y]``; ``label_sets``: ``{word:
    (labels [B], names)}`` for the affinity views ("class", and "coarse class" when the data has them);
    ``total`` images in the split; evaluation batches of ``batch_size`` images, routing groups of
    ``group_size``.
    """

    dataset: str
    images: np.ndarray
    labels: np.ndarray
    class_names: Sequence[str]
    label_sets: Mapping[str, tuple[np.ndarray, Sequence[str]]]
    total: int
    group_size: int
    batch_size: int

    @property
    def count(self) -> int:
        return len(self.labels)

    @functools.cached_property
    def x(self) -> np.ndarray:
        return datasets.to_float(self.images)

    def record(self) -> dict[str, Any]:
        """How these images were evaluated, for a figures JSON."""
        return {"split": "test", "images": self.count, "order": "stored", "batch_size": self.batch_size,
                "group_size": self.group_size}  # fmt: skip

    def __str__(self) -> str:
        return (
            f"{self.dataset} test split: the first {self.count} of {self.total} images, in batches of "
            f"{self.batch_size} ({self.batch_size // self.group_size} routing groups of {self.group_size} "
            "images each)"
        )


def eval_set(params: Mapping[str, Any], max_images: int, batch_size: int | None = None) -> EvalSet:
    """The first ``max_images`` test images of notebook 02's dataset at its image size and labels
    (``params``: 02's knobs, e.g. :attr:`ZooRun.params`), cut down to whole routing groups of
    ``params["group_size"]``, in batches of ``batch_size`` (default 02's ``eval_batch_size``; at most all)."""
    check_int("max_images", max_images)
    name, group = params["dataset"], params["group_size"]
    split = datasets.load_split(name, "test", image_size=params["image_size"])
    count = min(max_images, len(split.images)) // group * group
    if count == 0:
        raise ValueError(
            f"max_images={max_images} leaves no whole routing group of group_size={group} images; "
            f"expected at least {group}"
        )
    info = datasets.info(name)
    label_sets = {"class": (np.asarray(split.labels[:count]), list(info.class_names))}
    if split.coarse_labels is not None:
        label_sets["coarse class"] = (np.asarray(split.coarse_labels[:count]), list(info.coarse_class_names))
    labels, class_names = label_sets["coarse class" if params["label"] == "coarse_label" else "class"]
    batch_size = min(params["eval_batch_size"] if batch_size is None else batch_size, count)
    images = np.asarray(split.images[:count])
    return EvalSet(name, images, labels, class_names, label_sets, len(split.images), group, batch_size)


# Notebook 02's plan and training; its results: one row per model, seed spread, the claim.
def plan(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Notebook 02's models on paper, one row per model of ``params["models"]``: seeds, width x depth, MoE
    layers, router, total and active parameters, GFLOPs per image (analytic, at the evaluation capacity)."""
    rows = []
    for name in params["models"]:
        config = model_config(name, params)
        moe = config.moe
        rows.append({
            "model": name,
            "seeds": len(seeds_of(name, params)),
            "width x depth": f"{config.width} x {config.depth}",
            "MoE layers": "" if moe is None else str(models.moe_layers(config)),
            "router": "" if moe is None else f"{moe.router} (E={moe.num_experts}, k={moe.k})",
            "params (total)": models.param_count(config),
            "params (active)": models.param_count(config, active=True),
            "GFLOPs / image": models.flops_per_image(config) / 1e9,
        })  # fmt: skip
    return rows


def train_all(params: Mapping[str, Any], log=print, **kwargs: Any) -> dict[tuple[str, int], cache.Trained]:
    """Every model of ``params["models"]`` with each of its seeds, from the cache or trained now (the
    missing seeds of one model side by side as one program, the missing models by ``params["train_workers"]``
    processes at once: :func:`cache.get_or_train_groups`); ``log`` gets one line per model and seed."""
    names = list(params["models"])
    groups = [[spec(name, params, s) for s in seeds_of(name, params)] for name in names]
    what = [f"{name} seed{'s' if len(g) > 1 else ''} {', '.join(str(s.seed) for s in g)}" for name, g in
            zip(names, groups, strict=True)]  # fmt: skip
    workers = params.get("train_workers", 1)
    trained_groups = cache.get_or_train_groups(groups, workers=workers, descriptions=what, **kwargs)
    results = {}
    for name, specs, trained_seeds in zip(names, groups, trained_groups, strict=True):
        seeds = [s.seed for s in specs]
        for seed, trained in zip(seeds, trained_seeds, strict=True):
            results[(name, seed)] = trained
            how = "trained now" if trained.trained_now else "from the cache"
            log(f"{name:16s} seed {seed}: test accuracy {trained.metrics['test']['accuracy']:.3f} "
                f"({how}, {trained.metrics['train_seconds']:.0f} s of training)")  # fmt: skip
    return results


def family(name: str) -> str:
    return "dense" if name.startswith("dense") else "sparse"


def summarize(results: Mapping[tuple[str, int], cache.Trained]) -> list[dict[str, Any]]:
    """One row per model name from ``{(name, seed): Trained}``: parameters (total, active), GFLOPs per
    image, validation and test accuracy (mean, sample std over seeds, and each seed's value) and training
    seconds (mean), ordered by GFLOPs per image."""
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


def test_accuracy_of(rows: list[Mapping[str, Any]], name: str) -> float | None:
    """Mean test accuracy of model ``name`` in :func:`summarize`'s rows (None when it was not trained)."""
    return next((r["test_accuracy"] for r in rows if r["model"] == name), None)


def correct_matrices(
    results: Mapping[tuple[str, int], cache.Trained], params: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """``{name: bool [K, N]}``: whether each seed of each model in ``results`` was right on each test image
    (stored order; the labels notebook 02 trained on), for paired comparisons (:func:`compare`)."""
    split = datasets.load_split(params["dataset"], "test", image_size=params["image_size"])
    labels = split.coarse_labels if params["label"] == "coarse_label" else split.labels
    by_name: dict[str, dict[int, np.ndarray]] = {}
    for (name, seed), trained in results.items():
        by_name.setdefault(name, {})[seed] = trained.test_predictions
    return {name: analysis.bootstrap.correct_matrix(preds, labels) for name, preds in by_name.items()}


def main_gap(
    correct: Mapping[str, np.ndarray], main: str = "vmoe_every2_k2", dense: str = "dense"
) -> analysis.bootstrap.Paired | None:
    """The main comparison of notebook 02, ``main`` against ``dense`` on the same test images, with the
    paired bootstrap's noise over images and seed pairs (None when either was not trained). Both are
    :data:`MULTI_SEED` models trained on the same seeds, and seed s gives both the same batches, so seed s
    of one is paired with seed s of the other (:mod:`analysis.bootstrap`)."""
    if main not in correct or dense not in correct:
        return None
    same = len(correct[main]) == len(correct[dense]) > 1
    return analysis.bootstrap.paired(correct[main], correct[dense], paired_seeds=same)


def compare(
    row_a: Mapping[str, Any],
    row_b: Mapping[str, Any],
    borrowed_std: Mapping[str, float] | None = None,
    correct: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Test accuracy of model a minus model b, the standard error of that difference, and the GFLOPs ratio
    a / b. With ``correct`` (:func:`correct_matrices`) the error comes from a paired bootstrap over the
    test images and each model's seeds (:func:`analysis.bootstrap.paired`; seed pairs when both were
    trained on the same seeds, which give both the same batches); without it, from the seed
    spread alone (sample std / sqrt(seeds), combined). A one-seed model adds ``borrowed_std[its family]``
    as its seed noise when given (:func:`family_spread`). ``resolved``: whether the gap exceeds twice its
    standard error (None when no noise is known)."""
    diff = row_a["test_accuracy"] - row_b["test_accuracy"]
    variance, known, borrowed, noise = 0.0, False, [], "seed spread"
    paired = correct is not None and row_a["model"] in correct and row_b["model"] in correct
    if paired:
        same_seeds = row_a["seeds"] == row_b["seeds"] and len(row_a["seeds"]) > 1
        boot = analysis.bootstrap.paired(
            correct[row_a["model"]], correct[row_b["model"]], paired_seeds=same_seeds
        )
        variance, known, diff = boot.gap_se**2, True, boot.gap
        noise = "paired bootstrap over test images and " + ("seed pairs" if same_seeds else "seeds")
    for row in (row_a, row_b):
        std = row["test_accuracy_std"]
        if std is None and borrowed_std and row["family"] in borrowed_std:
            std = borrowed_std[row["family"]]
            borrowed.append(row["model"])
        elif paired:
            continue  # the bootstrap already counted this model's seeds
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
        "noise": noise,
    }


def family_spread(rows: list[Mapping[str, Any]]) -> dict[str, float]:
    """Per family, the largest seed std of its multi-seed models: the seed noise assumed for its one-seed
    models."""
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


CLAIM_02 = "V-MoE reaches the accuracy of dense ViTs at lower inference compute (Riquelme et al. 2021)."


def claim_check(
    rows: list[Mapping[str, Any]],
    main: str = "vmoe_every2_k2",
    correct: Mapping[str, np.ndarray] | None = None,
) -> analysis.Claim:
    """:data:`CLAIM_02` checked on ``rows``: the main V-MoE against the most accurate dense model that needs
    more GFLOPs per image; the noise of each gap is :func:`compare`'s (paired over test images and seeds
    with ``correct``; one-seed models borrow their family's seed spread, :func:`family_spread`).

    - "reproduced": the main V-MoE is more accurate than that costlier dense model by more than twice the
      standard error of the gap (a gap inside the noise does not show that it reaches it);
    - "within noise": the gap, either way, is within twice its standard error;
    - "contradicted": a dense model that costs no more GFLOPs than the main V-MoE is more accurate by more
      than twice the standard error (dense sits on the better frontier);
    - "not reproduced": otherwise (short of the costlier dense model beyond the noise, or no spread known);
    - "not tested": the main V-MoE was not trained, or no dense model costs more than it.

    ``numbers``: ``main``, ``comparisons`` (:func:`compare` of the main V-MoE with ``dense`` and every
    costlier dense model) and, when tested, ``best_costlier_dense`` and its ``gap``.
    """
    by_name = {r["model"]: r for r in rows}
    if main not in by_name:
        sentence = f"{main} was not trained, so the claim is not tested."
        return analysis.Claim(CLAIM_02, "not tested", sentence, {"main": main, "comparisons": []})
    vmoe = by_name[main]
    dense = [r for r in rows if r["family"] == "dense"]
    costlier = [r for r in dense if r["gflops_per_image"] > vmoe["gflops_per_image"]]
    same_backbone = by_name.get("dense")
    spread = family_spread(rows)
    others = ([same_backbone] if same_backbone else []) + costlier
    gaps = {r["model"]: compare(vmoe, r, spread, correct) for r in dense}  # one bootstrap per dense model
    comparisons = [gaps[r["model"]] for r in others]
    numbers: dict[str, Any] = {"main": main, "comparisons": comparisons}
    if not costlier:
        sentence = f"No dense model here costs more GFLOPs per image than {main}: claim not tested."
        return analysis.Claim(CLAIM_02, "not tested", sentence, numbers)
    best = max(costlier, key=lambda r: r["test_accuracy"])
    gap = gaps[best["model"]]
    numbers.update(best_costlier_dense=best["model"], gap=gap)
    pct = 100 * gap["gflops_ratio"]
    cheaper = [r for r in dense if r["gflops_per_image"] <= vmoe["gflops_per_image"]]
    cheaper_better = [
        c for c in (gaps[r["model"]] for r in cheaper) if c["resolved"] and c["accuracy_gap"] < 0
    ]
    noise = None if gap["standard_error"] is None else 2 * gap["standard_error"]
    if noise is not None and gap["accuracy_gap"] > noise:
        verdict = "reproduced"
        sentence = (
            f"Reproduced at this scale: {main} reaches {100 * vmoe['test_accuracy']:.1f}% test "
            f"accuracy, {100 * gap['accuracy_gap']:+.1f} points against {best['model']} "
            f"({100 * best['test_accuracy']:.1f}%; more than 2 standard errors = {100 * noise:.1f} points), "
            f"at {pct:.0f}% of its GFLOPs per image."
        )
    elif noise is not None and abs(gap["accuracy_gap"]) <= noise:
        verdict = "within noise"
        sentence = (
            f"Within noise: {main} is {100 * gap['accuracy_gap']:+.1f} points against "
            f"{best['model']} (2 standard errors = {100 * noise:.1f} points) at {pct:.0f}% of its GFLOPs "
            "per image; neither reached nor clearly missed."
        )
    else:
        verdict = "contradicted" if cheaper_better else "not reproduced"
        sentence = (
            f"{verdict.capitalize()} at this scale: {main} ({100 * vmoe['test_accuracy']:.1f}%) stays "
            f"{100 * -gap['accuracy_gap']:.1f} points below {best['model']} "
            f"({100 * best['test_accuracy']:.1f}%), which costs {100 / gap['gflops_ratio']:.0f}% of "
            f"{main}'s GFLOPs per image"
        )
        if cheaper_better:
            better = cheaper_better[0]
            sentence += (
                f"; and {better['b']}, which costs no more, is {100 * -better['accuracy_gap']:.1f} points "
                f"more accurate (more than 2 standard errors = {200 * better['standard_error']:.1f} points)"
            )
        sentence += "."
    return analysis.Claim(CLAIM_02, verdict, sentence, numbers)


def backbone_notes(
    rows: list[Mapping[str, Any]],
    main: str = "vmoe_every2_k2",
    correct: Mapping[str, np.ndarray] | None = None,
) -> list[str]:
    """Sentences on the same-backbone comparison (the main V-MoE against ``dense``: gap, seed noise, GFLOPs
    ratio) and on every model that a model of the other family dominates (:func:`dominated_by`) by more than
    twice the standard error of their gap (:func:`compare`; one-seed models borrow their family's spread)."""
    by_name = {r["model"]: r for r in rows}
    notes = []
    if main in by_name and "dense" in by_name:
        gap = compare(by_name[main], by_name["dense"], correct=correct)
        if gap["standard_error"] is None:
            noise = "one seed each: no spread to compare the gap with (raise `seeds`)"
        else:
            size = "larger than" if gap["resolved"] else "within"
            noise = (
                f"standard error {100 * gap['standard_error']:.1f} points ({gap['noise']}); the gap is "
                f"{size} twice that"
            )
        notes.append(
            f"Same backbone: the main V-MoE is {100 * gap['accuracy_gap']:+.1f} points against the dense ViT "
            f"({noise}). It costs {gap['gflops_ratio']:.2f}x the dense GFLOPs per image."
        )
    spread = family_spread(rows)
    for row in rows:
        for other in (by_name[name] for name in dominated_by(rows, row)):
            gap = compare(other, row, spread, correct)
            if gap["resolved"]:  # a tie inside the noise dominates nothing
                points, noise = 100 * gap["accuracy_gap"], 200 * gap["standard_error"]
                notes.append(
                    f"{row['model']} is dominated by {other['model']}: {points:+.1f} points (more than 2 "
                    f"standard errors, {noise:.1f}) for no more compute"
                )
    return notes


def headline_labels(params: Mapping[str, Any], correct: Mapping[str, np.ndarray]) -> dict[str, str]:
    """What each of notebook 02's headline figures is, over which seeds and test images (the index page)."""
    test_images = f"{len(next(iter(correct.values()))[0]):,} test images"
    seeds = {name: len(seeds_of(name, params)) for name in ("vmoe_every2_k2", "dense")}
    seeds = {name: f"{n} seed" + ("s" if n != 1 else "") for name, n in seeds.items()}
    return {
        "main_vmoe_test_accuracy": f"test accuracy of the main V-MoE (vmoe_every2_k2), mean over "
        f"{seeds['vmoe_every2_k2']}, {test_images}",
        "dense_test_accuracy": f"test accuracy of dense, mean over {seeds['dense']}, {test_images}",
        "gap_two_se": "noise of the main gap (V-MoE minus dense): 2 standard errors, paired bootstrap over "
        "images and seeds",
        "claim_verdict": "the paper's claim (a V-MoE as accurate as a costlier dense model), checked against "
        "every costlier dense model trained",
    }

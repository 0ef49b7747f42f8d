"""Notebook 05's study: rank a pool by cheap estimators, fine-tune it, build ensembles, check the claims.

For each downstream task (its first ``train_examples`` training examples, its validation and test splits):

1. :func:`rank_task`: every pool member's frozen outputs on the training examples give the five estimators
   (kNN leave-one-out accuracy, LogME, LEEP, NCE, H-score), each with its wall time (the kNN time includes
   the member's feature extraction and its compile);
2. :func:`fine_tune_member`: every member fine-tuned with the learning-rate sweep (one vmapped program), the
   copy chosen on validation; cached (:func:`cache.get_or_make`), so reruns and notebook 06 reuse it;
3. :func:`ensembles_for_task`: the ensembles of the paper against its baselines on the test split.

:func:`rank_correlations` and :func:`pooled` summarise over tasks with bootstrap intervals over the test
images. Shapes: M members, N examples, Y the task's classes, T tasks, K ensemble size, S bootstrap samples.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

from sparse_experts import analysis, datasets, models, transfer
from sparse_experts.analysis import bootstrap
from sparse_experts.transfer import ensemble, finetune, ranking
from sparse_experts.workbook import cache, pool
from sparse_experts.workbook.configs.ensembles import ESTIMATORS

SPLITS = ("validation", "test")


@dataclass(frozen=True)
class Task:
    """A downstream task as arrays: ``train`` (its first examples), ``validation``, ``test``."""

    name: str
    num_classes: int
    train: finetune.LabelledSet
    validation: finetune.LabelledSet
    test: finetune.LabelledSet

    def split(self, name: str) -> finetune.LabelledSet:
        return getattr(self, name)


def load_task(name: str, train_examples: int, image_size: int) -> Task:
    """The task's splits at ``image_size``; the first ``train_examples`` training examples (an error when
    the split has fewer)."""
    sets = {}
    for split in ("train", *SPLITS):
        data = datasets.load_split(name, split, image_size=image_size)
        n = len(data)
        if split == "train":
            if train_examples > n:
                raise ValueError(
                    f"train_examples={train_examples} is more than the {n} training examples of {name!r}"
                )
            n = train_examples
        sets[split] = finetune.LabelledSet(datasets.to_float(data.images[:n]), np.asarray(data.labels[:n]))
    return Task(name, datasets.info(name).num_classes, sets["train"], sets["validation"], sets["test"])


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def rank_task(
    trained: Mapping[str, cache.Trained], task: Task, *, k: int, metric: str, batch_size: int
) -> list[dict[str, Any]]:
    """One row per member: the five estimators on ``task``'s training examples and their wall times
    (seconds; ``knn_seconds`` includes the feature extraction, compile included, that every estimator
    shares, ``extract_seconds``)."""
    rows = []
    for name, t in trained.items():
        started = time.perf_counter()
        feats, logits = transfer.encode_images(
            t.model, task.train.images, batch_size=batch_size, with_logits=True
        )
        extract = time.perf_counter() - started
        labels = task.train.labels
        row: dict[str, Any] = {"member": name, "extract_seconds": extract}
        probs = _softmax(logits)
        calls = {
            "knn": (ranking.knn_accuracy, (feats, labels), {"k": k, "metric": metric}),
            "logme": (ranking.logme, (feats, labels), {}),
            "leep": (ranking.leep, (probs, labels), {}),
            "nce": (ranking.nce, (probs.argmax(-1), labels), {}),
            "h_score": (ranking.h_score, (feats, labels), {}),
        }
        for estimator, (fn, args, kwargs) in calls.items():
            began = time.perf_counter()
            row[estimator] = fn(*args, **kwargs)
            row[f"{estimator}_seconds"] = (
                time.perf_counter() - began + (extract if estimator == "knn" else 0.0)
            )
        rows.append(row)
    return rows


@dataclass(frozen=True)
class FineTuned:
    """A member fine-tuned on a task: the sweep's learning rates and seeds, accuracy and NLL per copy on
    each evaluation split, the copy chosen on validation, its probabilities ``probs[split]`` [N, Y] (all
    copies in ``all_probs[split]`` [R, N, Y]), the sweep's wall time and whether it was computed now."""

    member: str
    task: str
    learning_rates: tuple[float, ...]
    seeds: tuple[int, ...]
    accuracy: dict[str, list[float]]
    nll: dict[str, list[float]]
    chosen: int
    all_probs: dict[str, np.ndarray]
    seconds: float
    made_now: bool

    @property
    def probs(self) -> dict[str, np.ndarray]:
        return {split: p[self.chosen] for split, p in self.all_probs.items()}

    @property
    def learning_rate(self) -> float:
        return self.learning_rates[self.chosen]


def fine_tune_member(
    member: pool.Member,
    trained: cache.Trained,
    task: Task,
    params: Mapping[str, Any],
    *,
    learning_rates: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    root: str | Path | None = None,
) -> FineTuned:
    """``member`` fine-tuned on ``task`` with notebook 05's knobs ``params`` (the sweep of its
    ``learning_rates``, or the ones given, with data ``seeds``), from the cache or computed now."""
    return fine_tune_cached(member.name, member.spec.key(), trained.model, task, params,
                            learning_rates=learning_rates, seeds=seeds, root=root)  # fmt: skip


def fine_tune_cached(
    name: str,
    key: str,
    model: models.ViT,
    task: Task,
    params: Mapping[str, Any],
    *,
    learning_rates: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    root: str | Path | None = None,
) -> FineTuned:
    """``model`` (named ``name``; ``key`` says what it is, e.g. its cache key) fine-tuned on ``task`` with the
    fine-tuning knobs of ``params`` (those of notebook 05, which 06 shares), cached under (key, task, sweep):
    the same model and sweep in notebooks 05 and 06 is one cache entry."""
    return fine_tune_together(
        [(name, key, model)], task, params, learning_rates=learning_rates, seeds=seeds, root=root
    )[name]


def fine_tune_together(
    entries: Sequence[tuple[str, str, models.ViT]],
    task: Task,
    params: Mapping[str, Any],
    *,
    learning_rates: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    root: str | Path | None = None,
) -> dict[str, FineTuned]:
    """:func:`fine_tune_cached` of several ``(name, key, model)`` at once: those found in the cache are read;
    the others are fine-tuned side by side, one vmapped program per architecture (heads aside; each copy
    computes what it would alone, to float rounding; each sweep's ``seconds`` is its share of the program's
    wall time), and each is cached under its own key."""
    rates = tuple(float(r) for r in (learning_rates or params["learning_rates"]))
    seeds = tuple(int(s) for s in (seeds or [params["seed"]] * len(rates)))
    settings = {
        k: params[k]
        for k in (
            "train_examples",
            "finetune_steps",
            "finetune_batch_size",
            "finetune_warmup",
            "eval_batch_size",
        )
    }
    payloads = {
        name: {"member": key, "task": task.name, "learning_rates": rates, "seeds": seeds, **settings}
        for name, key, _ in entries
    }
    required = ("payload.json", "sweep.json", *(f"probs_{s}.npy" for s in SPLITS))
    missing = [
        e
        for e in entries
        if cache.find_made("finetune", payloads[e[0]], required=required, root=root) is None
    ]
    groups: dict[str, list[tuple[str, str, models.ViT]]] = {}
    for entry in missing:  # one program per architecture once the head is replaced
        groups.setdefault(entry[2].config.replace(num_classes=task.num_classes).to_json(), []).append(entry)
    computed = {}
    for group in groups.values():
        what = group[0][0] if len(group) == 1 else f"{len(group)} models"
        sweeps = finetune.fine_tune_many(
            [m for _, _, m in group],
            task.train,
            {s: task.split(s) for s in SPLITS},
            num_classes=task.num_classes,
            learning_rates=rates,
            seeds=seeds,
            steps=params["finetune_steps"],
            batch_size=params["finetune_batch_size"],
            warmup_steps=params["finetune_warmup"],
            eval_batch_size=params["eval_batch_size"],
            description=f"fine-tune {what} on {task.name}",
        )
        computed.update({name: sweep for (name, _, _), sweep in zip(group, sweeps, strict=True)})

    def writer(name: str):
        def make(work: Path) -> None:
            sweep = computed.get(name)
            if sweep is None:  # it was in the cache a moment ago
                raise RuntimeError(f"the cached fine-tuning of {name} on {task.name} vanished; run again")
            for split in SPLITS:
                np.save(work / f"probs_{split}.npy", sweep.probs[split].astype(np.float32))
            record = {"accuracy": sweep.accuracy, "nll": sweep.nll, "seconds": sweep.seconds}
            (work / "sweep.json").write_text(json.dumps(record))

        return make

    out = {}
    for name, _, _ in entries:
        folder, _ = cache.get_or_make("finetune", payloads[name], writer(name), required=required, root=root)
        record = json.loads((folder / "sweep.json").read_text())
        accuracy, nll = record["accuracy"], record["nll"]
        probs = {split: np.load(folder / f"probs_{split}.npy") for split in SPLITS}
        chosen = finetune.Sweep(rates, seeds, accuracy, nll, probs, record["seconds"]).best("validation")
        out[name] = FineTuned(
            name, task.name, rates, seeds, accuracy, nll, chosen, probs, record["seconds"], name in computed
        )
    return out


def _metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    probs = probs / probs.sum(axis=-1, keepdims=True)  # float32 rows: sum to 1 in float64 as well
    return {"accuracy": ensemble.accuracy(probs, labels), "nll": ensemble.nll(probs, labels),
            "ece": ensemble.ece(probs, labels)}  # fmt: skip


def ensembles_for_task(
    tuned: Mapping[str, FineTuned],
    seed_ensemble: FineTuned,
    scores: Mapping[str, float],
    task: Task,
    gflops: Mapping[str, float],
    size: int,
) -> list[dict[str, Any]]:
    """The paper's ensembles and their baselines on ``task``'s test split, one row each: which members,
    test accuracy, NLL, ECE (15 bins), inference GFLOPs per image, and ``correct`` bool [N] per image.

    - ``greedy top-K``: greedy forward selection (validation NLL) over the K members ranked highest by
      ``scores`` (the kNN accuracies), at most K members;
    - ``top-K average``: those K members averaged uniformly;
    - ``seed ensemble``: the top-ranked member fine-tuned with K seeds (``seed_ensemble``), averaged;
    - ``best single (validation)``: the member with the best validation accuracy;
    - ``best single (test, oracle)``: the member with the best test accuracy (not a method: a bound).
    """
    names = list(tuned)
    top = sorted(names, key=lambda n: (-scores[n], names.index(n)))[:size]
    val = np.stack([tuned[n].probs["validation"] for n in top]).astype(np.float64)
    val /= val.sum(axis=-1, keepdims=True)
    picked = [top[i] for i in ensemble.greedy_ensemble(val, task.validation.labels, size)]
    test = {n: tuned[n].probs["test"].astype(np.float64) for n in names}
    best_val = max(names, key=lambda n: (tuned[n].accuracy["validation"][tuned[n].chosen], -names.index(n)))
    best_test = max(names, key=lambda n: (tuned[n].accuracy["test"][tuned[n].chosen], -names.index(n)))
    seeds_probs = seed_ensemble.all_probs["test"].astype(np.float64).mean(axis=0)
    candidates = [
        ("greedy top-K", picked, np.mean([test[n] for n in picked], axis=0)),
        ("top-K average", top, np.mean([test[n] for n in top], axis=0)),
        ("seed ensemble", [seed_ensemble.member] * len(seed_ensemble.seeds), seeds_probs),
        ("best single (validation)", [best_val], test[best_val]),
        ("best single (test, oracle)", [best_test], test[best_test]),
    ]
    rows = []
    for method, members, probs in candidates:
        cost = float(sum(gflops[n] for n in members))
        row = {"task": task.name, "method": method, "members": list(members), "size": len(members),
               "gflops_per_image": cost, **_metrics(probs, task.test.labels),
               "correct": probs.argmax(-1) == task.test.labels}  # fmt: skip
        rows.append(row)
    return rows


def rank_correlations(
    estimates: Mapping[str, Sequence[float]], correct: np.ndarray, *, samples: int, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Per estimator, Spearman and Kendall rank correlation between its values over M members and the
    members' fine-tuned test accuracies (``correct`` bool [M, N]), with the standard error of each from a
    bootstrap over the N test images (the estimates, computed on training data, stay fixed)."""
    rng = np.random.default_rng(seed)
    n = correct.shape[1]
    accuracy = correct.mean(axis=1)
    draws = [np.bincount(rng.integers(0, n, n), minlength=n) / n for _ in range(samples)]
    resampled = np.stack([correct @ w for w in draws])  # [S, M]
    out = {}
    for name, values in estimates.items():
        values = np.asarray(values, np.float64)
        row = {}
        for kind, fn in (("spearman", scipy.stats.spearmanr), ("kendall", scipy.stats.kendalltau)):
            point = float(fn(values, accuracy)[0])
            boot = np.array([fn(values, acc)[0] for acc in resampled], np.float64)
            row[kind] = point
            row[f"{kind}_se"] = float(np.nanstd(boot, ddof=1))
        row["regret"] = float(accuracy.max() - accuracy[int(np.argmax(values))])
        out[name] = row
    return out


def pooled(values: Sequence[float], ses: Sequence[float]) -> dict[str, float]:
    """The mean over T tasks of per-task values with independent standard errors: mean, its standard
    error and the interval mean +- 2 standard errors."""
    v, se = np.asarray(values, np.float64), np.asarray(ses, np.float64)
    mean, err = float(v.mean()), float(np.sqrt((se**2).sum()) / len(v))
    return {"mean": mean, "se": err, "low": mean - 2 * err, "high": mean + 2 * err, "tasks": len(v)}


def paired_gap(correct_a: np.ndarray, correct_b: np.ndarray, samples: int) -> bootstrap.Paired:
    """Test accuracy of method a minus method b on the same test images (paired bootstrap)."""
    return bootstrap.paired(correct_a, correct_b, samples=samples)


def gap_over_tasks(
    rows: Sequence[Mapping[str, Any]],
    method_a: str,
    method_b: str,
    *,
    samples: int,
    tasks: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Test accuracy of ``method_a`` minus ``method_b`` (rows of :func:`ensembles_for_task`), per task with
    the paired bootstrap's standard error over its test images, and pooled over the tasks (or ``tasks``)."""
    by = {(r["task"], r["method"]): r for r in rows}
    names = [t for t in dict.fromkeys(r["task"] for r in rows) if tasks is None or t in tasks]
    per_task = []
    for t in names:
        gap = paired_gap(by[t, method_a]["correct"], by[t, method_b]["correct"], samples)
        per_task.append({"task": t, "gap": gap.gap, "se": gap.gap_se, "resolved": gap.resolved})
    return {"a": method_a, "b": method_b, "per_task": per_task,
            "pooled": pooled([g["gap"] for g in per_task], [g["se"] for g in per_task])}  # fmt: skip


def _verdict_of_interval(low: float, high: float) -> str:
    return "reproduced" if low > 0 else "contradicted" if high < 0 else "within noise"


CLAIMS_05 = {
    "knn": "Ranking pre-trained models by kNN accuracy on the downstream data picks the ones that fine-tune "
    "well: it correlates positively with fine-tuned accuracy (Mustafa et al. 2020).",
    "cost": "The kNN ranking is 2-3 orders of magnitude cheaper than fine-tuning every candidate.",
    "greedy_vs_seeds": "A greedy ensemble of the top-ranked, differently pre-trained models beats the usual "
    "deep ensemble (the top model fine-tuned with K seeds), at no more members.",
    "greedy_vs_single": "The greedy ensemble beats the best single fine-tuned model.",
    "shift": "The greedy ensemble's advantage over the seed ensemble holds under distribution shift.",
}


def claim_checks(
    knn_pooled: Mapping[str, float],
    cost_ratio: float,
    greedy_vs_seeds: Mapping[str, Any],
    greedy_vs_single: Mapping[str, Any],
    shift: Mapping[str, Any] | None,
) -> list[analysis.Claim]:
    """:data:`CLAIMS_05` checked on the measured numbers: each pooled interval (mean +- 2 standard errors)
    above 0 reproduces a claim, below 0 contradicts it, across 0 leaves it within noise; the cost claim is
    reproduced at 100x or more."""
    out = []
    s = knn_pooled
    out.append(analysis.Claim(CLAIMS_05["knn"], _verdict_of_interval(s["low"], s["high"]), (
        f"Spearman correlation of kNN accuracy with fine-tuned test accuracy, mean over {s['tasks']} tasks: "
        f"{s['mean']:+.2f} (2 standard errors over test images: {s['low']:+.2f} to {s['high']:+.2f})."
    ), dict(s)))  # fmt: skip
    verdict = "reproduced" if cost_ratio >= 100 else "not reproduced"
    out.append(analysis.Claim(CLAIMS_05["cost"], verdict, (
        f"Ranking the pool by kNN took {cost_ratio:.0f}x less wall time than fine-tuning it with its sweep"
        + ("." if cost_ratio >= 100 else ": fine-tuning is cheap at this scale, so the saving is smaller.")
    ), {"ratio": cost_ratio}))  # fmt: skip
    for key, gap in (("greedy_vs_seeds", greedy_vs_seeds), ("greedy_vs_single", greedy_vs_single),
                     ("shift", shift)):  # fmt: skip
        if gap is None:
            out.append(analysis.Claim(CLAIMS_05[key], "not tested", "The shifted task was not in this run."))
            continue
        g = gap["pooled"]
        tasks = f"{g['tasks']} task{'s' if g['tasks'] > 1 else ''}"
        sentence = (
            f"{gap['a']} - {gap['b']}: {100 * g['mean']:+.1f} points of test accuracy, mean over {tasks} "
            f"(2 standard errors: {200 * g['se']:.1f} points)."
        )
        out.append(analysis.Claim(CLAIMS_05[key], _verdict_of_interval(g["low"], g["high"]), sentence,
                                  {"pooled": g, "per_task": gap["per_task"]}))  # fmt: skip
    return out


@dataclass
class TaskResult:
    """Everything notebook 05 measured on one task (see the module docstring)."""

    task: str
    ranking: list[dict[str, Any]]
    tuned: dict[str, FineTuned]
    seed_ensemble: FineTuned
    ensembles: list[dict[str, Any]]
    correlations: dict[str, dict[str, float]]

    @property
    def rank_seconds(self) -> float:
        """Wall time of the kNN ranking of the whole pool (feature extraction and compiles included)."""
        return float(sum(r["knn_seconds"] for r in self.ranking))

    @property
    def finetune_seconds(self) -> float:
        """Wall time of fine-tuning the whole pool with its sweep (as measured when it was computed)."""
        return float(sum(t.seconds for t in self.tuned.values()))

    def table(self) -> list[dict[str, Any]]:
        """One row per member: the estimators and the fine-tuned result (chosen learning rate, validation
        and test accuracy)."""
        rows = []
        for r in self.ranking:
            t = self.tuned[r["member"]]
            rows.append({"member": r["member"], **{e: r[e] for e in ESTIMATORS},
                         "learning_rate": t.learning_rate, "val_accuracy": t.accuracy["validation"][t.chosen],
                         "test_accuracy": t.accuracy["test"][t.chosen]})  # fmt: skip
        return rows


def study_task(
    members: Sequence[pool.Member],
    trained: Mapping[str, cache.Trained],
    task_name: str,
    params: Mapping[str, Any],
    image_size: int,
) -> TaskResult:
    """Rank, fine-tune (cached), fine-tune the kNN's top member with K seeds at its chosen learning rate,
    and compare the ensembles on ``task_name`` under notebook 05's knobs ``params``."""
    task = load_task(task_name, params["train_examples"], image_size)
    ranking = rank_task(trained, task, k=params["knn_k"], metric=params["knn_metric"],
                        batch_size=params["eval_batch_size"])  # fmt: skip
    tuned = {m.name: fine_tune_member(m, trained[m.name], task, params) for m in members}
    scores = {r["member"]: r["knn"] for r in ranking}
    names = [m.name for m in members]
    top = max(names, key=lambda n: (scores[n], -names.index(n)))
    K = params["ensemble_size"]
    top_member = next(m for m in members if m.name == top)
    rates, seeds = [tuned[top].learning_rate] * K, [params["seed"] + i for i in range(K)]
    seeds = fine_tune_member(top_member, trained[top], task, params, learning_rates=rates, seeds=seeds)
    gflops = {m.name: models.flops_per_image(m.spec.model) / 1e9 for m in members}
    rows = ensembles_for_task(tuned, seeds, scores, task, gflops, K)
    correct = np.stack([tuned[n].probs["test"].argmax(-1) == task.test.labels for n in names])
    estimates = {e: [next(r[e] for r in ranking if r["member"] == n) for n in names] for e in ESTIMATORS}
    correlations = rank_correlations(
        estimates, correct, samples=params["bootstrap_samples"], seed=params["seed"]
    )
    return TaskResult(task_name, ranking, tuned, seeds, rows, correlations)


def summarise(results: Sequence[TaskResult], params: Mapping[str, Any], shift_task: str = "shapes_shift"):
    """Pooled over tasks: per estimator the mean Spearman and Kendall correlation (with standard errors)
    and mean regret; the cost ratio (fine-tuning the pool / ranking it by kNN, summed over tasks); the
    ensemble gaps; and :func:`claim_checks`."""
    correlations = {}
    for e in ESTIMATORS:
        row = {}
        for kind in ("spearman", "kendall"):
            row[kind] = pooled([r.correlations[e][kind] for r in results],
                               [r.correlations[e][f"{kind}_se"] for r in results])  # fmt: skip
        row["regret"] = float(np.mean([r.correlations[e]["regret"] for r in results]))
        correlations[e] = row
    rank_s = sum(r.rank_seconds for r in results)
    tune_s = sum(r.finetune_seconds for r in results)
    rows = [row for r in results for row in r.ensembles]
    samples = params["bootstrap_samples"]
    vs_seeds = gap_over_tasks(rows, "greedy top-K", "seed ensemble", samples=samples)
    vs_single = gap_over_tasks(rows, "greedy top-K", "best single (validation)", samples=samples)
    shifted = [r.task for r in results if r.task == shift_task]
    shift = (
        gap_over_tasks(rows, "greedy top-K", "seed ensemble", samples=samples, tasks=shifted)
        if shifted
        else None
    )
    ratio = tune_s / rank_s if rank_s > 0 else float("inf")
    claims = claim_checks(correlations["knn"]["spearman"], ratio, vs_seeds, vs_single, shift)
    return {"correlations": correlations, "rank_seconds": rank_s, "finetune_seconds": tune_s,
            "cost_ratio": ratio, "greedy_vs_seeds": vs_seeds, "greedy_vs_single": vs_single, "shift": shift,
            "claims": claims}  # fmt: skip


def picked_kinds(results: Sequence[TaskResult], members: Sequence[pool.Member]) -> list[dict[str, Any]]:
    """Per task, the members the greedy ensemble picked and the upstream kind of each."""
    kind = {m.name: m.kind for m in members}
    out = []
    for r in results:
        greedy = next(row for row in r.ensembles if row["method"] == "greedy top-K")
        out.append({"task": r.task, "picked": ", ".join(greedy["members"]),
                    "kinds": ", ".join(kind[n] for n in greedy["members"])})  # fmt: skip
    return out


def figures(
    summary: Mapping[str, Any],
    results: Sequence[TaskResult],
    members: Sequence[pool.Member],
    trained: Mapping[str, cache.Trained],
    source: str,
) -> dict[str, Any]:
    """Notebook 05's figures JSON: the pool's cards, per-task rankings and ensembles (without the per-image
    ``correct`` arrays), :func:`summarise`'s numbers with the claims as plain data, and the headline figures
    ``knn_spearman``, ``greedy_gain_over_seeds`` and ``cost_ratio``."""
    rows = [{k: v for k, v in row.items() if k != "correct"} for r in results for row in r.ensembles]
    plain = {k: v for k, v in summary.items() if k != "claims"}
    return {
        **plain,
        "pool": [pool.card(m, trained[m.name]) for m in members],
        "ranking": {r.task: r.table() for r in results},
        "ensembles": rows,
        "picked_kinds": picked_kinds(results, members),
        "claims": [c.to_dict() for c in summary["claims"]],
        "knn_spearman": summary["correlations"]["knn"]["spearman"]["mean"],
        "greedy_gain_over_seeds": summary["greedy_vs_seeds"]["pooled"]["mean"],
        "models": {"source": source, "cache_keys": {n: t.path.name for n, t in trained.items()}},
    }

"""Notebook 06's study: expert models from the label hierarchy, cheap proxies that pick one, adapters.

Puigcerver et al. (2021), "Scalable Transfer Learning with Expert Models": train one expert per slice of an
existing label hierarchy, pick the expert for a new task with a cheap proxy, fine-tune it.

- The **generalist** is notebook 02's dense model (the run's seed), trained on every upstream class.
- An **expert model** per upstream family: the generalist trained further for ``expert_steps`` on that
  family's images only, with a fresh head over the family's classes (every weight trains). The ten train
  side by side as one vmapped program (copy f draws batch t of family f with ``rng([seed, f, t])``).
- The **control**: the generalist trained further for the same steps on all upstream images (its own head),
  so that an expert's gain is not merely extra training.
- **Adapter experts**: the same ten trainings with the generalist's backbone frozen, each training only a
  residual bottleneck adapter per block and its head (:mod:`sparse_experts.models.adapters`); combined, one
  model holds the ten.
- Per downstream task: the proxies (:mod:`sparse_experts.transfer.proxies`, kNN accuracy), each with its
  wall time; every candidate (generalist, control, experts) fine-tuned with notebook 05's sweep (cached, so
  the generalist's sweeps are 05's ``dense`` entries); on tasks aligned with a family, the generalist, the
  control, the family's expert and its adapter expert fine-tuned again with ``seed_replicates`` seeds at their
  chosen learning rate, so that the claims' noise covers fine-tuning seeds as well as test images.

Shapes: F families, C candidates, N images, K seed replicates, L MoE layers, E experts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparse_experts import analysis, datasets, models, train, transfer
from sparse_experts.analysis import bootstrap
from sparse_experts.atomic import write_json_atomic
from sparse_experts.transfer import proxies, ranking
from sparse_experts.workbook import cache, transfer_study

GENERALIST, CONTROL = "generalist", "control"
ALIGNED = {"shapes_finegrained": "polygons", "shapes_finestars": "stars"}
"""Downstream tasks built from new members of one upstream family (data/README.md), and that family."""
SIGNATURE_BATCH = 100
"""Images per routing batch when taking routing signatures (a multiple of every preset's group size)."""


def expert_name(family: str, adapter: bool = False) -> str:
    return f"{'adapter' if adapter else 'expert'}:{family}"


def families(dataset: str) -> tuple[str, ...]:
    """The upstream families (coarse classes) of ``dataset``; an error if it has none."""
    info = datasets.info(dataset)
    if not info.coarse_class_names:
        raise ValueError(
            f"dataset={dataset!r} has no label hierarchy (coarse classes); expert models need one"
        )
    return tuple(info.coarse_class_names)


def family_classes(dataset: str, family: str) -> tuple[int, ...]:
    """The fine classes of ``family`` in label order."""
    info = datasets.info(dataset)
    index = list(info.coarse_class_names).index(family)
    return tuple(int(c) for c in np.flatnonzero(np.asarray(info.fine_to_coarse) == index))


def _split(dataset: str, split: str, image_size: int, classes=None) -> tuple[np.ndarray, np.ndarray]:
    data = datasets.load_split(dataset, split, image_size=image_size, classes=classes)
    return datasets.to_float(data.images), np.asarray(data.labels, np.int32)


@dataclass
class Experts:
    """Expert models trained from one generalist: ``models`` {family: ViT}, ``test_accuracy`` {family: on the
    family's upstream test images}, the training's wall ``seconds``, whether it ran now, and its cache key."""

    models: dict[str, models.ViT]
    test_accuracy: dict[str, float]
    seconds: float
    made_now: bool
    key: str
    extra: dict[str, Any] = field(default_factory=dict)


def _accuracy(model: models.ViT, images: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    _, logits = transfer.encode_images(model, images, batch_size=batch_size, with_logits=True)
    return float(np.mean(logits.argmax(-1) == labels))


def _train_config(params: Mapping[str, Any]) -> train.TrainConfig:
    return train.TrainConfig(
        learning_rate=params["expert_learning_rate"],
        total_steps=params["expert_steps"],
        warmup_steps=params["expert_warmup"],
        weight_decay=params["weight_decay"],
    )


def _payload(generalist: cache.Trained, params: Mapping[str, Any], what: str, **extra: Any) -> dict:
    knobs = ("expert_steps", "expert_learning_rate", "expert_warmup", "expert_batch_size", "weight_decay")
    return {
        "generalist": generalist.spec.key(),
        "what": what,
        "seed": params["seed"],
        **{k: params[k] for k in knobs},
        **extra,
    }


def train_experts(
    generalist: cache.Trained, names: Sequence[str], params: Mapping[str, Any], *, adapter: bool = False
) -> Experts:
    """The expert models of families ``names`` (full models, or adapter experts on the frozen generalist
    with ``adapter``), from the cache or trained now as one vmapped program; see the module docstring."""
    spec = generalist.spec
    classes = {f: family_classes(spec.dataset, f) for f in names}
    if len({len(c) for c in classes.values()}) > 1:
        sizes = {f: len(c) for f, c in classes.items()}
        raise ValueError(
            f"families {sizes} differ in their number of classes; the expert models train side by "
            "side and need heads of one size: pick families of equal size"
        )
    R = params["adapter_dim"]

    def fresh(family: str) -> models.ViT:
        Y = len(classes[family])
        if adapter:
            return models.with_adapters(generalist.model, R, Y)
        return models.transplant(generalist.model, generalist.model.config.replace(num_classes=Y))

    what = "adapter experts" if adapter else "expert models"
    payload = _payload(
        generalist, params, what, families=list(names), **({"adapter_dim": R} if adapter else {})
    )

    def make(work: Path) -> None:
        data = [_split(spec.dataset, "train", spec.image_size, classes[f]) for f in names]
        B, seed = params["expert_batch_size"], params["seed"]

        def batch_fn(step: int) -> dict:
            picks = [
                np.random.default_rng([seed, f, step]).integers(0, len(y), B) for f, (_, y) in enumerate(data)
            ]
            return train.stack_batches(
                [{"image": x[i], "label": y[i]} for (x, y), i in zip(data, picks, strict=True)]
            )

        started = time.perf_counter()
        trainer = train.Trainer(
            [fresh(f) for f in names],
            _train_config(params),
            trainable=models.adapters.TRAINABLE if adapter else nnx.Param,
        )
        trainer.fit(batch_fn, params["expert_steps"], description=f"{what} ({len(names)} families)")
        seconds = time.perf_counter() - started
        accuracy = {}
        for r, family in enumerate(names):
            model = trainer.write_back(copy=r)
            cache.save_params(work / family, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
            x, y = _split(spec.dataset, "test", spec.image_size, classes[family])
            accuracy[family] = _accuracy(model, x, y, params["eval_batch_size"])
        write_json_atomic(work / "metrics.json", {"test_accuracy": accuracy, "train_seconds": seconds})

    folder, made = cache.get_or_make("experts", payload, make, required=("payload.json", "metrics.json"))
    metrics = json.loads((folder / "metrics.json").read_text())
    loaded = {f: cache.restore_params(fresh(f), folder / f) for f in names}
    return Experts(loaded, metrics["test_accuracy"], metrics["train_seconds"], made, folder.name)


def train_control(generalist: cache.Trained, params: Mapping[str, Any]) -> Experts:
    """The generalist trained further on all upstream images for the same steps (``{"control": ViT}``)."""
    spec = generalist.spec
    payload = _payload(generalist, params, "control")

    def fresh() -> models.ViT:  # the generalist itself, head included, in buffers of its own
        model = models.transplant(generalist.model, generalist.model.config)
        model.head[...] = jnp.array(generalist.model.head[...], copy=True)
        model.head_bias[...] = jnp.array(generalist.model.head_bias[...], copy=True)
        return model

    def make(work: Path) -> None:
        x, y = _split(spec.dataset, "train", spec.image_size)
        B, seed = params["expert_batch_size"], params["seed"]

        def batch_fn(step: int) -> dict:
            picks = np.random.default_rng([seed, 10_000, step]).integers(0, len(y), B)
            return {"image": x[picks], "label": y[picks]}

        model = fresh()
        started = time.perf_counter()
        train.Trainer(model, _train_config(params)).fit(
            batch_fn, params["expert_steps"], description="control"
        )
        seconds = time.perf_counter() - started
        cache.save_params(work / CONTROL, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
        tx, ty = _split(spec.dataset, "test", spec.image_size)
        accuracy = {CONTROL: _accuracy(model, tx, ty, params["eval_batch_size"])}
        write_json_atomic(work / "metrics.json", {"test_accuracy": accuracy, "train_seconds": seconds})

    folder, made = cache.get_or_make("experts", payload, make, required=("payload.json", "metrics.json"))
    metrics = json.loads((folder / "metrics.json").read_text())
    return Experts(
        {CONTROL: cache.restore_params(fresh(), folder / CONTROL)},
        metrics["test_accuracy"],
        metrics["train_seconds"],
        made,
        folder.name,
    )


# -- proxies -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoutingReference:
    """The main V-MoE's routing signatures on upstream images: per family ``families [F, L, E]``, the whole
    set ``upstream [L, E]``, from ``images`` validation images in ``seconds`` (a one-off cost)."""

    families: np.ndarray
    upstream: np.ndarray
    images: int
    seconds: float


def _route_histograms(vmoe: models.ViT, images: np.ndarray) -> np.ndarray:
    group = vmoe.config.moe.group_size
    batch = SIGNATURE_BATCH - SIGNATURE_BATCH % group or group
    usable = len(images) - len(images) % group
    _, records = analysis.route(vmoe, images[:usable], batch_size=batch)
    return proxies.routing_histograms({layer: r["gates"] for layer, r in records.items()})


def routing_reference(vmoe: cache.Trained, num_images: int) -> RoutingReference:
    """Signatures of the first ``num_images`` upstream validation images (stored order) under ``vmoe``."""
    spec = vmoe.spec
    started = time.perf_counter()
    data = datasets.load_split(spec.dataset, "validation", image_size=spec.image_size)
    count = min(num_images, len(data))
    images = datasets.to_float(data.images[:count])
    hist = _route_histograms(vmoe.model, images)
    fams = np.asarray(data.coarse_labels[: len(hist)])
    signatures = proxies.family_signatures(hist, fams, datasets.info(spec.dataset).num_coarse_classes)
    return RoutingReference(signatures, hist.mean(axis=0), len(hist), time.perf_counter() - started)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def proxy_scores(
    candidates: Mapping[str, models.ViT],
    generalist: models.ViT,
    vmoe: models.ViT,
    reference: RoutingReference,
    task: transfer_study.Task,
    family_names: Sequence[str],
    fine_to_coarse: Sequence[int],
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """Every proxy on ``task``'s training examples: kNN accuracy of each candidate (``knn``, and
    ``knn_seconds`` per candidate: feature extraction, its compile and the kNN), the family mass of domain
    prediction, the routing divergences, each proxy's pick (a candidate name) and wall time."""
    x, y = task.train.images, task.train.labels
    knn, knn_seconds = {}, {}
    for name, model in candidates.items():
        began = time.perf_counter()
        feats = transfer.encode_images(model, x, batch_size=params["eval_batch_size"])
        knn[name] = ranking.knn_accuracy(feats, y, k=params["knn_k"], metric=params["knn_metric"])
        knn_seconds[name] = time.perf_counter() - began
    names = list(candidates)
    knn_pick = max(names, key=lambda n: (knn[n], -names.index(n)))
    began = time.perf_counter()
    _, logits = transfer.encode_images(generalist, x, batch_size=params["eval_batch_size"], with_logits=True)
    mass = proxies.family_mass(_softmax(logits.astype(np.float64)), fine_to_coarse)
    domain = proxies.domain_pick(mass, params["domain_min_share"])
    domain_seconds = time.perf_counter() - began
    began = time.perf_counter()
    signature = _route_histograms(vmoe, x).mean(axis=0)
    divergence, routed = proxies.routing_pick(signature, reference.families, reference.upstream)
    routing_seconds = time.perf_counter() - began

    def candidate(family_index: int | None) -> str:
        return GENERALIST if family_index is None else expert_name(family_names[family_index])

    return {
        "knn": knn,
        "knn_seconds": knn_seconds,
        "family_mass": mass.tolist(),
        "routing_divergence": divergence.tolist(),
        "picks": {"knn": knn_pick, "domain": candidate(domain), "routing": candidate(routed)},
        "seconds": {
            "knn": float(sum(knn_seconds.values())),
            "domain": domain_seconds,
            "routing": routing_seconds,
        },
    }


# -- the study ---------------------------------------------------------------------------------------------
@dataclass
class Pool:
    """The candidates and where they come from: ``models`` {name: ViT} (generalist, control, one expert per
    family), ``keys`` {name: what it is, for the fine-tuning cache}, the adapter experts (``adapters``
    {family: one-set ViT}, ``combined``: the ten in one model), and the training records."""

    models: dict[str, models.ViT]
    keys: dict[str, str]
    adapters: dict[str, models.ViT]
    combined: models.AdapterExperts
    experts: Experts
    adapter_experts: Experts
    control: Experts
    generalist_test_accuracy: float


def build_pool(generalist: cache.Trained, params: Mapping[str, Any]) -> Pool:
    """The generalist, the control, the expert models and the adapter experts (cached; trained now where
    missing), for every upstream family."""
    names = families(generalist.spec.dataset)
    experts = train_experts(generalist, names, params)
    adapter_experts = train_experts(generalist, names, params, adapter=True)
    control = train_control(generalist, params)
    pool = {GENERALIST: generalist.model, CONTROL: control.models[CONTROL]}
    keys = {GENERALIST: generalist.spec.key(), CONTROL: f"{control.key}:{CONTROL}"}
    for f in names:
        pool[expert_name(f)], keys[expert_name(f)] = experts.models[f], f"{experts.key}:{f}"
        keys[expert_name(f, adapter=True)] = f"{adapter_experts.key}:{f}"
    combined = models.combine(adapter_experts.models)
    return Pool(
        pool,
        keys,
        adapter_experts.models,
        combined,
        experts,
        adapter_experts,
        control,
        generalist.metrics["test"]["accuracy"],
    )


def parameter_table(pool: Pool) -> list[dict[str, Any]]:
    """Parameters of one full model, of ten full expert models, and of the one model holding the ten adapter
    experts, with each against one full model."""
    one = models.param_count(next(iter(pool.experts.models.values())).config)
    count = len(pool.experts.models)
    rows = [
        ("one expert model (a full ViT)", one),
        (f"{count} full expert models", count * one),
        (f"one model holding the {count} adapter experts", pool.combined.param_count()),
    ]
    return [{"what": what, "params": n, "x one model": n / one} for what, n in rows]


@dataclass
class TaskStudy:
    """One task: the proxies (:func:`proxy_scores`), every candidate fine-tuned (``tuned``), and on a task
    aligned with ``family`` the seed replicates (``replicates`` {name: FineTuned with K seeds})."""

    task: str
    family: str | None
    scores: dict[str, Any]
    tuned: dict[str, transfer_study.FineTuned]
    replicates: dict[str, transfer_study.FineTuned]
    labels: np.ndarray

    def accuracy(self, name: str) -> float:
        t = self.tuned[name]
        return float(t.accuracy["test"][t.chosen])

    def correct(self, name: str, replicated: bool = False) -> np.ndarray:
        """[N] of the chosen copy, or [K, N] of the seed replicates."""
        if replicated:
            return self.replicates[name].all_probs["test"].argmax(-1) == self.labels[None]
        return self.tuned[name].probs["test"].argmax(-1) == self.labels

    @property
    def expert_names(self) -> list[str]:
        return [n for n in self.tuned if n.startswith("expert:")]

    @property
    def oracle(self) -> str:
        """The expert with the best fine-tuned test accuracy (hindsight)."""
        return max(self.expert_names, key=self.accuracy)

    @property
    def finetune_seconds(self) -> float:
        """Wall time of fine-tuning every candidate (generalist, control and experts) with the sweep."""
        return float(sum(self.tuned[n].seconds for n in (GENERALIST, CONTROL, *self.expert_names)))

    def row(self) -> dict[str, Any]:
        """Per task: the generalist, each proxy's pick and its accuracy, the oracle, the mean over experts."""
        se = lambda a: float(np.sqrt(a * (1 - a) / len(self.labels)))  # noqa: E731  binomial, one run
        out = {"task": self.task, "aligned family": self.family or "none"}
        for label, name in [
            ("generalist", GENERALIST),
            ("control", CONTROL),
            *[(f"{p} pick", n) for p, n in self.scores["picks"].items()],
            ("oracle", self.oracle),
        ]:
            a = self.accuracy(name)
            if label.endswith("pick") or label == "oracle":
                out[f"{label}: model"] = name
            out[label], out[f"{label} se"] = a, se(a)
        mean = float(np.mean([self.accuracy(n) for n in self.expert_names]))
        out["mean over experts"], out["mean over experts se"] = mean, se(mean)
        return out


def study_task(
    pool: Pool,
    task_name: str,
    vmoe: cache.Trained,
    reference: RoutingReference,
    params: Mapping[str, Any],
    image_size: int,
    fine_to_coarse: Sequence[int],
) -> TaskStudy:
    """Proxies, fine-tuning of every candidate (cached), and the seed replicates of an aligned task."""
    task = transfer_study.load_task(task_name, params["train_examples"], image_size)
    family_names = [n.split(":", 1)[1] for n in pool.models if n.startswith("expert:")]
    knobs = (
        "train_examples",
        "knn_k",
        "knn_metric",
        "domain_min_share",
        "signature_images",
        "eval_batch_size",
    )
    payload = {
        "task": task_name,
        "candidates": pool.keys,
        "vmoe": vmoe.spec.key(),
        **{k: params[k] for k in knobs},
    }

    def make(work: Path) -> None:  # cached, so that a rerun reports the times measured with the fine-tuning's
        scores = proxy_scores(
            pool.models,
            pool.models[GENERALIST],
            vmoe.model,
            reference,
            task,
            family_names,
            fine_to_coarse,
            params,
        )
        write_json_atomic(work / "scores.json", scores)

    folder, _ = cache.get_or_make("proxies", payload, make, required=("payload.json", "scores.json"))
    scores = json.loads((folder / "scores.json").read_text())
    family = ALIGNED.get(task_name)
    aligned = family is not None and family in pool.adapters
    adapter = expert_name(family, adapter=True) if aligned else None
    models_of = {**pool.models, **({adapter: pool.adapters[family]} if aligned else {})}
    entries = [(n, pool.keys[n], m) for n, m in models_of.items()]
    tuned = transfer_study.fine_tune_together(entries, task, params)  # one program per architecture
    replicates = {}
    if aligned:
        K = params["seed_replicates"]
        seeds = [params["seed"] + i for i in range(K)]
        by_rate: dict[float, list[str]] = {}
        for name in (GENERALIST, CONTROL, expert_name(family), adapter):  # each at its chosen learning rate
            by_rate.setdefault(tuned[name].learning_rate, []).append(name)
        for rate, names in by_rate.items():
            entries = [(n, pool.keys[n], models_of[n]) for n in names]
            replicates |= transfer_study.fine_tune_together(
                entries, task, params, learning_rates=[rate] * K, seeds=seeds
            )
    return TaskStudy(task_name, family, scores, tuned, replicates, np.asarray(task.test.labels))


# -- claims ----------------------------------------------------------------------------------------------
CLAIMS_06 = {
    "knn_picks": "On a task built from one upstream family, the kNN proxy picks that family's expert model "
    "(Puigcerver et al. 2021).",
    "beats_generalist": "The family's expert model, fine-tuned, beats the generalist fine-tuned the same "
    "way.",
    "beats_control": "It also beats the generalist trained further for the same steps on all upstream data "
    "(the compute-matched control): the gain is the expert's data, not extra training.",
    "cost": "Selecting with the kNN proxy is 2-3 orders of magnitude cheaper than fine-tuning every "
    "candidate (target here: at least 100x per task).",
    "adapter_params": "Adapters hold the ten expert models in one model of at most 1.5x the parameters of "
    "one.",
    "adapter_gain": "Adapter experts keep most of the full expert models' gain over the generalist "
    "(target here: at least 70%).",
}


def _gap(study: TaskStudy, a: str, b: str, samples: int, seed: int) -> bootstrap.Paired:
    return bootstrap.paired(
        study.correct(a, True), study.correct(b, True), samples=samples, seed=seed, paired_seeds=True
    )


def _verdict(gap: bootstrap.Paired) -> str:
    return "within noise" if not gap.resolved else "reproduced" if gap.gap > 0 else "contradicted"


def claim_checks(studies: Sequence[TaskStudy], pool: Pool, params: Mapping[str, Any]) -> list[analysis.Claim]:
    """:data:`CLAIMS_06` checked on the aligned tasks (gaps by the paired bootstrap over the seed replicates
    and test images), the per-task cost ratios and the adapters' parameters and kept gain."""
    samples, seed = params["bootstrap_samples"], params["seed"]
    aligned = [s for s in studies if s.replicates]
    out = []
    if not aligned:
        for key in ("knn_picks", "beats_generalist", "beats_control", "adapter_gain"):
            out.append(
                analysis.Claim(
                    CLAIMS_06[key], "not tested", "No task of this run is aligned with an upstream family."
                )
            )
    else:
        picks = {s.task: s.scores["picks"]["knn"] for s in aligned}
        right = [s.task for s in aligned if picks[s.task] == expert_name(s.family)]
        verdict = "reproduced" if len(right) == len(aligned) else "not reproduced"
        text = "; ".join(f"{t}: picked {p}" for t, p in picks.items())
        out.append(
            analysis.Claim(
                CLAIMS_06["knn_picks"],
                verdict,
                f"kNN picked the aligned family's expert on {len(right)} of {len(aligned)} "
                f"aligned tasks ({text}).",
                {"picks": picks},
            )
        )
        gaps_over = {}
        for key, baseline in (("beats_generalist", GENERALIST), ("beats_control", CONTROL)):
            gaps = {s.task: _gap(s, expert_name(s.family), baseline, samples, seed) for s in aligned}
            gaps_over[baseline] = gaps
            verdicts = {_verdict(g) for g in gaps.values()}
            verdict = verdicts.pop() if len(verdicts) == 1 else "within noise"
            text = "; ".join(
                f"{t}: {100 * g.gap:+.1f} points (2 SE {200 * g.gap_se:.1f})" for t, g in gaps.items()
            )
            out.append(
                analysis.Claim(
                    CLAIMS_06[key],
                    verdict,
                    f"Expert minus {baseline}, {params['seed_replicates']} fine-tuning seeds "
                    f"each, paired bootstrap over seeds and test images: {text}.",
                    {t: g.to_dict() for t, g in gaps.items()},
                )
            )
        kept = {
            s.task: bootstrap.gain_kept(
                s.correct(expert_name(s.family, adapter=True), True),
                s.correct(expert_name(s.family), True),
                s.correct(GENERALIST, True),
                samples=samples,
                seed=seed,
            )
            for s in aligned
        }
        full_resolved = {t: g.resolved for t, g in gaps_over[GENERALIST].items()}  # the full gain, as above
        if not all(g > 0 for g in (k["gain_full"] for k in kept.values())) or not all(full_resolved.values()):
            verdict = "not tested"
            text = "; ".join(
                f"{t}: full expert {100 * k['gain_full']:+.1f} points, adapter expert "
                f"{100 * k['gain_cheap']:+.1f}"
                for t, k in kept.items()
            )
            text += (
                " over the generalist. The full expert models' gain is not positive beyond the noise on "
                "every aligned task, so there is no gain whose share could be measured"
            )
        else:
            low = min(k["fraction"] - 2 * k["se"] for k in kept.values())
            high = max(k["fraction"] + 2 * k["se"] for k in kept.values())
            verdict = "reproduced" if low >= 0.7 else "not reproduced" if high < 0.7 else "within noise"
            text = "; ".join(
                f"{t}: {100 * k['fraction']:.0f}% of {100 * k['gain_full']:+.1f} points "
                f"(2 SE {200 * k['se']:.0f}%)"
                for t, k in kept.items()
            )
        out.append(
            analysis.Claim(
                CLAIMS_06["adapter_gain"],
                verdict,
                f"Share of the full expert's gain over the generalist that the adapter expert keeps: {text}.",
                kept,
            )
        )
    ratios = {s.task: s.finetune_seconds / s.scores["seconds"]["knn"] for s in studies}
    verdict = "reproduced" if min(ratios.values()) >= 100 else "not reproduced"
    text = ", ".join(f"{t} {r:.0f}x" for t, r in ratios.items())
    out.append(
        analysis.Claim(
            CLAIMS_06["cost"],
            verdict,
            f"Fine-tuning every candidate against ranking them by kNN, wall time per task: {text}.",
            ratios,
        )
    )
    table = parameter_table(pool)
    ratio = table[-1]["x one model"]
    out.append(
        analysis.Claim(
            CLAIMS_06["adapter_params"],
            "reproduced" if ratio <= 1.5 else "not reproduced",
            f"{table[-1]['params']:,} parameters hold the {len(pool.adapters)} adapter experts: "
            f"{ratio:.2f}x one model ({table[0]['params']:,}).",
            {"ratio": ratio},
        )
    )
    return out


def score_matrix(studies: Sequence[TaskStudy], what: str) -> dict[str, Any]:
    """Per (task, candidate) the kNN score (``what="knn"``) or the fine-tuned test accuracy
    (``what="accuracy"``): ``{"tasks", "candidates", "values" [T][C]}`` (generalist, control, experts)."""
    names = [GENERALIST, CONTROL, *studies[0].expert_names]
    values = [[s.scores["knn"][n] if what == "knn" else s.accuracy(n) for n in names] for s in studies]
    return {"tasks": [s.task for s in studies], "candidates": names, "values": values}


def figures(studies: Sequence[TaskStudy], pool: Pool, claims: Sequence[analysis.Claim]) -> dict[str, Any]:
    """Notebook 06's figures JSON (plain data)."""
    rows = [s.row() for s in studies]
    costs = [{"task": s.task, "finetune_seconds": s.finetune_seconds, **s.scores["seconds"]} for s in studies]
    return {
        "per_task": rows,
        "costs": costs,
        "parameters": parameter_table(pool),
        "knn": score_matrix(studies, "knn"),
        "accuracy": score_matrix(studies, "accuracy"),
        "upstream_test_accuracy": {
            "generalist": pool.generalist_test_accuracy,
            "control": pool.control.test_accuracy,
            "experts (own family)": pool.experts.test_accuracy,
            "adapter experts (own family)": pool.adapter_experts.test_accuracy,
        },
        "training_seconds": {
            "experts": pool.experts.seconds,
            "adapter experts": pool.adapter_experts.seconds,
            "control": pool.control.seconds,
        },
        "claims": [c.to_dict() for c in claims],
    }


def adapter_points(studies: Sequence[TaskStudy], pool: Pool, samples: int, seed: int) -> list[dict[str, Any]]:
    """Per aligned task: the generalist, the adapter expert and the full expert of the task's family, each
    with the parameters it takes to hold it and its nine siblings (one model for the generalist), its mean
    test accuracy over the seed replicates and that mean's standard error (bootstrap over seeds and
    images)."""
    table = {row["what"]: row["params"] for row in parameter_table(pool)}
    one, full, combined = table.values()
    out = []
    for s in (s for s in studies if s.replicates):
        methods = [
            ("generalist", GENERALIST, one),
            ("adapter experts", expert_name(s.family, adapter=True), combined),
            ("full experts", expert_name(s.family), full),
        ]
        base = s.correct(GENERALIST, True)
        for method, name, params in methods:
            gap = bootstrap.paired(s.correct(name, True), base, samples=samples, seed=seed, paired_seeds=True)
            out.append(
                {"task": s.task, "method": method, "params": params, "accuracy": gap.mean_a, "se": gap.se_a}
            )
    return out


def headline(studies: Sequence[TaskStudy], claims: Sequence[analysis.Claim]) -> dict[str, Any]:
    """The headline figures: on the aligned tasks the mean gap of the family's expert over the generalist and
    over the control (replicate means), the smallest cost ratio over tasks, the adapters' parameter ratio and
    the mean share of the gain they keep (None where not measured: no aligned task, or no full gain beyond
    the noise to keep a share of)."""
    by = {c.claim: c for c in claims}
    aligned = [s for s in studies if s.replicates]

    def mean_gap(key: str) -> float | None:
        numbers = by[CLAIMS_06[key]].numbers
        return float(np.mean([numbers[s.task]["gap"] for s in aligned])) if aligned else None

    kept_claim = by[CLAIMS_06["adapter_gain"]]
    kept = kept_claim.numbers if aligned and kept_claim.verdict != "not tested" else {}
    return {
        "expert_gain_over_generalist": mean_gap("beats_generalist"),
        "expert_gain_over_control": mean_gap("beats_control"),
        "knn_cost_ratio": float(min(by[CLAIMS_06["cost"]].numbers.values())),
        "adapter_params_ratio": float(by[CLAIMS_06["adapter_params"]].numbers["ratio"]),
        "adapter_gain_kept": float(np.mean([k["fraction"] for k in kept.values()])) if kept else None,
    }


HEADLINE_LABELS = {
    "expert_gain_over_generalist": "the aligned family's expert minus the generalist, fine-tuned test "
    "accuracy (mean over the aligned tasks, {k} fine-tuning seeds each)",
    "expert_gain_over_control": "the aligned family's expert minus the compute-matched control, fine-tuned "
    "test accuracy (mean over the aligned tasks, {k} fine-tuning seeds each)",
    "knn_cost_ratio": "fine-tuning every candidate over selecting by kNN, wall time (the smallest over "
    "tasks)",
    "adapter_params_ratio": "parameters of one model holding the ten adapter experts over one full model",
    "adapter_gain_kept": "share of the full expert's gain over the generalist kept by the adapter expert "
    "(mean over the aligned tasks)",
}


def headline_labels(params: Mapping[str, Any]) -> dict[str, str]:
    """What each headline figure is (for the index page)."""
    return {key: text.format(k=params["seed_replicates"]) for key, text in HEADLINE_LABELS.items()}


def upstream_table(pool: Pool) -> list[dict[str, Any]]:
    """One row per trained model: what it is, its upstream test accuracy on its own label set, training time
    of its group."""
    rows = [
        {
            "model": GENERALIST,
            "trained on": "all upstream classes (notebook 02's dense model)",
            "upstream test accuracy": pool.generalist_test_accuracy,
            "train seconds": None,
        },
        {
            "model": CONTROL,
            "trained on": "the generalist + the same steps on all classes",
            "upstream test accuracy": pool.control.test_accuracy[CONTROL],
            "train seconds": pool.control.seconds,
        },
    ]
    for kind, experts in (("expert", pool.experts), ("adapter", pool.adapter_experts)):
        for family, accuracy in experts.test_accuracy.items():
            what = "every weight" if kind == "expert" else "adapters and head (backbone frozen)"
            rows.append(
                {
                    "model": f"{kind}:{family}",
                    "trained on": f"the generalist + {family} only: {what}",
                    "upstream test accuracy": accuracy,
                    "train seconds": experts.seconds / len(experts.test_accuracy),
                }
            )
    return rows


def cost_table(studies: Sequence[TaskStudy]) -> list[dict[str, Any]]:
    """Per task: each proxy's wall time, fine-tuning every candidate, and the ratio of the two for kNN."""
    rows = []
    for s in studies:
        sec = s.scores["seconds"]
        rows.append(
            {
                "task": s.task,
                "kNN (s)": sec["knn"],
                "domain prediction (s)": sec["domain"],
                "routing signature (s)": sec["routing"],
                "fine-tune every candidate (s)": s.finetune_seconds,
                "fine-tune / kNN": s.finetune_seconds / sec["knn"],
            }
        )
    return rows

"""Looking inside trained routers: routing records over a whole image set, expert/class affinity, router
entropy, expert load, compute per image, expert ablation and test-time capacity sweeps.

Shape letters: B images (the whole set, not one batch), N tokens per image (patches, plus the class token
when the model pools with one), E experts, K choices per token, Y classes (or coarse classes), L layers.

Everything here runs the model in eval mode (``train=False``: no router noise) and returns numpy arrays.
Routing depends on the *other* images of a routing group (capacity is shared by the group's tokens, and
Batch Prioritized Routing orders the whole group by top-1 gate), so :func:`route` always evaluates the
images in the given order in fixed batches of ``batch_size``; the same order and batch size give the same
routing.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparse_experts import models, routing
from sparse_experts.analysis.claims import Claim
from sparse_experts.routing import layer_capacity

RECORD_KEYS = ("combine_weights", "gates", "load", "dropped_fraction", "tokens_per_image")
_OVERRIDE_KEYS = ("k", "capacity_factor", "batch_priority")

# (graphdef, overrides) -> jitted forward; graphdefs are hashable, so an ablated copy (same graph, other
# weights) reuses the compiled function of its original.
_FORWARDS: dict[Any, Any] = {}


def _fail(name: str, value: Any, valid: str) -> None:
    raise ValueError(f"{name}={value!r} is not valid; expected {valid}")


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        _fail(name, value, "a positive integer")
    return int(value)


def _moe_config(model: models.ViT) -> models.MoeConfig:
    config = getattr(model, "config", None)
    if not isinstance(config, models.VitConfig):
        _fail("model", type(model).__name__, "a sparse_experts.models.ViT")
    if config.moe is None:
        raise ValueError(f"model {config.name} has no MoE layers (config.moe is None); nothing is routed")
    return config.moe


def _check_overrides(overrides: Mapping[str, Any] | None, moe: models.MoeConfig) -> tuple:
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(_OVERRIDE_KEYS))
    if unknown:
        _fail("moe_overrides", overrides, f"a dict with keys among {_OVERRIDE_KEYS} (unknown: {unknown})")
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if moe.router == "soft" and overrides:
        _fail("moe_overrides", overrides, "None for a Soft MoE model (its slots are fixed parameters)")
    if "k" in overrides:
        k = _check_positive_int("moe_overrides['k']", overrides["k"])
        if k > moe.num_experts:
            _fail("moe_overrides['k']", k, f"an integer in [1, num_experts={moe.num_experts}]")
    if "capacity_factor" in overrides:
        cf = overrides["capacity_factor"]
        if isinstance(cf, bool) or not isinstance(cf, numbers.Real) or not cf > 0:
            _fail("moe_overrides['capacity_factor']", cf, "a number > 0")
        overrides["capacity_factor"] = float(cf)
    if "batch_priority" in overrides and not isinstance(overrides["batch_priority"], bool | np.bool_):
        _fail("moe_overrides['batch_priority']", overrides["batch_priority"], "True or False")
    return tuple(sorted(overrides.items()))


def _forward(graphdef, overrides: tuple):
    key = (graphdef, overrides)
    if key not in _FORWARDS:

        @jax.jit
        def forward(state, images):
            model = nnx.merge(graphdef, state)
            logits, stats = model(images, return_stats=True, moe_overrides=dict(overrides) or None)
            records = {
                layer: {name: record[name] for name in RECORD_KEYS} for layer, record in stats["moe"].items()
            }
            return logits, records

        _FORWARDS[key] = forward
    return _FORWARDS[key]


def route(
    model: models.ViT,
    images: np.ndarray,
    *,
    batch_size: int,
    moe_overrides: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, dict[int, dict[str, Any]]]:
    """Run ``model`` on ``images`` ``[B, S, S, C]`` in order, in batches of ``batch_size``, and stack the
    routing records of every MoE layer over the whole set.

    ``moe_overrides``: ``dict(k=, capacity_factor=, batch_priority=)`` (any subset; ``None`` values are
    ignored) applied to every MoE layer, as ``ViT.__call__``'s ``moe_overrides``. The forward pass is
    jitted once per (model structure, override set); a last, shorter batch compiles once more.

    ``batch_size`` must be a multiple of the model's ``moe.group_size`` and so must the last batch: routing
    groups never mix batches, and images are never padded (padding would change the routing).

    Returns ``(logits [B, Y], records)`` with ``records = {layer index: record}``, each record holding
    numpy arrays:

    - ``"combine_weights"`` ``[B, N, E]``, ``"gates"`` ``[B, N, E]``, ``"tokens_per_image"`` ``[B]``
      (kept token-choices per image), as in ``models.MoeMlp``;
    - ``"load"`` ``[E]``: token-choices each expert processed, summed over all batches;
    - ``"dropped_fraction"``: the fraction of token-choices dropped over the whole set (the batches' values
      averaged; every full batch has the same number of choices, a short last batch is weighted by size);
    - ``"capacity"``: slots per expert C of a full batch's groups (a Python int).
    """
    moe = _moe_config(model)
    batch_size = _check_positive_int("batch_size", batch_size)
    overrides = _check_overrides(moe_overrides, moe)
    images = np.asarray(images)
    config = model.config
    expected = (config.image_size, config.image_size, config.channels)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected or len(images) == 0:
        _fail(
            "images",
            f"<array of shape {images.shape}>",
            f"a non-empty array [B, {', '.join(map(str, expected))}]",
        )
    if batch_size % moe.group_size:
        _fail("batch_size", batch_size, f"a multiple of the model's moe.group_size={moe.group_size}")
    last = len(images) % batch_size
    if last % moe.group_size:
        _fail(
            "images",
            f"<{len(images)} images>",
            f"a number of images whose last batch ({last} images with batch_size={batch_size}) is a multiple "
            f"of moe.group_size={moe.group_size}",
        )
    graphdef, state = nnx.split(model)
    forward = _forward(graphdef, overrides)
    logits, parts, sizes = [], [], []
    for start in range(0, len(images), batch_size):
        batch = jnp.asarray(images[start : start + batch_size])
        batch_logits, records = forward(state, batch)
        logits.append(np.asarray(batch_logits))
        parts.append(jax.tree.map(np.asarray, records))
        sizes.append(len(batch))
    weights = np.asarray(sizes, np.float64) / sum(sizes)
    capacity = _capacity(config, overrides, min(batch_size, len(images)))
    stacked = {}
    for layer in parts[0]:
        per_batch = [part[layer] for part in parts]
        stacked[layer] = {
            "combine_weights": np.concatenate([p["combine_weights"] for p in per_batch]),
            "gates": np.concatenate([p["gates"] for p in per_batch]),
            "tokens_per_image": np.concatenate([p["tokens_per_image"] for p in per_batch]),
            "load": np.sum([p["load"] for p in per_batch], axis=0),
            "dropped_fraction": float(np.dot(weights, [float(p["dropped_fraction"]) for p in per_batch])),
            "capacity": capacity,
        }
    return np.concatenate(logits), stacked


def _capacity(config: models.VitConfig, overrides: tuple, batch: int) -> int:

    moe, given = config.moe, dict(overrides)
    if moe.router == "soft":
        return layer_capacity("soft", config.num_tokens, moe.num_experts, 1, moe.capacity_factor)
    cf = given.get("capacity_factor", moe.eval_capacity_factor or moe.capacity_factor)
    tokens = moe.group_size * config.num_tokens
    return layer_capacity(moe.router, tokens, moe.num_experts, given.get("k", moe.k), cf)


def _check_weights(name: str, value: Any, ndim: int = 3) -> np.ndarray:
    array = np.asarray(value, np.float64)
    if array.ndim != ndim:
        letters = "[B, N, E]" if ndim == 3 else "[N, E]"
        _fail(name, f"<array of shape {array.shape}>", f"an array {letters}")
    return array


def _check_labels(labels: Any, count: int, num_classes: int) -> np.ndarray:
    num_classes = _check_positive_int("num_classes", num_classes)
    labels = np.asarray(labels)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        _fail(
            "labels", f"<array of shape {labels.shape}, dtype {labels.dtype}>", f"integers of shape [{count}]"
        )
    if count and (labels.min() < 0 or labels.max() >= num_classes):
        _fail(
            "labels",
            f"<values in [{labels.min()}, {labels.max()}]>",
            f"values in [0, num_classes={num_classes})",
        )
    return labels


def expert_class_affinity(
    combine_weights: np.ndarray, labels: np.ndarray, num_classes: int, *, relative: bool = False
) -> np.ndarray:
    """How each class's routed weight is shared among the experts: ``[E, Y]``, rows experts, columns classes.

    ``affinity[e, y] = sum(combine_weights[b, n, e] for images b of class y, all tokens n)
    / sum(combine_weights[b, n, e'] for images b of class y, all tokens n, all experts e')``.

    Each column sums to 1 (a class absent from ``labels``, or whose tokens were all dropped, is a column of
    NaN). With equal use of E experts every entry is 1/E; a specialised expert has entries far above 1/E
    for a few classes. ``relative=True`` divides each row by that expert's share of all the routed weight
    (over every class): 1 means "this class uses expert e as much as the data set does", 2 twice as much.

    For coarse classes pass the coarse label of each image and the number of coarse classes.
    """
    weights = _check_weights("combine_weights", combine_weights)
    labels = _check_labels(labels, weights.shape[0], num_classes)
    per_image = weights.sum(axis=1)  # [B, E]
    per_class = np.zeros((num_classes, weights.shape[2]))
    np.add.at(per_class, labels, per_image)  # [Y, E]
    totals = per_class.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(totals > 0, per_class / totals, np.nan).T  # [E, Y]
        if relative:
            overall = per_image.sum(axis=0) / per_image.sum()  # [E]
            share = share / overall[:, None]
    return share


def router_entropy(gates: np.ndarray, *, reduce: bool = True) -> np.ndarray | float:
    """:func:`sparse_experts.routing.router_entropy` of ``gates[..., E]`` as numpy: ``reduce=True`` the mean
    over all tokens (a float), else per token ``[...]``."""
    gates = np.asarray(gates, np.float64)
    if gates.ndim < 1 or gates.shape[-1] < 1:
        _fail("gates", f"<array of shape {gates.shape}>", "an array [..., E] with E >= 1")
    entropy = np.asarray(routing.router_entropy(gates), np.float64)
    return float(entropy.mean()) if reduce else entropy


def expert_load(combine_weights: np.ndarray, *, weighted: bool = False) -> np.ndarray:
    """Share of the work each expert did, ``[E]`` summing to 1 (all zeros if nothing was routed).

    ``weighted=False``: the share of processed token-choices (a token-choice counts when its combine
    weight is > 0: for top-k the kept choices, the ``"load"`` of the record up to normalisation).
    ``weighted=True``: the share of the combine weight (the measure for Soft MoE, where every token mixes
    into every expert). ``combine_weights`` may be ``[B, N, E]`` or any ``[..., E]``.
    """
    weights = np.asarray(combine_weights, np.float64)
    if weights.ndim < 1:
        _fail("combine_weights", f"<array of shape {weights.shape}>", "an array [..., E]")
    amount = weights if weighted else (weights > 0).astype(np.float64)
    per_expert = amount.reshape(-1, weights.shape[-1]).sum(axis=0)
    total = per_expert.sum()
    return per_expert / total if total > 0 else per_expert


def compute_per_image(tokens_per_image: Mapping[int, Any], layers: Iterable[int] | None = None) -> np.ndarray:
    """Token-choices processed by experts per image, summed over MoE ``layers`` (default: all): ``[B]``.

    ``tokens_per_image`` maps a layer index to that layer's ``[B]`` counts, or to its whole record (as from
    :func:`route`), whose ``"tokens_per_image"`` is used. Expert compute per image is proportional to this
    count (each processed token-choice is one expert MLP application).
    """
    if not isinstance(tokens_per_image, Mapping) or not tokens_per_image:
        _fail(
            "tokens_per_image", type(tokens_per_image).__name__, "a non-empty mapping layer -> [B] or record"
        )
    chosen = list(tokens_per_image) if layers is None else list(layers)
    missing = [layer for layer in chosen if layer not in tokens_per_image]
    if missing or not chosen:
        _fail("layers", chosen, f"a non-empty subset of the MoE layers {sorted(tokens_per_image)}")
    counts = []
    for layer in chosen:
        value = tokens_per_image[layer]
        value = value["tokens_per_image"] if isinstance(value, Mapping) else value
        counts.append(np.asarray(value, np.float64))
    shapes = {c.shape for c in counts}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        _fail("tokens_per_image", f"<shapes {sorted(shapes)}>", "arrays [B] of one shape")
    return np.sum(counts, axis=0)


def patch_choices(
    gates: np.ndarray, combine_weights: np.ndarray, k: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """For one image: each token's ``k`` first router choices ``[N, K]`` (experts by descending gate, ties to
    the lower index) and whether each choice was dropped ``[N, K]`` (its combine weight is 0: the expert was
    full, or for expert choice did not pick the token). Inputs ``[N, E]``."""
    gates = _check_weights("gates", gates, ndim=2)
    weights = _check_weights("combine_weights", combine_weights, ndim=2)
    if gates.shape != weights.shape:
        _fail("combine_weights", f"<array of shape {weights.shape}>", f"the shape of gates {gates.shape}")
    k = _check_positive_int("k", k)
    if k > gates.shape[1]:
        _fail("k", k, f"an integer in [1, E={gates.shape[1]}]")
    choices = np.argsort(-gates, axis=1, kind="stable")[:, :k]
    dropped = np.take_along_axis(weights, choices, axis=1) <= 0
    return choices, dropped


def _moe_block(model: models.ViT, layer: Any):
    config = model.config
    layers = models.moe_layers(config)
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or layer not in layers:
        _fail("layer", layer, f"one of the MoE layers {layers}")
    return model.encoder.blocks[int(layer)].mlp


def ablate_expert(model: models.ViT, layer: int, expert: int) -> models.ViT:
    """A copy of ``model`` in which expert ``expert`` of MoE layer ``layer`` is switched off: its output
    weights ``wo[expert]`` and bias ``bo[expert]`` are zero, so its output is exactly zero and every token it
    processes gets only the residual path (and its other experts) in that layer. Routing is unchanged (the
    expert still takes its slots). ``model`` is not modified."""
    moe = _moe_config(model)
    _moe_block(model, layer)
    if (
        isinstance(expert, bool)
        or not isinstance(expert, numbers.Integral)
        or not 0 <= expert < moe.num_experts
    ):
        _fail("expert", expert, f"an integer in [0, num_experts={moe.num_experts})")
    copy = nnx.clone(model)
    mlp = _moe_block(copy, layer)
    mlp.experts.wo[...] = mlp.experts.wo[...].at[int(expert)].set(0)
    if mlp.experts.bo is not None:
        mlp.experts.bo[...] = mlp.experts.bo[...].at[int(expert)].set(0)
    return copy


def accuracy_per_class(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Top-1 accuracy of each class ``[Y]`` (NaN for a class absent from ``labels``); ``logits [B, Y']``."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        _fail("logits", f"<array of shape {logits.shape}>", "an array [B, Y]")
    labels = _check_labels(labels, logits.shape[0], num_classes)
    correct = (logits.argmax(axis=1) == labels).astype(np.float64)
    hits = np.bincount(labels, weights=correct, minlength=num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)


def capacity_sweep(
    model: models.ViT,
    images: np.ndarray,
    labels: np.ndarray,
    capacity_factors: Sequence[float],
    *,
    batch_size: int,
    batch_priority: bool = False,
    k: int | None = None,
) -> dict[str, np.ndarray]:
    """Test-time capacity sweep: for each capacity factor, route ``images`` (in order, batches of
    ``batch_size``; see :func:`route`) with ``moe_overrides=dict(capacity_factor=cf, batch_priority=...,
    k=k)`` and measure accuracy and compute.

    Returns numpy arrays, one entry per capacity factor: ``"capacity_factor"``, ``"accuracy"`` (top-1),
    ``"gflops"`` (forward GFLOPs per image: ``models.flops_per_image(config, capacity_factor=cf) / 1e9`` on
    the config with ``moe.k`` replaced by ``k`` when given; it counts the expert buffers E x C that the
    capacity allocates, whether or not slots are filled), ``"expert_gflops"`` (the expert MLP FLOPs per image
    actually used: kept token-choices x 2 x 2DH, mean over images, / 1e9), ``"dropped_fraction"`` (mean over
    the MoE layers) and ``"tokens_per_image"`` (kept token-choices per image summed over layers, mean).

    Not for Soft MoE (its slots are fixed parameters: evaluate it once for a single point).
    """
    moe = _moe_config(model)
    if moe.router == "soft":
        _fail(
            "model",
            f"<Soft MoE {model.config.name}>",
            "a top_k or expert_choice model (Soft MoE has no capacity dial)",
        )
    if isinstance(capacity_factors, numbers.Real) or len(capacity_factors) == 0:
        _fail("capacity_factors", capacity_factors, "a non-empty sequence of numbers > 0")
    for cf in capacity_factors:
        if isinstance(cf, bool) or not isinstance(cf, numbers.Real) or not cf > 0:
            _fail("capacity_factors", list(capacity_factors), "numbers > 0")
    if not isinstance(batch_priority, bool | np.bool_):
        _fail("batch_priority", batch_priority, "True or False")
    config = model.config
    if k is not None:
        config = config.replace(moe=dataclasses.replace(moe, k=k))
    labels = _check_labels(labels, len(np.asarray(images)), config.num_classes)
    D, H = config.width, config.mlp_dim
    rows: dict[str, list] = {key: [] for key in ("capacity_factor", "accuracy", "gflops", "expert_gflops",
                                                 "dropped_fraction", "tokens_per_image")}  # fmt: skip
    for cf in capacity_factors:
        overrides = dict(capacity_factor=float(cf), batch_priority=bool(batch_priority), k=k)
        logits, records = route(model, images, batch_size=batch_size, moe_overrides=overrides)
        tokens = compute_per_image(records)
        rows["capacity_factor"].append(float(cf))
        rows["accuracy"].append(float(np.mean(logits.argmax(axis=1) == labels)))
        rows["gflops"].append(models.flops_per_image(config, capacity_factor=float(cf)) / 1e9)
        rows["expert_gflops"].append(float(tokens.mean()) * 2 * 2 * D * H / 1e9)
        rows["dropped_fraction"].append(float(np.mean([r["dropped_fraction"] for r in records.values()])))
        rows["tokens_per_image"].append(float(tokens.mean()))
    return {key: np.asarray(value, np.float64) for key, value in rows.items()}


BPR_CLAIM = (
    "With Batch Prioritized Routing, accuracy holds up at capacity factors below 1 where vanilla routing "
    "degrades quickly (Riquelme et al. 2021)."
)


def bpr_claim_check(
    capacity_factors: Sequence[float],
    vanilla_accuracy: Sequence[float],
    bpr_accuracy: Sequence[float],
    *,
    num_images: int,
    threshold: float = 0.5,
    reference: float = 1.0,
) -> Claim:
    """Check V-MoE's claim "with BPR, accuracy holds up at capacity factors below 1 where vanilla routing
    degrades quickly" against a capacity sweep of one model with vanilla routing and with BPR.

    The reference is the capacity factor ``reference`` if swept, else the highest swept. At each swept
    factor ``<= threshold`` the accuracy *drop* from the reference is measured for both routings. The noise
    scale is twice the binomial standard error of an accuracy on ``num_images`` images at the reference
    (vanilla) accuracy. Verdict (:data:`VERDICTS`):

    - ``"reproduced"``: vanilla drops by more than the noise at the lowest low factor, BPR is at least as
      accurate as vanilla at every low factor, and BPR's mean drop is smaller by more than the noise;
    - ``"contradicted"``: BPR's mean drop is larger than vanilla's by more than the noise;
    - ``"within noise"``: otherwise, when BPR's mean advantage is within the noise either way;
    - ``"not reproduced"``: otherwise (BPR's mean advantage exceeds the noise, but vanilla does not degrade
      beyond the noise or BPR falls below vanilla at some low factor);
    - ``"not tested"``: no swept factor is ``<= threshold``.

    ``numbers``: ``reference_capacity_factor``, ``noise``, ``num_images``, ``threshold``, ``mean_gap`` (None
    when not tested) and ``rows``, one per low factor: ``capacity_factor``, ``vanilla_drop``, ``bpr_drop``,
    ``bpr_minus_vanilla``.
    """
    factors = np.asarray(capacity_factors, np.float64)
    vanilla = np.asarray(vanilla_accuracy, np.float64)
    bpr = np.asarray(bpr_accuracy, np.float64)
    if factors.ndim != 1 or len(factors) == 0 or {vanilla.shape, bpr.shape} != {factors.shape}:
        _fail(
            "accuracies",
            (vanilla.shape, bpr.shape),
            f"1-D arrays of the shape {factors.shape} of the factors",
        )
    num_images = _check_positive_int("num_images", num_images)
    matches = np.flatnonzero(np.isclose(factors, reference))
    ref = int(matches[0]) if len(matches) else int(np.argmax(factors))
    acc = vanilla[ref]
    noise = 2 * float(np.sqrt(max(acc * (1 - acc), 1e-12) / num_images))
    low = [i for i in np.argsort(factors, kind="stable") if factors[i] <= threshold and i != ref]
    numbers: dict[str, Any] = {"reference_capacity_factor": float(factors[ref]), "noise": noise,
                               "num_images": num_images, "threshold": float(threshold), "mean_gap": None,
                               "rows": []}  # fmt: skip
    if not low:
        return Claim(BPR_CLAIM, "not tested", f"Not tested: no capacity factor <= {threshold:g} was swept.",
                     numbers)  # fmt: skip
    rows = [
        {
            "capacity_factor": float(factors[i]),
            "vanilla_drop": float(vanilla[ref] - vanilla[i]),
            "bpr_drop": float(bpr[ref] - bpr[i]),
            "bpr_minus_vanilla": float(bpr[i] - vanilla[i]),
        }
        for i in low
    ]
    mean_gap = float(np.mean([r["vanilla_drop"] - r["bpr_drop"] for r in rows]))
    numbers.update(mean_gap=mean_gap, rows=rows)
    vanilla_degrades = rows[0]["vanilla_drop"] > noise
    bpr_never_worse = all(r["bpr_minus_vanilla"] >= 0 for r in rows)
    if vanilla_degrades and bpr_never_worse and mean_gap > noise:
        verdict = "reproduced"
    elif mean_gap < -noise:
        verdict = "contradicted"
    elif abs(mean_gap) <= noise:
        verdict = "within noise"
    else:
        verdict = "not reproduced"
    drops = "; ".join(
        f"C={r['capacity_factor']:g}: vanilla {0.0 - 100 * r['vanilla_drop']:+.1f}, "
        f"BPR {0.0 - 100 * r['bpr_drop']:+.1f}"
        for r in rows
    )
    why = {
        "reproduced": "BPR holds accuracy where vanilla routing loses it",
        "contradicted": "BPR loses more accuracy than vanilla routing",
        "within noise": "BPR's mean advantage is within the noise"
        + ("" if vanilla_degrades else ", and vanilla routing does not degrade beyond the noise"),
        "not reproduced": (
            "vanilla routing does not degrade beyond the noise"
            if not vanilla_degrades
            else "BPR falls below vanilla routing at some low capacity factor"
        ),
    }[verdict]
    sentence = (
        f"{verdict.capitalize()} at this scale: {why}. Accuracy change in points from C={factors[ref]:g} "
        f"(vanilla {100 * vanilla[ref]:.1f}%, BPR {100 * bpr[ref]:.1f}%): {drops}. Mean BPR advantage "
        f"{100 * mean_gap:+.1f} points; noise (2 standard errors on {num_images} images) {100 * noise:.1f}."
    )
    return Claim(BPR_CLAIM, verdict, sentence, numbers)


def top_and_bottom(values: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``count`` largest values (largest first) and the ``count`` smallest (smallest first);
    ties keep the lower index first."""
    values = np.asarray(values)
    count = _check_positive_int("count", count)
    if values.ndim != 1 or count > len(values):
        _fail("count", count, f"at most the number of values ({values.size})")
    order = np.argsort(values, kind="stable")
    most = np.argsort(-values, kind="stable")[:count]
    return most, order[:count]


__all__ = [
    "RECORD_KEYS",
    "ablate_expert",
    "accuracy_per_class",
    "bpr_claim_check",
    "capacity_sweep",
    "compute_per_image",
    "expert_class_affinity",
    "expert_load",
    "patch_choices",
    "route",
    "router_entropy",
    "top_and_bottom",
]

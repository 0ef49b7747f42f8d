"""Looking inside trained routers: routing records over a whole image set, expert/class affinity, router
entropy, expert load, what became of each expert's requested token-choices (kept or dropped) and of each
patch's choices, each expert's highest-gate patches, compute per image (and how it relates to brightness
and contrast), expert ablation and test-time capacity sweeps.

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
import functools
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparse_experts import models, routing
from sparse_experts.analysis.claims import Claim
from sparse_experts.routing import check_bool, check_int, check_number, fail, layer_capacity

RECORD_KEYS = ("combine_weights", "gates", "load", "dropped_fraction", "tokens_per_image")
_OVERRIDE_KEYS = ("k", "capacity_factor", "batch_priority")

# (graphdef, overrides) -> jitted eval forward; graphdefs are hashable, so an ablated copy (same graph, other
# weights) reuses the compiled function of its original, and models of one structure share the compile.


def _check_index(name: str, value: Any, stop: int, bound: str) -> int:
    """``value`` as an int in [0, ``stop``); ``bound`` names the stop in the message (e.g. "E=4")."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < stop:
        fail(name, value, f"an integer in [0, {bound})")
    return int(value)


def _moe_config(model: models.ViT) -> models.MoeConfig:
    config = getattr(model, "config", None)
    if not isinstance(config, models.VitConfig):
        fail("model", type(model).__name__, "a sparse_experts.models.ViT")
    if config.moe is None:
        raise ValueError(f"model {config.name} has no MoE layers (config.moe is None); nothing is routed")
    return config.moe


def _check_overrides(overrides: Mapping[str, Any] | None, moe: models.MoeConfig) -> tuple:
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(_OVERRIDE_KEYS))
    if unknown:
        fail("moe_overrides", overrides, f"a dict with keys among {_OVERRIDE_KEYS} (unknown: {unknown})")
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if moe.router == "soft" and overrides:
        fail("moe_overrides", overrides, "None for a Soft MoE model (its slots are fixed parameters)")
    if "k" in overrides:
        overrides["k"] = routing.check_choices(overrides["k"], moe.num_experts, "moe_overrides['k']")
    for key, check in (("capacity_factor", check_number), ("batch_priority", check_bool)):
        if key in overrides:
            overrides[key] = check(f"moe_overrides[{key!r}]", overrides[key])
    return tuple(sorted(overrides.items()))


@functools.cache
def _forward(graphdef, overrides: tuple | None):
    """The jitted ``(state, images) -> (logits, {layer: record})``, one per (architecture, overrides);
    ``overrides=None``: logits and ``{}`` (also for models without MoE layers)."""

    @jax.jit
    def forward(state, images):
        model = nnx.merge(graphdef, state)
        if overrides is None:
            return model(images, train=False), {}
        logits, stats = model(images, return_stats=True, moe_overrides=dict(overrides) or None)

        records = {
            layer: {name: record[name] for name in RECORD_KEYS} for layer, record in stats["moe"].items()
        }
        return logits, records

    return forward


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
    ignored) applied to every MoE layer, as ``ViT.__call__``'s ``moe_overrides``. ``batch_size`` and the
    last batch must be multiples of ``moe.group_size``: routing groups never mix batches, and images are
    never padded (padding would change the routing).

    Returns ``(logits [B, Y], {layer index: record})``, each record holding numpy arrays:

    - ``"combine_weights"`` ``[B, N, E]``, ``"gates"`` ``[B, N, E]``, ``"tokens_per_image"`` ``[B]``
      (kept token-choices per image), as in ``models.MoeMlp``;
    - ``"load"`` ``[E]``: token-choices each expert processed, summed over all batches;
    - ``"dropped_fraction"``: the fraction of token-choices dropped over the whole set (the batches' values
      averaged; every full batch has the same number of choices, a short last batch is weighted by size);
    - ``"capacity"``: slots per expert C of a full batch's groups (a Python int).
    """
    moe = _moe_config(model)
    batch_size = check_int("batch_size", batch_size)
    overrides = _check_overrides(moe_overrides, moe)
    images = np.asarray(images)
    config = model.config
    expected = (config.image_size, config.image_size, config.channels)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected or len(images) == 0:
        fail("images", f"<array of shape {images.shape}>", f"a non-empty array [B, {str(expected)[1:-1]}]")
    if batch_size % moe.group_size:
        fail("batch_size", batch_size, f"a multiple of the model's moe.group_size={moe.group_size}")
    last = len(images) % batch_size
    if last % moe.group_size:
        fail(
            "images",
            f"<{len(images)} images>",
            f"a number of images whose last batch ({last} images with batch_size={batch_size}) is a multiple "
            f"of moe.group_size={moe.group_size}",
        )
    graphdef, state = nnx.split(model)
    forward = _forward(graphdef, overrides)
    logits, parts = [], []
    for start in range(0, len(images), batch_size):
        batch_logits, records = forward(state, jnp.asarray(images[start : start + batch_size]))
        logits.append(np.asarray(batch_logits))
        parts.append(jax.tree.map(np.asarray, records))
    sizes = [len(part) for part in logits]
    weights = np.asarray(sizes, np.float64) / sum(sizes)
    capacity = _capacity(config, overrides)
    stacked = {}
    for layer in parts[0]:
        per_batch = [part[layer] for part in parts]
        stacked[layer] = {
            key: np.concatenate([p[key] for p in per_batch])
            for key in ("combine_weights", "gates", "tokens_per_image")
        }
        stacked[layer]["load"] = np.sum([p["load"] for p in per_batch], axis=0)
        dropped = [float(p["dropped_fraction"]) for p in per_batch]
        stacked[layer] |= {"dropped_fraction": float(np.dot(weights, dropped)), "capacity": capacity}
    return np.concatenate(logits), stacked


def _capacity(config: models.VitConfig, overrides: tuple) -> int:
    moe, given = config.moe, dict(overrides)
    if moe.router == "soft":
        return layer_capacity("soft", config.num_tokens, moe.num_experts, 1, moe.capacity_factor)
    cf = given.get("capacity_factor", moe.eval_capacity_factor or moe.capacity_factor)
    tokens = moe.group_size * config.num_tokens
    return layer_capacity(moe.router, tokens, moe.num_experts, given.get("k", moe.k), cf)


def _check_weights(name: str, value: Any, ndim: int = 3) -> np.ndarray:
    array = np.asarray(value, np.float64)
    if array.ndim != ndim:
        fail(name, f"<array of shape {array.shape}>", f"an array {'[B, N, E]' if ndim == 3 else '[N, E]'}")
    return array


def _check_labels(labels: Any, count: int, num_classes: int) -> np.ndarray:
    num_classes = check_int("num_classes", num_classes)
    labels = np.asarray(labels)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        fail(
            "labels", f"<array of shape {labels.shape}, dtype {labels.dtype}>", f"integers of shape [{count}]"
        )
    if count and (labels.min() < 0 or labels.max() >= num_classes):
        values = f"<values in [{labels.min()}, {labels.max()}]>"
        fail("labels", values, f"values in [0, num_classes={num_classes})")
    return labels


def expert_class_affinity(
    combine_weights: np.ndarray, labels: np.ndarray, num_classes: int, *, relative: bool = False
) -> np.ndarray:
    """How each class's routed weight is shared among the experts: ``[E, Y]``, rows experts, columns classes.

    ``affinity[e, y] = sum(combine_weights[b, n, e] for images b of class y, all tokens n)
    / sum(combine_weights[b, n, e'] for images b of class y, all tokens n, all experts e')``.

    Each column sums to 1 (NaN for a class absent from ``labels`` or whose tokens were all dropped).
    ``relative=True`` divides each row by that expert's share of all the routed weight: 1 means "this class
    uses expert e as much as the data set does", 2 twice as much.

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
        fail("gates", f"<array of shape {gates.shape}>", "an array [..., E] with E >= 1")
    entropy = np.asarray(routing.router_entropy(gates), np.float64)
    return float(entropy.mean()) if reduce else entropy


def expert_load(combine_weights: np.ndarray, *, weighted: bool = False) -> np.ndarray:
    """Share of the work each expert did, ``[E]`` summing to 1 (all zeros if nothing was routed), from
    ``combine_weights`` ``[..., E]``.

    ``weighted=False``: the share of processed token-choices (those with a combine weight > 0: for top-k
    the kept choices, the record's ``"load"`` normalised). ``weighted=True``: the share of the combine
    weight (the measure for Soft MoE, where every token mixes into every expert).
    """
    weights = np.asarray(combine_weights, np.float64)
    if weights.ndim < 1:
        fail("combine_weights", f"<array of shape {weights.shape}>", "an array [..., E]")
    amount = weights if weighted else (weights > 0).astype(np.float64)
    per_expert = amount.reshape(-1, weights.shape[-1]).sum(axis=0)
    total = per_expert.sum()
    return per_expert / total if total > 0 else per_expert


def compute_per_image(tokens_per_image: Mapping[int, Any], layers: Iterable[int] | None = None) -> np.ndarray:
    """Token-choices processed by experts per image, summed over MoE ``layers`` (default: all): ``[B]``, the
    expert compute per image (each processed token-choice is one expert MLP application).

    ``tokens_per_image`` maps a layer index to that layer's ``[B]`` counts or to its whole record (as from
    :func:`route`).
    """
    if not isinstance(tokens_per_image, Mapping) or not tokens_per_image:
        kind = type(tokens_per_image).__name__
        fail("tokens_per_image", kind, "a non-empty mapping layer -> [B] or record")
    chosen = list(tokens_per_image) if layers is None else list(layers)
    if not chosen or any(layer not in tokens_per_image for layer in chosen):
        fail("layers", chosen, f"a non-empty subset of the MoE layers {sorted(tokens_per_image)}")
    counts = []
    for layer in chosen:
        value = tokens_per_image[layer]
        value = value["tokens_per_image"] if isinstance(value, Mapping) else value
        counts.append(np.asarray(value, np.float64))
    shapes = {c.shape for c in counts}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        fail("tokens_per_image", f"<shapes {sorted(shapes)}>", "arrays [B] of one shape")
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
        fail("combine_weights", f"<array of shape {weights.shape}>", f"the shape of gates {gates.shape}")
    k = routing.check_choices(k, gates.shape[1])
    choices = np.argsort(-gates, axis=1, kind="stable")[:, :k]
    dropped = np.take_along_axis(weights, choices, axis=1) <= 0
    return choices, dropped


def _moe_block(model: models.ViT, layer: Any):
    layers = models.moe_layers(model.config)
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or layer not in layers:
        fail("layer", layer, f"one of the MoE layers {layers}")
    return model.encoder.blocks[int(layer)].mlp


def ablate_expert(model: models.ViT, layer: int, expert: int) -> models.ViT:
    """A copy of ``model`` in which expert ``expert`` of MoE layer ``layer`` is switched off: its output
    weights ``wo[expert]`` and bias ``bo[expert]`` are zero, so its output is exactly zero and every token it
    processes gets only the residual path (and its other experts) in that layer. Routing is unchanged (the
    expert still takes its slots). ``model`` is not modified."""
    moe = _moe_config(model)
    _moe_block(model, layer)
    expert = _check_index("expert", expert, moe.num_experts, f"num_experts={moe.num_experts}")
    copy = nnx.clone(model)
    mlp = _moe_block(copy, layer)
    mlp.experts.wo[...] = mlp.experts.wo[...].at[expert].set(0)
    if mlp.experts.bo is not None:
        mlp.experts.bo[...] = mlp.experts.bo[...].at[expert].set(0)
    return copy


def accuracy_per_class(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Top-1 accuracy of each class ``[Y]`` (NaN for a class absent from ``labels``); ``logits [B, Y']``."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        fail("logits", f"<array of shape {logits.shape}>", "an array [B, Y]")
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
    """Test-time capacity sweep (not for Soft MoE, whose slots are parameters): for each capacity factor,
    :func:`route` ``images`` with ``moe_overrides=dict(capacity_factor=cf, batch_priority=..., k=k)``.

    Returns numpy arrays, one entry per factor: ``"capacity_factor"``, ``"accuracy"`` (top-1), ``"gflops"``
    (``models.flops_per_image`` / 1e9 at that factor, with ``moe.k`` replaced by ``k`` when given: it counts
    the E x C expert buffers allocated, filled or not), ``"expert_gflops"`` (the expert MLP FLOPs actually
    used: kept token-choices x 2 x 2DH, mean over images, / 1e9), ``"dropped_fraction"`` (mean over the MoE
    layers) and ``"tokens_per_image"`` (kept token-choices per image summed over layers, mean).
    """
    moe = _moe_config(model)
    if moe.router == "soft":
        expected = "a top_k or expert_choice model (Soft MoE has no capacity dial)"
        fail("model", f"<Soft MoE {model.config.name}>", expected)
    if isinstance(capacity_factors, numbers.Real) or len(capacity_factors) == 0:
        fail("capacity_factors", capacity_factors, "a non-empty sequence of numbers > 0")
    factors = [check_number(f"capacity_factors[{i}]", cf) for i, cf in enumerate(capacity_factors)]
    batch_priority = check_bool("batch_priority", batch_priority)
    config = model.config
    if k is not None:
        config = config.replace(moe=dataclasses.replace(moe, k=k))
    labels = _check_labels(labels, len(np.asarray(images)), config.num_classes)
    keys = ("capacity_factor", "accuracy", "gflops", "expert_gflops", "dropped_fraction", "tokens_per_image")
    rows: dict[str, list] = {key: [] for key in keys}
    for cf in factors:
        overrides = dict(capacity_factor=cf, batch_priority=batch_priority, k=k)
        logits, records = route(model, images, batch_size=batch_size, moe_overrides=overrides)
        tokens = compute_per_image(records).mean()
        rows["capacity_factor"].append(cf)
        rows["accuracy"].append(float(np.mean(logits.argmax(axis=1) == labels)))
        rows["gflops"].append(models.flops_per_image(config, capacity_factor=cf) / 1e9)
        rows["expert_gflops"].append(float(tokens) * 2 * 2 * config.width * config.mlp_dim / 1e9)
        rows["dropped_fraction"].append(float(np.mean([r["dropped_fraction"] for r in records.values()])))
        rows["tokens_per_image"].append(float(tokens))
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
    """Check :data:`BPR_CLAIM` against a capacity sweep of one model with vanilla routing and with BPR.

    The reference is the capacity factor ``reference`` if swept, else the highest swept. At each swept
    factor ``<= threshold`` the accuracy *drop* from the reference is measured for both routings. The noise
    scale is twice the binomial standard error of an accuracy on ``num_images`` images at the reference
    (vanilla) accuracy. Verdict:

    - ``"reproduced"``: vanilla drops by more than the noise at the lowest low factor, BPR is at least as
      accurate as vanilla at every low factor, and BPR's mean drop is smaller by more than the noise;
    - ``"contradicted"``: BPR's mean drop is larger than vanilla's by more than the noise;
    - ``"within noise"``: otherwise, when BPR's mean advantage is within the noise either way;
    - ``"not reproduced"``: otherwise (vanilla does not degrade beyond the noise or BPR falls below vanilla
      at some low factor);
    - ``"not tested"``: no swept factor is ``<= threshold``.

    ``numbers``: the reference factor, noise, ``num_images``, ``threshold``, ``mean_gap`` (None when not
    tested) and ``rows``, one per low factor with both drops and ``bpr_minus_vanilla``.
    """
    factors = np.asarray(capacity_factors, np.float64)
    vanilla = np.asarray(vanilla_accuracy, np.float64)
    bpr = np.asarray(bpr_accuracy, np.float64)
    if factors.ndim != 1 or len(factors) == 0 or {vanilla.shape, bpr.shape} != {factors.shape}:
        expected = f"1-D arrays of the shape {factors.shape} of the factors"
        fail("accuracies", (vanilla.shape, bpr.shape), expected)

    num_images = check_int("num_images", num_images)
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
        verdict, why = "reproduced", "BPR holds accuracy where vanilla routing loses it"
    elif mean_gap < -noise:
        verdict, why = "contradicted", "BPR loses more accuracy than vanilla routing"
    elif abs(mean_gap) <= noise:
        verdict, why = "within noise", "BPR's mean advantage is within the noise"
        if not vanilla_degrades:
            why += ", and vanilla routing does not degrade beyond the noise"
    elif not vanilla_degrades:
        verdict, why = "not reproduced", "vanilla routing does not degrade beyond the noise"
    else:
        verdict, why = "not reproduced", "BPR falls below vanilla routing at some low capacity factor"
    drops = "; ".join(
        f"capacity factor {r['capacity_factor']:g}: vanilla {0.0 - 100 * r['vanilla_drop']:+.1f}, "
        f"BPR {0.0 - 100 * r['bpr_drop']:+.1f}"
        for r in rows
    )
    sentence = (
        f"{verdict.capitalize()} at this scale: {why}. Accuracy change in points from capacity factor "
        f"{factors[ref]:g} (vanilla {100 * vanilla[ref]:.1f}%, BPR {100 * bpr[ref]:.1f}%): {drops}. Mean BPR "
        f"advantage {100 * mean_gap:+.1f} points; noise (2 standard errors on {num_images} images) "
        f"{100 * noise:.1f}."
    )
    return Claim(BPR_CLAIM, verdict, sentence, numbers)


def _top_choices(gates: np.ndarray, combine_weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each token's ``k`` first experts by gate ``[..., K]`` (ties to the lower index) and whether each of
    those choices was kept (combine weight > 0) ``[..., K]``; inputs ``[..., E]`` of one shape."""
    gates, weights = np.asarray(gates, np.float64), np.asarray(combine_weights, np.float64)
    if gates.ndim < 2 or gates.shape != weights.shape:
        fail("combine_weights", f"<array of shape {weights.shape}>", f"the shape of gates {gates.shape}")
    k = routing.check_choices(k, gates.shape[-1])
    chosen = np.argsort(-gates, axis=-1, kind="stable")[..., :k]
    return chosen, np.take_along_axis(weights, chosen, axis=-1) > 0


def expert_demand(gates: np.ndarray, combine_weights: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per expert, the token-choices that asked for it and what became of them: ``"requested"`` ``[E]`` (how
    many tokens have the expert among their ``k`` highest gates), ``"kept"`` ``[E]`` (of those, the ones
    it processed: combine weight > 0) and ``"dropped"`` ``[E]`` (requested - kept: the expert was full).
    Inputs ``[..., E]`` (e.g. a record's ``[B, N, E]``). For top-k routing at test-time ``k``, ``kept``
    is the record's ``"load"``; for expert choice a token's ``k`` best experts need not take it, and for
    Soft MoE every choice is kept."""
    chosen, kept = _top_choices(gates, combine_weights, k)
    E = np.shape(gates)[-1]
    requested = np.bincount(chosen.ravel(), minlength=E).astype(np.int64)
    processed = np.bincount(chosen[kept].ravel(), minlength=E).astype(np.int64)
    return {"requested": requested, "kept": processed, "dropped": requested - processed}


def kept_choices(gates: np.ndarray, combine_weights: np.ndarray, k: int) -> np.ndarray:
    """``[...]``: how many of each token's ``k`` first choices (by gate) an expert processed, 0 to ``k``;
    inputs ``[..., E]``. A patch with 0 got no expert compute in that layer (only the residual path)."""
    return _top_choices(gates, combine_weights, k)[1].sum(axis=-1)


def top_gate_patches(gates: np.ndarray, count: int, *, skip_tokens: int = 0) -> dict[str, np.ndarray]:
    """For each expert, the ``count`` patches of the whole set with the highest gate for that expert (ties
    to the earlier image and patch): ``"image"`` ``[E, count]`` and ``"patch"`` ``[E, count]`` (the patch
    index, rows of patches top to bottom, after the first ``skip_tokens`` tokens, e.g. 1 for a class token)
    and ``"gate"`` ``[E, count]``, each row by descending gate. ``gates``: ``[B, N, E]``."""
    gates = _check_weights("gates", gates)
    skip_tokens = int(skip_tokens)
    patches = gates[:, skip_tokens:]  # [B, P, E]
    B, P, E = patches.shape
    if P == 0:
        fail("skip_tokens", skip_tokens, f"fewer than the {gates.shape[1]} tokens per image")
    count = check_int("count", count)
    if count > B * P:
        fail("count", count, f"an integer in [1, {B * P}] (the patches of the set)")
    flat = patches.reshape(B * P, E)
    order = np.argsort(-flat, axis=0, kind="stable")[:count].T  # [E, count]
    return {
        "image": order // P,
        "patch": order % P,
        "gate": np.take_along_axis(flat.T, order, axis=1),
    }


def foreground_patches(images: np.ndarray, patch_size: int, threshold: float = 24.0) -> np.ndarray:
    """``[B, P]``: whether each patch of ``images`` ``[B, H, W, C]`` (uint8) shows the object rather than the
    background: its mean colour lies more than ``threshold`` (0-255 units, Euclidean over channels) from
    the mean colour of the image's four corner patches, which the embedded datasets leave to the background
    (their objects sit near the centre). Patches in rows, top to bottom."""
    images = np.asarray(images, np.float64)
    B, H, W, C = images.shape
    rows, cols = H // patch_size, W // patch_size
    patches = images.reshape(B, rows, patch_size, cols, patch_size, C).mean(axis=(2, 4))  # [B, rows, cols, C]
    corners = patches[:, [0, 0, -1, -1], [0, -1, 0, -1]].mean(axis=1)  # [B, C]
    distance = np.linalg.norm(patches - corners[:, None, None], axis=-1)
    return (distance > threshold).reshape(B, rows * cols)


def compute_against_looks(
    compute: np.ndarray, images: np.ndarray, patch_size: int | None = None
) -> dict[str, float | None]:
    """Pearson correlation over images of the expert compute each got (``compute`` ``[B]``, e.g. from
    :func:`compute_per_image`) with how it looks: ``"brightness"`` (mean pixel value), ``"contrast"``
    (standard deviation of its pixel values) and, given ``patch_size``, ``"object size"`` (the share of its
    patches that :func:`foreground_patches` calls object); None when either side does not vary. ``images``
    ``[B, H, W, C]``."""
    compute = np.asarray(compute, np.float64)
    images = np.asarray(images)
    if compute.ndim != 1 or len(images) != len(compute) or images.ndim < 2:
        fail("images", f"<array of shape {images.shape}>", f"one image per compute value ({compute.shape})")
    pixels = images.reshape(len(images), -1).astype(np.float64)
    looks = {"brightness": pixels.mean(axis=1), "contrast": pixels.std(axis=1)}
    if patch_size is not None:
        looks["object size"] = foreground_patches(images, patch_size).mean(axis=1)
    result: dict[str, float | None] = {}
    for name, value in looks.items():
        varies = compute.std() > 0 and value.std() > 0
        result[name] = float(np.corrcoef(compute, value)[0, 1]) if varies else None
    return result


def looks_sentence(routing: str, correlations: Mapping[str, float | None]) -> str:
    """One sentence on how ``routing``'s compute per image follows how images look
    (:func:`compute_against_looks`), by the strongest |r|: under 0.3 "barely", under 0.6 "partly", else
    "closely"."""
    known = {name: r for name, r in correlations.items() if r is not None}
    if not known:
        return f"{routing}: every image got the same compute (or looks alike), so there is nothing to relate."
    values = ", ".join(f"{name} r = {r:+.2f}" for name, r in known.items())
    strongest = max(abs(r) for r in known.values())
    how = "barely" if strongest < 0.3 else ("partly" if strongest < 0.6 else "closely")
    follows = f"compute {how} follows {' or '.join(known)}"
    return f"{routing}: compute per image against {values}: {follows}."

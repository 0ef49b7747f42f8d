"""Expert ablation scan: switch each expert of one MoE layer off in turn (:func:`.routes.ablate_expert`) and
measure what accuracy it costs, overall and class by class.

Shape letters: B images, N tokens per image, E experts, Y classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sparse_experts import models
from sparse_experts.analysis import routes
from sparse_experts.routing import fail

# Every ablation moving accuracy by less than this (a fraction) counts as "no single expert matters".
NEGLIGIBLE = 0.005


@dataclasses.dataclass(frozen=True)
class AblationScan:
    """One layer's scan (see :func:`ablation_scan`).

    - ``layer``: the MoE layer; ``accuracy``: top-1 accuracy of the intact model on the images;
    - ``per_expert_change`` ``[E]``: accuracy with expert e off minus ``accuracy`` (fractions);
    - ``per_class_change`` ``[E, Y]``: the same per class (NaN for a class absent from the labels);
    - ``class_counts`` ``[Y]``: images per class.
    """

    layer: int
    accuracy: float
    per_expert_change: np.ndarray
    per_class_change: np.ndarray
    class_counts: np.ndarray

    @property
    def most_costly_expert(self) -> int:
        """The expert whose ablation lowers accuracy the most (the lower index on ties)."""
        return int(np.argmin(self.per_expert_change))


def ablation_scan(
    model: models.ViT,
    images: np.ndarray,
    labels: np.ndarray,
    layer: int,
    *,
    batch_size: int,
    moe_overrides: Mapping[str, Any] | None = None,
    base_logits: np.ndarray | None = None,
    num_classes: int | None = None,
) -> AblationScan:
    """Switch off each expert of MoE ``layer`` in turn and route ``images`` ``[B, S, S, C]`` (in order, in
    batches of ``batch_size``, with ``moe_overrides``: see :func:`sparse_experts.analysis.route`).

    ``labels`` ``[B]`` in ``[0, num_classes)`` (default: the model's ``num_classes``). ``base_logits``
    ``[B, Y]``: the intact model's logits with the same settings, if already computed (else it is routed
    once more). One forward pass per expert; the ablated copies share the intact model's compiled program.
    """
    moe = routes._moe_config(model)
    routes._moe_block(model, layer)  # names the valid layers
    num_classes = model.config.num_classes if num_classes is None else num_classes
    labels = routes._check_labels(labels, len(np.asarray(images)), num_classes)
    if base_logits is None:
        base_logits, _ = routes.route(model, images, batch_size=batch_size, moe_overrides=moe_overrides)
    base_logits = np.asarray(base_logits)
    expected = (len(labels), model.config.num_classes)
    if base_logits.shape != expected:
        fail("base_logits", f"<array of shape {base_logits.shape}>", f"[B={expected[0]}, {expected[1]}]")
    base = base_logits.argmax(1) == labels
    base_per_class = routes.accuracy_per_class(base_logits, labels, num_classes)
    overall, per_class = [], []
    for expert in range(moe.num_experts):
        ablated = routes.ablate_expert(model, layer, expert)
        logits, _ = routes.route(ablated, images, batch_size=batch_size, moe_overrides=moe_overrides)

        overall.append(float(np.mean(logits.argmax(1) == labels) - base.mean()))
        per_class.append(routes.accuracy_per_class(logits, labels, num_classes) - base_per_class)
    return AblationScan(
        layer=int(layer),
        accuracy=float(base.mean()),
        per_expert_change=np.asarray(overall),
        per_class_change=np.asarray(per_class),
        class_counts=np.bincount(labels, minlength=num_classes),
    )


def reliance(combine_weights: np.ndarray, labels: np.ndarray, num_classes: int, expert: int) -> np.ndarray:
    """``[Y]``: the share of each class's routed weight (``combine_weights`` ``[B, N, E]`` summed over its
    images' tokens) that goes to ``expert`` (0 for a class with no weight)."""
    weights = routes._check_weights("combine_weights", combine_weights)
    labels = routes._check_labels(labels, weights.shape[0], num_classes)
    expert = routes._check_index("expert", expert, weights.shape[2], f"E={weights.shape[2]}")
    share = weights.sum(1)  # [B, E]
    to_expert = np.bincount(labels, weights=share[:, expert], minlength=num_classes)
    return to_expert / np.maximum(np.bincount(labels, weights=share.sum(1), minlength=num_classes), 1e-12)


def summary(
    scan: AblationScan,
    expert: int,
    combine_weights: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    model: str,
) -> dict:
    """The numbers and the sentence for switching off ``expert`` in ``scan``'s layer: its overall and
    largest per-class accuracy change, and the class (among those with at least the median number of
    images) that sends it the largest share of its weight (``combine_weights`` ``[B, N, E]`` of that layer,
    ``labels`` ``[B]``). Returns ``sentence``, ``expert``, ``accuracy_change``, ``most_costly_expert``,
    ``per_expert_change``."""
    num = len(class_names)
    if len(scan.class_counts) != num:
        fail("class_names", f"<{num} names>", f"{len(scan.class_counts)} names (the scan's classes)")
    E = len(scan.per_expert_change)
    expert = routes._check_index("expert", expert, E, f"E={E}")
    delta, counts = scan.per_class_change[expert], scan.class_counts
    share = reliance(combine_weights, labels, num, expert)
    eligible = counts >= max(1, np.median(counts[counts > 0]))  # not a class of one or two images
    relied = int(np.argmax(np.where(eligible, share, -1)))
    worst = int(np.nanargmin(delta))
    change, most = float(scan.per_expert_change[expert]), scan.most_costly_expert
    sentence = (
        f"Switching off expert {expert} of {model}'s layer {scan.layer} changes accuracy on these "
        f"{int(counts.sum())} images by {100 * change:+.1f} points ({scan.accuracy:.3f} -> "
        f"{scan.accuracy + change:.3f}). "
    )
    if delta[worst] < 0:
        sentence += (f"The largest per-class drop is {100 * delta[worst]:+.0f} points on "
                     f"'{class_names[worst]}' ({counts[worst]} images). ")  # fmt: skip
    else:
        sentence += "No class loses accuracy. "
    sentence += (
        f"Of the classes with at least the median number of images, the one that sends expert {expert} the "
        f"largest share of its weight is '{class_names[relied]}' ({share[relied]:.0%}, {counts[relied]} "
        f"images); its accuracy changes by {100 * delta[relied]:+.0f} points. "
    )
    if np.abs(scan.per_expert_change).max() < NEGLIGIBLE:
        sentence += ("No single expert matters much in this layer (every ablation moves accuracy by under "
                     "half a point): the residual path and the other experts carry the tokens.")  # fmt: skip
    else:
        sentence += (f"Of all experts in this layer, switching off expert {most} changes accuracy the most "
                     f"({100 * scan.per_expert_change[most]:+.1f} points).")  # fmt: skip
    return dict(sentence=sentence, expert=expert, accuracy_change=change, most_costly_expert=most,
                per_expert_change=[float(d) for d in scan.per_expert_change])  # fmt: skip

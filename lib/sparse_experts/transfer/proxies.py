"""Cheap proxies that pick an expert model for a downstream task without fine-tuning (Puigcerver et al. 2021).

Candidates are the generalist (trained on all upstream classes) and one expert model per upstream family.
Three proxies, each a function of the task's training images only:

- kNN accuracy on each candidate's frozen features (:func:`sparse_experts.transfer.knn_accuracy`): the
  paper's proxy; the candidate with the highest accuracy is picked.
- Domain prediction (:func:`family_mass`, :func:`domain_pick`): the generalist's upstream class
  probabilities on the task's images, summed per family and averaged over the images; the family with the
  most mass picks its expert, unless that mass is below ``min_share`` (then no family stands out and the
  generalist is kept).
- Routing signature (beyond the paper; :func:`routing_histograms`, :func:`routing_pick`): a V-MoE routes
  every token anyway. An image's signature is, per MoE layer, the share of its tokens whose top-1 expert is
  e; a set's signature is the mean over its images. The task's signature is compared with each upstream
  family's and with the whole upstream set's by the Jensen-Shannon divergence (natural log, averaged over
  the MoE layers); the closest family picks its expert, unless the whole upstream set is at least as close
  (then the generalist is kept).

Shapes: N images, T tokens per image, Y upstream classes, F families, L MoE layers, E experts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sparse_experts.routing import fail


def _array(name: str, value, ndim: int, axes: str) -> np.ndarray:
    array = np.asarray(value, np.float64)
    if array.ndim != ndim or array.size == 0 or not np.all(np.isfinite(array)):
        fail(name, f"<array of shape {array.shape}>", f"a finite, non-empty array [{axes}]")
    return array


def family_mass(upstream_probs, fine_to_coarse: Sequence[int]) -> np.ndarray:
    """Mean over the images of each family's summed upstream probability: ``upstream_probs [N, Y]`` (rows
    summing to 1), ``fine_to_coarse [Y]`` the family of each class -> ``[F]`` summing to 1."""
    probs = _array("upstream_probs", upstream_probs, 2, "N, Y")
    families = np.asarray(fine_to_coarse)
    if families.shape != (probs.shape[1],) or families.min() < 0:
        fail("fine_to_coarse", list(families), f"{probs.shape[1]} non-negative family indices, one per class")
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4) or probs.min() < 0:
        fail("upstream_probs", "<rows>", "rows of probabilities (non-negative, summing to 1)")
    mass = np.zeros(int(families.max()) + 1)
    np.add.at(mass, families, probs.mean(axis=0))
    return mass


def domain_pick(mass, min_share: float) -> int | None:
    """The family with the most ``mass [F]``, or None (keep the generalist) when that mass is below
    ``min_share``; ties go to the lower index."""
    mass = _array("mass", mass, 1, "F")
    if not 0 <= min_share <= 1:
        fail("min_share", min_share, "a share in [0, 1]")
    best = int(np.argmax(mass))
    return best if mass[best] >= min_share else None


def routing_histograms(gates: Mapping[int, np.ndarray]) -> np.ndarray:
    """Per image and MoE layer, the share of its tokens whose top-1 expert is e: ``gates`` {layer: [N, T, E]}
    (a routing record's gates, layers in index order) -> ``[N, L, E]``, each [e] row summing to 1."""
    if not gates:
        fail("gates", "{}", "routing records of at least one MoE layer")
    out = []
    for layer in sorted(gates):
        g = _array(f"gates[{layer}]", gates[layer], 3, "N, T, E")
        top = g.argmax(axis=-1)  # [N, T]
        counts = (top[..., None] == np.arange(g.shape[-1])).sum(axis=1)
        out.append(counts / g.shape[1])
    shapes = {h.shape for h in out}
    if len(shapes) != 1:
        fail("gates", f"<layers of shapes {sorted(shapes)}>", "one [N, T, E] shape for every layer")
    return np.stack(out, axis=1)


def js_divergence(p, q) -> np.ndarray:
    """Jensen-Shannon divergence (nats) of distributions over the last axis, broadcast: in [0, log 2]."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    m = (p + q) / 2

    def kl(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, a * np.log(a / b), 0.0).sum(axis=-1)

    return (kl(p, m) + kl(q, m)) / 2


def routing_pick(task_signature, family_signatures, upstream_signature) -> tuple[np.ndarray, int | None]:
    """``(divergence [F], pick)``: the mean over layers of the JS divergence between the task's signature
    ``[L, E]`` and each family's ``[F, L, E]``; pick is the closest family, or None (keep the generalist)
    when the whole upstream set's signature ``[L, E]`` is at least as close."""
    task = _array("task_signature", task_signature, 2, "L, E")
    families = _array("family_signatures", family_signatures, 3, "F, L, E")
    upstream = _array("upstream_signature", upstream_signature, 2, "L, E")
    if families.shape[1:] != task.shape or upstream.shape != task.shape:
        fail("family_signatures", f"<shape {families.shape}>", f"[F, {task.shape[0]}, {task.shape[1]}]")
    divergence = js_divergence(task[None], families).mean(axis=-1)
    best = int(np.argmin(divergence))
    baseline = float(js_divergence(task, upstream).mean())
    return divergence, (best if divergence[best] < baseline else None)


def family_signatures(histograms, families, num_families: int) -> np.ndarray:
    """Mean signature of each family's images: ``histograms [N, L, E]``, ``families [N]`` -> ``[F, L, E]``
    (a family without images raises)."""
    h = _array("histograms", histograms, 3, "N, L, E")
    labels = np.asarray(families)
    if labels.shape != (len(h),):
        fail("families", f"<array of shape {labels.shape}>", f"[{len(h)}] family indices")
    missing = [f for f in range(num_families) if not np.any(labels == f)]
    if missing:
        fail(
            "families", f"<no images of families {missing}>", f"images of every family 0..{num_families - 1}"
        )
    return np.stack([h[labels == f].mean(axis=0) for f in range(num_families)])

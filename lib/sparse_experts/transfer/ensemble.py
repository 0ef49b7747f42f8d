"""Ensembles of classifiers: greedy forward selection of members, and the metrics that score an ensemble.

:func:`greedy_ensemble` picks members by forward selection without replacement (Caruana et al., "Ensemble
Selection from Libraries of Models", ICML 2004), minimising the negative log-likelihood of the averaged
probabilities; :func:`average` forms that average; :func:`nll`, :func:`accuracy` and :func:`ece` (expected
calibration error, Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) score it.

Shape glossary (shared with :mod:`sparse_experts.transfer.ranking`): M members, N examples, C classes.

Inputs are numpy or jax arrays, computed in float64 numpy; results are Python ``float`` / ``list[int]``.
Probabilities are non-negative, finite, and each row sums to 1 within
:data:`~sparse_experts.transfer.ranking.PROBABILITY_TOLERANCE`; labels are integers in [0, C). Bad input
raises ValueError naming the argument, its value or shape, and what is valid.
"""

from __future__ import annotations

import numpy as np

from sparse_experts.transfer.ranking import _labels, _positive_int, _probabilities

LOG_EPSILON = 1e-12
"""Probabilities are clipped below at this value inside the log of :func:`nll` and :func:`greedy_ensemble`,
so a confidently wrong member costs -log(1e-12) ~ 27.6 nats per example instead of infinity."""


def _member_probs(value) -> np.ndarray:
    return _probabilities("member_probs", value, 3, "[members, examples, classes]")


def _probs(value) -> np.ndarray:
    return _probabilities("probs", value, 2, "[examples, classes]")


def _mean_nll(true_class_probs: np.ndarray) -> float:
    """Mean of -log(max(p, LOG_EPSILON)) over ``true_class_probs [N]``."""
    return float(-np.mean(np.log(np.maximum(true_class_probs, LOG_EPSILON))))


def nll(probs, labels) -> float:
    """Mean negative log-likelihood -(1/N) sum_i log max(probs[i, labels[i]], :data:`LOG_EPSILON`) of
    ``probs [N, C]`` for ``labels [N]``, in nats."""
    p = _probs(probs)
    y = _labels("labels", labels, len(p), "probs", classes=p.shape[1])
    return _mean_nll(p[np.arange(len(p)), y])


def accuracy(probs, labels) -> float:
    """Fraction of ``labels [N]`` equal to the argmax of ``probs [N, C]`` (a tie goes to the lower class)."""
    p = _probs(probs)
    y = _labels("labels", labels, len(p), "probs", classes=p.shape[1])
    return float(np.mean(p.argmax(axis=1) == y))


def ece(probs, labels, bins: int = 15) -> float:
    """Expected calibration error of ``probs [N, C]`` for ``labels [N]``: sum over ``bins`` equal-width
    bins of the top-class confidence of (examples in the bin / N) * |accuracy - mean confidence| in it.

    Bin b holds confidences in (b / bins, (b + 1) / bins] (edges ``np.linspace(0, 1, bins + 1)``; a
    confidence exactly on an edge goes to the bin below it, 1.0 to the last bin). The prediction is the
    argmax (a tie goes to the lower class). In [0, 1]; 0 for a perfectly calibrated classifier.
    """
    p = _probs(probs)
    y = _labels("labels", labels, len(p), "probs", classes=p.shape[1])
    bins = _positive_int("bins", bins)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (lo, hi]
    gap = np.bincount(which, weights=correct, minlength=bins) - np.bincount(
        which, weights=confidence, minlength=bins
    )
    return float(np.sum(np.abs(gap)) / len(p))  # sum_b (n_b / N) |acc_b - conf_b| = sum_b |sum over b| / N


def average(member_probs, indices) -> np.ndarray:
    """The mean of ``member_probs [M, N, C]`` over the members ``indices`` (a non-empty sequence of ints in
    [0, M); a repeated index counts as often as it appears): probabilities [N, C] in float64."""
    p = _member_probs(member_probs)
    chosen = np.asarray(indices)
    if chosen.ndim != 1 or len(chosen) == 0 or not np.issubdtype(chosen.dtype, np.integer):
        raise ValueError(f"indices must be a non-empty 1-D sequence of member indices, got {indices!r}")
    if (chosen < 0).any() or (chosen >= len(p)).any():
        raise ValueError(
            f"indices={chosen.tolist()} out of range: member_probs has {len(p)} members, [0, {len(p)})"
        )
    return p[chosen].mean(axis=0)


def greedy_ensemble(member_probs, labels, max_size: int) -> list[int]:
    """Members of ``member_probs [M, N, C]`` chosen by greedy forward selection, in the order added.

    Start from the member with the lowest :func:`nll` on ``labels [N]``; then repeatedly add the unused
    member whose inclusion gives the lowest NLL of the equally weighted average of the chosen members'
    probabilities, if that NLL is strictly lower than the current one. Stop when no member lowers it or at
    ``max_size`` members. Ties go to the lower index. Log-probabilities are clipped at
    :data:`LOG_EPSILON`.

    Raises ValueError for a wrong ndim, NaN/inf, negative or unnormalised probabilities, lengths that
    disagree, labels outside [0, C) or ``max_size < 1``.
    """
    p = _member_probs(member_probs)
    y = _labels("labels", labels, p.shape[1], "member_probs", classes=p.shape[2])
    max_size = _positive_int("max_size", max_size)
    true_class = p[:, np.arange(len(y)), y]  # [M, N]: the NLL of an average needs only these
    losses = [_mean_nll(member) for member in true_class]
    chosen = [int(np.argmin(losses))]  # argmin: the first of equal losses
    best = losses[chosen[0]]
    total = true_class[chosen[0]].copy()
    while len(chosen) < min(max_size, len(p)):
        candidates = [m for m in range(len(p)) if m not in chosen]
        losses = [_mean_nll((total + true_class[m]) / (len(chosen) + 1)) for m in candidates]
        pick = int(np.argmin(losses))
        if not losses[pick] < best:
            break
        chosen.append(candidates[pick])
        best = losses[pick]
        total += true_class[candidates[pick]]
    return chosen

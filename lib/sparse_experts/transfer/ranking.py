"""Cheap transferability estimators: how well will a pre-trained model transfer to a target task?

Each estimator scores one (model, target task) pair from the model's outputs on the target examples, with no
fine-tuning; a higher score predicts better transfer. They rank candidate models; only :func:`knn_accuracy`
is itself an accuracy.

- :func:`knn_accuracy`: accuracy of a k-nearest-neighbour classifier on the features (leave-one-out, or fit
  on one set and scored on another); a non-parametric probe.
- :func:`logme`: LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer
  Learning", ICML 2021): the log marginal likelihood per example of a Bayesian linear regression from the
  features to each one-vs-rest class target, with its prior and noise precisions set by evidence
  maximisation, averaged over classes.
- :func:`leep`: LEEP (Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned
  Representations", ICML 2020): the mean log-likelihood of the target labels under the "expected empirical
  predictor", the source model's predicted distribution over its own classes mapped to target classes by
  the empirical conditional P(y | z).
- :func:`nce`: NCE (Tran et al., "Transferability and Hardness of Supervised Classification Tasks", ICCV
  2019): the negative conditional entropy -H(Y | Z) of the target labels given the source model's hard
  labels; 0 when the source label determines the target label.
- :func:`h_score`: H-score (Bao et al., "An Information-theoretic Approach to Transferability in Task
  Transfer Learning", ICIP 2019): tr(cov(f)^-1 cov(E[f | y])), how much of the feature variance lies
  between the class means.

Shape glossary: N examples (N_eval of an evaluation set), D features, Y target classes, Z source classes
(the pre-trained model's own label space), M ensemble members and C classes (in
:mod:`sparse_experts.transfer.ensemble`).

Conventions: inputs are numpy or jax arrays; computation is numpy in float64; scores come back as Python
``float``. Labels are non-negative integer class indices; ``Y`` (or ``Z``) is the largest label + 1, so a
class index that never occurs is allowed. Bad input raises ValueError naming the argument, its value or
shape, and what is valid.
"""

from __future__ import annotations

import numbers

import numpy as np

METRICS = ("euclidean", "cosine")
"""Distances :func:`knn_accuracy` knows: squared Euclidean (ranks like Euclidean) and 1 - cosine."""

CHUNK_ROWS = 1024
"""Evaluation points whose distances :func:`knn_accuracy` holds at once (the rows of a distance chunk) ..."""

CHUNK_ELEMENTS = 2**22
"""... and at most this many distances per chunk (32 MiB of float64), whichever is fewer rows."""

PROBABILITY_TOLERANCE = 1e-3
"""How far from 1 a row of probabilities may sum (float32 softmax outputs sum to 1 only to ~1e-6)."""

LOGME_EPSILON = 1e-5
"""Added to |m|^2 and |y - F m|^2 in LogME's updates and evidence, as the official ICML code does."""

LOGME_MAX_UPDATES = 11
"""At most this many evidence-maximisation updates per class (the official code's cap)."""

LOGME_RELATIVE_TOLERANCE = 0.01
"""LogME stops when alpha / beta changes by less than this fraction (the official code's 1%)."""

_ZERO_DISTANCE = 1e-12
"""Distances within this fraction of the squared norms are rounding noise and count as exactly 0."""


# ----------------------------------------------------------------------------------------------------------
# Input checks (shared with ensemble.py)
# ----------------------------------------------------------------------------------------------------------


def _real_array(name: str, value, ndim: int, axes: str) -> np.ndarray:
    """``value`` as a finite float64 array of ``ndim`` dimensions, none empty; ``axes`` names them."""
    x = np.asarray(value)
    if x.ndim != ndim or 0 in x.shape:
        raise ValueError(f"{name} must be a non-empty {ndim}-D array {axes}, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype={x.dtype}")
    x = x.astype(np.float64)
    finite = np.isfinite(x)
    if not finite.all():
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise ValueError(
            f"{name} holds {int((~finite).sum())} NaN/inf values (first at {list(first)}: {x[first]}); "
            "every value must be finite"
        )
    return x


def _features(name: str, value) -> np.ndarray:
    """``value`` as finite float64 features [N, D]."""
    return _real_array(name, value, 2, "[examples, features]")


def _probabilities(name: str, value, ndim: int, axes: str) -> np.ndarray:
    """``value`` as float64 probabilities: finite, non-negative, each row (last axis) summing to 1."""
    p = _real_array(name, value, ndim, axes)
    if (p < 0).any():
        first = tuple(int(i) for i in np.argwhere(p < 0)[0])
        raise ValueError(f"{name} holds negative probabilities (first at {list(first)}: {p[first]})")
    error = np.abs(p.sum(axis=-1) - 1.0)
    if (error > PROBABILITY_TOLERANCE).any():
        first = tuple(int(i) for i in np.unravel_index(np.argmax(error), error.shape))
        raise ValueError(
            f"{name} rows must sum to 1 within {PROBABILITY_TOLERANCE} (probabilities over the last axis); "
            f"row {list(first)} sums to {float(p[first].sum())!r}"
        )
    return p


def _labels(name: str, value, count: int | None, other: str, classes: int | None = None) -> np.ndarray:
    """``value`` as non-empty int64 labels [count] (``count`` is the length of the array named ``other``;
    None: any length), each in [0, classes) when ``classes`` is given, else non-negative."""
    y = np.asarray(value)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of class indices, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype={y.dtype}")
    if count is not None and len(y) != count:
        raise ValueError(
            f"{name} has {len(y)} labels but {other} has {count} examples: the lengths must agree"
        )
    y = y.astype(np.int64)
    if (y < 0).any():
        raise ValueError(f"{name} holds negative labels (min {int(y.min())}); labels must be >= 0")
    if classes is not None and (y >= classes).any():
        raise ValueError(
            f"{name} holds label {int(y.max())}, out of range for {other} with {classes} classes; "
            f"labels must be in [0, {classes})"
        )
    return y


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r} is not allowed; expected an integer >= 1")
    return int(value)


# ----------------------------------------------------------------------------------------------------------
# k-nearest neighbours
# ----------------------------------------------------------------------------------------------------------


def _unit_rows(name: str, x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1)
    if (norms == 0).any():
        raise ValueError(
            f"{name} row {int(np.argmin(norms))} is all zeros: the cosine distance needs non-zero vectors"
        )
    return x / norms[:, None]


def _distances(queries: np.ndarray, points: np.ndarray, metric: str) -> np.ndarray:
    """Distances [R, N] from ``queries [R, D]`` to ``points [N, D]``: squared Euclidean, or 1 - cosine for
    unit rows. Values within rounding of 0 are exactly 0, so exact duplicates tie at 0."""
    if metric == "cosine":
        distance = 1.0 - queries @ points.T
        scale = 2.0
    else:
        query_norms = np.einsum("rd,rd->r", queries, queries)[:, None]
        point_norms = np.einsum("nd,nd->n", points, points)[None, :]
        scale = query_norms + point_norms
        distance = scale - 2.0 * (queries @ points.T)
    distance[distance <= _ZERO_DISTANCE * scale] = 0.0
    return distance


def _nearest(distance: np.ndarray, k: int) -> np.ndarray:
    """Indices [R, k] of the k smallest distances in each row of ``distance [R, N]``, equal distances to the
    lower index (the first k of a stable sort, in some order)."""
    nearest = np.argpartition(distance, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(distance, nearest, axis=1).max(axis=1, keepdims=True)
    # argpartition breaks ties at the k-th distance arbitrarily: redo the (rare) rows with such ties.
    for row in np.flatnonzero((distance <= kth).sum(axis=1) > k):
        closer = np.flatnonzero(distance[row] < kth[row])
        tied = np.flatnonzero(distance[row] == kth[row])[: k - len(closer)]
        nearest[row] = np.concatenate([closer, tied])
    return nearest


def knn_accuracy(
    features,
    labels,
    k: int = 1,
    metric: str = "euclidean",
    eval_features=None,
    eval_labels=None,
) -> float:
    """Accuracy of a k-nearest-neighbour classifier on ``features [N, D]`` with ``labels [N]``.

    Without ``eval_features [N_eval, D]`` and ``eval_labels [N_eval]``: leave-one-out over the given set,
    each example classified by its k nearest *other* examples (itself excluded by index, so an exact
    duplicate is a neighbour at distance 0). With them: the classifier holds the first set and scores the
    evaluation set. The prediction is the majority label of the k neighbours, a tie between classes going
    to the smallest label; among equal distances the lower index is nearer.

    ``metric``: "euclidean" or "cosine" (distance 1 - cos, rows must be non-zero). Euclidean distances are
    computed as |a|^2 + |b|^2 - 2 a.b in float64, and distances within 1e-12 of the squared norms count as
    0; equal distances are then exactly equal for exactly representable inputs (small integers), while
    nearly equal ones may be ordered by rounding. Memory is bounded: evaluation points go through in chunks
    of at most :data:`CHUNK_ROWS` rows and :data:`CHUNK_ELEMENTS` distances, so N = 20,000 fits.

    Raises ValueError for shapes or lengths that disagree, NaN/inf features, negative or non-integer labels,
    ``k < 1``, ``k >= N`` in leave-one-out (``k > N`` with an evaluation set), an unknown ``metric``, or
    only one of ``eval_features`` / ``eval_labels``.
    """
    points = _features("features", features)
    point_labels = _labels("labels", labels, len(points), "features")
    k = _positive_int("k", k)
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is unknown; expected one of {METRICS}")
    if (eval_features is None) != (eval_labels is None):
        raise ValueError(
            "eval_features and eval_labels go together: pass both (score the evaluation set) or neither "
            "(leave-one-out over features)"
        )
    leave_one_out = eval_features is None
    if leave_one_out:
        queries, query_labels = points, point_labels
        if k >= len(points):
            raise ValueError(
                f"k={k} is too large for leave-one-out over {len(points)} examples in features: each example "
                f"has {len(points) - 1} others, so k must be in [1, {len(points) - 1}]"
            )
    else:
        queries = _features("eval_features", eval_features)
        query_labels = _labels("eval_labels", eval_labels, len(queries), "eval_features")
        if queries.shape[1] != points.shape[1]:
            raise ValueError(
                f"eval_features has {queries.shape[1]} features per example but features has "
                f"{points.shape[1]}: they must come from the same model"
            )
        if k > len(points):
            raise ValueError(
                f"k={k} exceeds the {len(points)} examples in features; k must be in [1, {len(points)}]"
            )
    if metric == "cosine":
        points = _unit_rows("features", points)
        queries = points if leave_one_out else _unit_rows("eval_features", queries)

    classes = int(point_labels.max()) + 1
    rows_per_chunk = int(np.clip(CHUNK_ELEMENTS // len(points), 1, CHUNK_ROWS))
    correct = 0
    for start in range(0, len(queries), rows_per_chunk):
        stop = min(start + rows_per_chunk, len(queries))
        distance = _distances(queries[start:stop], points, metric)
        if leave_one_out:
            rows = np.arange(stop - start)
            distance[rows, rows + start] = np.inf
        neighbour_labels = point_labels[_nearest(distance, k)]  # [R, k]
        offsets = np.arange(stop - start)[:, None] * classes
        votes = np.bincount((offsets + neighbour_labels).ravel(), minlength=(stop - start) * classes)
        predictions = votes.reshape(stop - start, classes).argmax(axis=1)  # ties: the smallest label
        correct += int((predictions == query_labels[start:stop]).sum())
    return correct / len(queries)


# ----------------------------------------------------------------------------------------------------------
# LogME
# ----------------------------------------------------------------------------------------------------------


def _class_evidence(
    features: np.ndarray, target: np.ndarray, eigenvalues: np.ndarray, eigenvectors: np.ndarray
) -> float:
    """Maximum log evidence per example of the Bayesian linear regression ``target [N] ~ features [N, D] m``
    with prior m ~ N(0, 1/alpha) and noise N(0, 1/beta), alpha and beta found by MacKay's fixed point
    iteration; ``eigenvalues [D]`` and ``eigenvectors [D, D]`` decompose features^T features."""
    n, d = features.shape
    projected = eigenvectors.T @ (features.T @ target)  # [D]: F^T y in the eigenbasis of F^T F
    alpha, beta = 1.0, 1.0
    ratio = alpha / beta
    for _ in range(LOGME_MAX_UPDATES):
        effective_parameters = float(np.sum(eigenvalues / (eigenvalues + ratio)))  # gamma
        mean = eigenvectors @ (projected * beta / (alpha + beta * eigenvalues))  # posterior mean m [D]
        weight_norm = float(mean @ mean)
        residual = float(np.sum((target - features @ mean) ** 2))
        alpha = effective_parameters / (weight_norm + LOGME_EPSILON)
        beta = (n - effective_parameters) / (residual + LOGME_EPSILON)
        new_ratio = alpha / beta
        if abs(new_ratio - ratio) / ratio < LOGME_RELATIVE_TOLERANCE:
            break
        ratio = new_ratio
    # As in the official code, the evidence takes the last alpha, beta with the m that produced them.
    evidence = (
        d / 2.0 * np.log(alpha)
        + n / 2.0 * np.log(beta)
        - 0.5 * np.sum(np.log(alpha + beta * eigenvalues))
        - beta / 2.0 * (residual + LOGME_EPSILON)
        - alpha / 2.0 * (weight_norm + LOGME_EPSILON)
        - n / 2.0 * np.log(2.0 * np.pi)
    )
    return float(evidence) / n


def logme(features, labels) -> float:
    """LogME of ``features [N, D]`` for ``labels [N]``: the mean over classes y = 0 .. Y-1 of the maximum
    log evidence per example of a Bayesian linear regression from the features to the one-vs-rest target
    1[label == y] (You et al., ICML 2021). Higher is better.

    This is the ICML paper's algorithm as its official code computes it (thuml/LogME, ``LogME._fit_icml``
    and ``each_evidence``): an eigendecomposition of F^T F [D, D] once, then per class at most
    :data:`LOGME_MAX_UPDATES` updates of gamma = sum s / (s + alpha/beta), the posterior mean m,
    alpha = gamma / (|m|^2 + 1e-5) and beta = (N - gamma) / (|y - F m|^2 + 1e-5) from alpha = beta = 1,
    stopping when alpha/beta changes by less than 1%; the evidence keeps the same 1e-5 terms. It is not the
    later fixed-point variant that ``LogME.fit`` runs by default. N <= D is allowed (F^T F is then
    singular; its zero eigenvalues drop out of gamma).

    Raises ValueError for NaN/inf features, lengths that disagree or negative / non-integer labels.
    """
    x = _features("features", features)
    y = _labels("labels", labels, len(x), "features")
    eigenvalues, eigenvectors = np.linalg.eigh(x.T @ x)
    eigenvalues = np.maximum(eigenvalues, 0.0)  # F^T F is positive semi-definite; drop rounding below 0
    classes = int(y.max()) + 1
    evidences = [
        _class_evidence(x, (y == c).astype(np.float64), eigenvalues, eigenvectors) for c in range(classes)
    ]
    return float(np.mean(evidences))


# ----------------------------------------------------------------------------------------------------------
# LEEP, NCE, H-score
# ----------------------------------------------------------------------------------------------------------


def leep(source_probs, labels) -> float:
    """LEEP of ``source_probs [N, Z]`` (row i: the source model's predicted distribution theta(x_i) over its
    Z classes) for target ``labels [N]`` (Nguyen et al., ICML 2020).

    The empirical joint P(y, z) = (1/N) sum_{i: y_i = y} theta(x_i)_z gives P(y | z) = P(y, z) / P(z), and
    LEEP = (1/N) sum_i log sum_z P(y_i | z) theta(x_i)_z, a log-likelihood <= 0; higher is better. A source
    class with zero probability on every example has no P(y | z); it contributes nothing (the official code
    returns NaN there). Rows are used as given, not renormalised.

    Raises ValueError for a wrong ndim, NaN/inf or negative probabilities, rows that do not sum to 1 within
    :data:`PROBABILITY_TOLERANCE`, lengths that disagree or negative / non-integer labels.
    """
    theta = _probabilities("source_probs", source_probs, 2, "[examples, source classes]")
    y = _labels("labels", labels, len(theta), "source_probs")
    joint = np.zeros((int(y.max()) + 1, theta.shape[1]))  # P(y, z) [Y, Z]
    np.add.at(joint, y, theta / len(theta))
    marginal = joint.sum(axis=0)  # P(z) [Z]
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)  # P(y | z)
    expected_empirical = np.sum(theta * conditional[y], axis=1)  # [N], > 0 (each theta_z > 0 adds P(y|z) > 0)
    return float(np.mean(np.log(expected_empirical)))


def nce(source_labels, target_labels) -> float:
    """NCE of the source model's hard labels ``source_labels [N]`` (in [0, Z)) for ``target_labels [N]``
    (in [0, Y)) (Tran et al., ICCV 2019): -H(Y | Z) = sum_{y, z} P(y, z) log P(y | z) over the empirical
    joint of the pairs (0 log 0 = 0). At most 0, which it reaches when the source label determines the
    target label; higher is better.

    Raises ValueError for lengths that disagree, a wrong ndim or negative / non-integer labels.
    """
    z = _labels("source_labels", source_labels, None, "")
    y = _labels("target_labels", target_labels, len(z), "source_labels")
    joint = np.zeros((int(y.max()) + 1, int(z.max()) + 1))  # P(y, z) [Y, Z]
    np.add.at(joint, (y, z), 1.0 / len(y))
    marginal = joint.sum(axis=0, keepdims=True)  # P(z) [1, Z]
    present = joint > 0
    return float(np.sum(joint[present] * np.log((joint / np.where(marginal > 0, marginal, 1.0))[present])))


def h_score(features, labels) -> float:
    """H-score of ``features [N, D]`` for ``labels [N]`` (Bao et al., ICIP 2019):
    tr(cov(f)^+ cov(g)), where g_i = E[f | y_i] is the mean feature of example i's class. It is the
    Fisher-style ratio of between-class to total feature variance summed over directions, in
    [0, min(D, Y - 1)] (the total covariance is the within-class plus the between-class one); higher is
    better.

    Conventions as Transfer-Learning-Library's ``tllib.ranking.h_score``: covariances normalised by N - 1
    (``np.cov``), and the Moore-Penrose pseudo-inverse with cut-off 1e-15 relative to the largest singular
    value, so a constant or duplicated feature is harmless.

    Raises ValueError when N <= D (cov(f) is then singular, and the score degenerate), for NaN/inf
    features, lengths that disagree or negative / non-integer labels.
    """
    x = _features("features", features)
    y = _labels("labels", labels, len(x), "features")
    n, d = x.shape
    if n <= d:
        raise ValueError(
            f"features has shape {x.shape}: N={n} examples <= D={d} features, so cov(features) is singular; "
            "the H-score needs more examples than features"
        )
    present, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    class_means = np.zeros((len(present), d))
    np.add.at(class_means, inverse, x)
    class_means /= counts[:, None]
    centred_features = x - x.mean(axis=0)
    conditional = class_means[inverse]  # g [N, D]
    centred_conditional = conditional - conditional.mean(axis=0)
    cov_features = centred_features.T @ centred_features / (n - 1)
    cov_conditional = centred_conditional.T @ centred_conditional / (n - 1)
    return float(np.trace(np.linalg.pinv(cov_features, rcond=1e-15) @ cov_conditional))

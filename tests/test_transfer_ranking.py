"""Tests of sparse_experts.transfer.ranking: LogME, LEEP, NCE and H-score against numbers from the papers'
official code on independent synthetic cases, hand-checkable kNN cases plus a brute-force kNN, and every
ValueError path."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from sparse_experts.transfer import ranking

# ----------------------------------------------------------------------------------------------------------
# Reference values from the official implementations
# ----------------------------------------------------------------------------------------------------------
# How the literals below were produced (numpy 2.4.6, numba 0.68.1, scikit-learn 1.9.1, Python 3.11, in a
# scratch virtual environment; the official code was run, never copied into this repository):
# - LOGME_REFERENCE: github.com/thuml/LogME at commit 56551ca94a3295bcc37e6a01b1291911af985f07 (LogME.py last
#   changed in 3a0895084badc924dce3eb049580100bf7258f42), `LogME()._fit_icml(features, labels)` (the ICML
#   2021 algorithm with its numba `each_evidence`; not the default `LogME.fit`, which runs the later
#   fixed-point variant `_fit_fixed_point`). First value: `labels` as generated; second: class 1 moved to
#   the unused index `classes` (`np.where(labels == 1, classes, labels)`), so class 1 is an all-zero target.
# - H_SCORE_REFERENCE: github.com/thuml/Transfer-Learning-Library at commit
#   c4aa59eb565650a552b809411601d0589efbbfe4, `tllib.ranking.hscore.h_score(features, labels)` (the plain
#   H-score, not `regularized_h_score`).
# - LEEP_REFERENCE and NCE_REFERENCE: thuml/LogME (same commit) `LEEP.LEEP(source_probs, labels)` and
#   `NCE.NCE(source_probs.argmax(1), labels)`; Transfer-Learning-Library (same commit)
#   `log_expected_empirical_prediction` and `negative_conditional_entropy` gave bit-identical values.
# Inputs come from `_feature_case` / `_source_case` below with the arguments in FEATURE_CASES / SOURCE_CASES.

FEATURE_CASES = {  # name: (seed, N, D, classes, separation, offset)
    "strong": (0, 120, 16, 4, 3.0, 0.0),  # well separated classes
    "weak": (1, 200, 32, 5, 0.0, 0.0),  # no class structure at all
    "mild_shifted": (2, 60, 8, 3, 0.5, 2.0),  # weak structure, features not centred
    "wide": (3, 24, 32, 3, 1.0, 0.0),  # N < D: F^T F singular (LogME only)
    "square": (4, 32, 32, 2, 1.0, 0.5),  # N == D (LogME only)
}
SOURCE_CASES = {  # name: (seed, N, Z, classes, coupling)
    "strong": (10, 150, 10, 4, 3.0),  # the source prediction tells the target class well (8 of 10 z used)
    "weak": (11, 200, 12, 3, 0.0),  # source prediction independent of the target class
    "mild": (12, 80, 6, 5, 1.0),
    "sparse_sources": (13, 60, 40, 3, 2.0),  # many source classes, 15 of 40 used as hard labels
}
LOGME_REFERENCE = {  # (labels as generated, class 1 moved to an unused index)
    "strong": (0.7497816484631843, 1.831952882362804),
    "weak": (-0.6100155456868829, 0.5498627287937846),
    "mild_shifted": (-0.5284911599159647, 1.0737702248920116),
    "wide": (-0.1810363464618995, 0.8832819976546371),
    "square": (-0.12272005896334814, 1.3580676849051219),
}
H_SCORE_REFERENCE = {
    "strong": 2.915310396733358,
    "weak": 0.654965575845805,
    "mild_shifted": 1.0445615052020019,
}
LEEP_REFERENCE = {
    "strong": -0.438874903763709,
    "weak": -1.0800594956745682,
    "mild": -1.2752540313758947,
    "sparse_sources": -0.2643696132355781,
}
NCE_REFERENCE = {
    "strong": -0.39748193499591644,
    "weak": -1.0077579981476337,
    "mild": -1.05944848854842,
    "sparse_sources": -0.05608430558410472,
}
RTOL = 1e-8


def _feature_case(seed: int, n: int, d: int, classes: int, separation: float, offset: float):
    """Features [n, d] (float64): ``separation`` x a standard normal centre per class + unit normal noise +
    ``offset``; labels [n] uniform in [0, classes)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, d))
    return separation * centres[labels] + rng.normal(size=(n, d)) + offset, labels


def _source_case(seed: int, n: int, z: int, classes: int, coupling: float):
    """Source probabilities [n, z]: softmax of ``coupling`` x a standard normal logit vector per target
    class + unit normal noise; target labels [n] uniform in [0, classes)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = coupling * rng.normal(size=(classes, z))[labels] + rng.normal(size=(n, z))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True), labels


@pytest.mark.parametrize("name", list(LOGME_REFERENCE))
def test_logme_matches_the_official_icml_code(name):
    features, labels = _feature_case(*FEATURE_CASES[name])
    classes = FEATURE_CASES[name][3]
    as_generated, class_one_moved = LOGME_REFERENCE[name]
    assert ranking.logme(features, labels) == pytest.approx(as_generated, rel=RTOL)
    moved = np.where(labels == 1, classes, labels)
    assert ranking.logme(features, moved) == pytest.approx(class_one_moved, rel=RTOL)


def test_logme_orders_the_cases_by_class_structure():
    """Not a reference check: the sanity a reader expects (strong structure scores far above none)."""
    scores = {name: ranking.logme(*_feature_case(*FEATURE_CASES[name])) for name in ("strong", "weak")}
    assert scores["strong"] > scores["weak"] + 1.0


@pytest.mark.parametrize("name", list(H_SCORE_REFERENCE))
def test_h_score_matches_tllib(name):
    features, labels = _feature_case(*FEATURE_CASES[name])
    assert ranking.h_score(features, labels) == pytest.approx(H_SCORE_REFERENCE[name], rel=RTOL)


def test_h_score_ignores_a_constant_feature():
    """The pseudo-inverse (as tllib) makes a constant feature harmless: cov(f) is singular along it."""
    features, labels = _feature_case(*FEATURE_CASES["mild_shifted"])
    with_constant = np.c_[features, np.ones(len(features))]
    assert ranking.h_score(with_constant, labels) == pytest.approx(
        H_SCORE_REFERENCE["mild_shifted"], rel=RTOL
    )


@pytest.mark.parametrize("name", list(LEEP_REFERENCE))
def test_leep_matches_the_official_code(name):
    probs, labels = _source_case(*SOURCE_CASES[name])
    assert ranking.leep(probs, labels) == pytest.approx(LEEP_REFERENCE[name], rel=RTOL)


@pytest.mark.parametrize("name", list(NCE_REFERENCE))
def test_nce_matches_the_official_code(name):
    probs, labels = _source_case(*SOURCE_CASES[name])
    assert ranking.nce(probs.argmax(axis=1), labels) == pytest.approx(NCE_REFERENCE[name], rel=RTOL)


def test_scores_accept_jax_arrays_and_return_floats():
    features, labels = _feature_case(*FEATURE_CASES["strong"])
    probs, source_labels = _source_case(*SOURCE_CASES["strong"])
    for score, args, reference in [
        (ranking.logme, (features, labels), LOGME_REFERENCE["strong"][0]),
        (ranking.h_score, (features, labels), H_SCORE_REFERENCE["strong"]),
        (ranking.leep, (probs, source_labels), LEEP_REFERENCE["strong"]),
        (ranking.nce, (probs.argmax(axis=1), source_labels), NCE_REFERENCE["strong"]),
    ]:
        value = score(*(jnp.asarray(a) for a in args))
        assert type(value) is float
        assert value == pytest.approx(reference, rel=1e-4)  # jax arrays default to float32
    assert type(ranking.knn_accuracy(jnp.asarray(features), jnp.asarray(labels))) is float


# ----------------------------------------------------------------------------------------------------------
# LEEP and NCE by hand
# ----------------------------------------------------------------------------------------------------------


def test_nce_by_hand():
    """z = 0 splits y evenly (H = ln 2), z = 1 always gives y = 1 (H = 0): -H(Y|Z) = -0.5 ln 2."""
    assert ranking.nce([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(-0.5 * np.log(2), rel=1e-12)
    assert ranking.nce([2, 0, 1, 1], [1, 0, 2, 2]) == 0.0  # z determines y
    assert ranking.nce([0, 0, 0, 0], [0, 1, 0, 1]) == pytest.approx(-np.log(2), rel=1e-12)  # z says nothing


def test_leep_by_hand():
    """theta rows (1, 0) and (0.5, 0.5), labels 0 and 1: P(y, z) = [[.5, 0], [.25, .25]] (rows y, columns
    z), P(z) = (.75, .25), P(y | z=0) = (2/3, 1/3), P(y | z=1) = (0, 1); example 0: 1 * 2/3; example 1:
    0.5 * 1/3 + 0.5 * 1 = 2/3. LEEP = log(2/3)."""
    assert ranking.leep([[1.0, 0.0], [0.5, 0.5]], [0, 1]) == pytest.approx(np.log(2 / 3), rel=1e-12)
    # One-hot source predictions that determine the target: LEEP = 0.
    assert ranking.leep(np.eye(3)[[0, 1, 2, 2]], [1, 0, 2, 2]) == pytest.approx(0.0, abs=1e-15)


def test_leep_source_class_never_predicted_contributes_nothing():
    """The official code returns NaN when a source class has zero probability everywhere (0/0 in P(y|z));
    here that class drops out, which is the limit of a vanishing probability."""
    probs, labels = _source_case(*SOURCE_CASES["mild"])
    padded = np.c_[probs[:, :3], np.zeros(len(probs)), probs[:, 3:]]
    assert ranking.leep(padded, labels) == pytest.approx(LEEP_REFERENCE["mild"], rel=RTOL)


# ----------------------------------------------------------------------------------------------------------
# knn_accuracy
# ----------------------------------------------------------------------------------------------------------


def _predict(features, labels, query, k: int, metric: str = "euclidean") -> int:
    """The class kNN predicts for one ``query`` [D]: the one eval label that scores accuracy 1."""
    hits = [
        c
        for c in range(max(labels) + 1)
        if ranking.knn_accuracy(features, labels, k, metric, eval_features=[query], eval_labels=[c]) == 1.0
    ]
    assert len(hits) == 1
    return hits[0]


def test_knn_leave_one_out_excludes_itself_but_not_duplicates():
    """Points 0 and 1 coincide (label 1): each is the other's neighbour at distance 0 (right). Point 2
    (label 0) is 10 from both: the tie goes to index 0, label 1 (wrong). 2/3; counting a point as its own
    neighbour would give 1, skipping zero distances would make points 0 and 1 use point 2 (0)."""
    assert ranking.knn_accuracy([[0.0], [0.0], [10.0]], [1, 1, 0], k=1) == pytest.approx(2 / 3)


def test_knn_random_duplicates_find_their_twins():
    x = np.random.default_rng(0).normal(size=(30, 7))
    features = np.concatenate([x, x])
    labels = np.concatenate([np.arange(30), np.arange(30)])  # only the twin has the same label
    assert ranking.knn_accuracy(features, labels, k=1) == 1.0
    assert ranking.knn_accuracy(features, labels, k=1, metric="cosine") == 1.0
    # Two exact copies of the query with different labels: the lower index wins, for floats too.
    q = x[3]
    assert _predict([x[5], q, q], [0, 2, 1], q, k=1) == 2
    assert _predict([x[5], q, q], [0, 1, 2], q, k=1) == 1


def test_knn_class_ties_go_to_the_smallest_label():
    """Query 0 with k=2: one vote for label 2 (index 0, at -1) and one for label 0 (index 1, at +1)."""
    assert _predict([[-1.0], [1.0]], [2, 0], [0.0], k=2) == 0
    assert _predict([[-1.0], [1.0]], [0, 2], [0.0], k=2) == 0
    # Three classes, three votes of one each: the smallest label.
    assert _predict([[-1.0], [1.0], [2.0], [9.0]], [3, 2, 1, 0], [0.0], k=3) == 1


def test_knn_equal_distances_go_to_the_lower_index():
    assert _predict([[-1.0], [1.0]], [3, 1], [0.0], k=1) == 3
    assert _predict([[1.0], [-1.0]], [1, 3], [0.0], k=1) == 1
    # Query 0, distances 3, 1, 2, 2, 2: k=3 takes index 1 and, of the three at distance 2, indices 2 and 3
    # (labels 1, 2, 2: predicts 2); taking index 4 (label 0) instead would tie 1, 2, 0 and predict 0.
    features = [[3.0], [-1.0], [2.0], [-2.0], [2.0]]
    assert _predict(features, [0, 1, 2, 2, 0], [0.0], k=3) == 2
    assert _predict(features, [0, 1, 2, 2, 0], [0.0], k=2) == 1  # labels 1, 2: class tie -> 1


def test_knn_many_equal_distances_go_to_the_lowest_indices():
    """1000 fit points at the same place: a partial sort would return any of them (numpy's argpartition
    returns index 671 first here); the lowest indices must win."""
    features = np.ones((1000, 1))
    labels = np.ones(1000, dtype=int)
    labels[:3] = [2, 0, 0]
    assert _predict(features, labels, [0.0], k=1) == 2
    assert _predict(features, labels, [0.0], k=3) == 0  # labels 2, 0, 0
    assert _predict(features, labels, [0.0], k=4) == 0  # labels 2, 0, 0, 1
    # Leave-one-out, k=3: point 0 takes 1, 2, 3 (labels 0, 0, 1: wrong), points 1 and 2 take 0, 3 and the
    # other of 1, 2 (labels 2, 0, 1 tie: 0, right), points 3.. take 0, 1, 2 (labels 2, 0, 0: wrong).
    assert ranking.knn_accuracy(features, labels, k=3) == pytest.approx(2 / 1000)


def test_knn_cosine_differs_from_euclidean():
    """Query (3, 2): Euclidean-nearest is (1, 0) (8 against 113), angle-nearest is (10, 10) (11 degrees
    against 34)."""
    features, labels = [[1.0, 0.0], [10.0, 10.0]], [0, 1]
    assert _predict(features, labels, [3.0, 2.0], k=1) == 0
    assert _predict(features, labels, [3.0, 2.0], k=1, metric="cosine") == 1
    # Cosine ignores scale: 5 x the first point is at distance 0 from it.
    assert _predict([[1.0, 2.0], [1.0, 1.0]], [1, 0], [5.0, 10.0], k=1, metric="cosine") == 1
    # A scaled copy (index 0) and an exact copy (index 1) of the query both sit at cosine distance 0, and the
    # lower index wins, although rounding makes 1 - cos differ from 0 by ~1e-16 (in about 1 of 5 draws).
    for x in np.random.default_rng(0).normal(size=(20, 8)):
        assert _predict([5 * x, x], [1, 0], x, k=1, metric="cosine") == 1


def test_knn_eval_set_mode_by_hand():
    """Fit points 0 (label 0) and 10 (label 1); eval points 1, 4, 6, 9 labelled 0, 1, 1, 0: right, wrong,
    right, wrong."""
    accuracy = ranking.knn_accuracy(
        [[0.0], [10.0]], [0, 1], k=1, eval_features=[[1.0], [4.0], [6.0], [9.0]], eval_labels=[0, 1, 1, 0]
    )
    assert accuracy == 0.5
    # k may equal the fit set's size with an evaluation set: all 3 vote, label 1 has 2 of them.
    assert (
        ranking.knn_accuracy([[0.0], [1.0], [2.0]], [1, 0, 1], k=3, eval_features=[[0.0]], eval_labels=[1])
        == 1
    )


def _brute_force_knn(points, point_labels, queries, query_labels, k, metric, leave_one_out) -> float:
    correct = 0
    for i, query in enumerate(queries):
        if metric == "cosine":
            distance = 1 - points @ query / (np.linalg.norm(points, axis=1) * np.linalg.norm(query))
        else:
            distance = np.sqrt(((points - query) ** 2).sum(axis=1))
        order = [j for j in np.argsort(distance, kind="stable") if not (leave_one_out and j == i)]
        votes = np.bincount(point_labels[order[:k]], minlength=point_labels.max() + 1)
        correct += int(np.argmax(votes) == query_labels[i])
    return correct / len(queries)


@pytest.mark.parametrize("metric", ranking.METRICS)
@pytest.mark.parametrize("k", [1, 4, 7])
def test_knn_matches_brute_force(metric, k, monkeypatch):
    x, y = _feature_case(5, 90, 6, 3, 0.7, 0.3)
    xe, ye = _feature_case(6, 40, 6, 3, 0.7, 0.3)
    loo = _brute_force_knn(x, y, x, y, k, metric, leave_one_out=True)
    held_out = _brute_force_knn(x, y, xe, ye, k, metric, leave_one_out=False)
    assert 0.2 < loo < 0.95 and 0.2 < held_out < 0.95  # neither trivial nor hopeless
    assert ranking.knn_accuracy(x, y, k, metric) == loo
    assert ranking.knn_accuracy(x, y, k, metric, eval_features=xe, eval_labels=ye) == held_out
    # Chunks of 7 or 1 rows (the self-exclusion must follow the chunk offset) give the same answer.
    for rows in (7, 1):
        monkeypatch.setattr(ranking, "CHUNK_ROWS", rows)
        assert ranking.knn_accuracy(x, y, k, metric) == loo
        assert ranking.knn_accuracy(x, y, k, metric, eval_features=xe, eval_labels=ye) == held_out
    monkeypatch.setattr(ranking, "CHUNK_ROWS", 1024)
    monkeypatch.setattr(ranking, "CHUNK_ELEMENTS", 5 * len(x))  # 5 rows per chunk
    assert ranking.knn_accuracy(x, y, k, metric) == loo


# ----------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------

X = np.arange(12.0).reshape(6, 2)
Y = np.array([0, 1, 0, 1, 2, 2])
P = np.full((6, 3), 1 / 3)


def _with(array: np.ndarray, index, value) -> np.ndarray:
    array = array.astype(np.float64)
    array[index] = value
    return array


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ranking.knn_accuracy(X, Y[:5]), r"labels has 5 labels but features has 6"),
        (lambda: ranking.knn_accuracy(_with(X, (2, 1), np.nan), Y), r"features holds 1 NaN/inf.*\[2, 1\]"),
        (lambda: ranking.knn_accuracy(X, Y, k=0), r"k=0 is not allowed; expected an integer >= 1"),
        (lambda: ranking.knn_accuracy(X, Y, k=2.0), r"k=2.0 is not allowed"),
        (lambda: ranking.knn_accuracy(X, Y, k=6), r"k=6 is too large for leave-one-out over 6 .* \[1, 5\]"),
        (lambda: ranking.knn_accuracy(X, Y, k=7, eval_features=X, eval_labels=Y), r"k=7 exceeds the 6"),
        (lambda: ranking.knn_accuracy(X, Y, metric="manhattan"), r"metric='manhattan' is unknown.*cosine"),
        (lambda: ranking.knn_accuracy(X[0], Y), r"features must be a non-empty 2-D array.*shape \(2,\)"),
        (lambda: ranking.knn_accuracy(X, Y - 1), r"labels holds negative labels \(min -1\)"),
        (
            lambda: ranking.knn_accuracy(X, Y * 1.0),
            r"labels must hold integer class indices, got dtype=float64",
        ),
        (lambda: ranking.knn_accuracy(X, Y, eval_features=X), r"eval_features and eval_labels go together"),
        (
            lambda: ranking.knn_accuracy(X, Y, eval_features=X[:, :1], eval_labels=Y),
            r"eval_features has 1 feat",
        ),
        (lambda: ranking.knn_accuracy(X, Y, eval_features=X, eval_labels=Y[:2]), r"eval_labels has 2 labels"),
        (
            lambda: ranking.knn_accuracy(X, Y, eval_features=_with(X, 0, np.inf), eval_labels=Y),
            r"eval_features",
        ),
        (lambda: ranking.knn_accuracy(_with(X, 3, 0.0), Y, metric="cosine"), r"features row 3 is all zeros"),
        (lambda: ranking.logme(X, Y[:4]), r"labels has 4 labels but features has 6"),
        (lambda: ranking.logme(_with(X, (0, 0), -np.inf), Y), r"features holds 1 NaN/inf"),
        (lambda: ranking.logme(X[None], Y), r"features must be a non-empty 2-D array.*\(1, 6, 2\)"),
        (lambda: ranking.logme(X, Y[:, None]), r"labels must be a non-empty 1-D array.*\(6, 1\)"),
        (lambda: ranking.h_score(X[:2], Y[:2]), r"features has shape \(2, 2\): N=2 examples <= D=2"),
        (lambda: ranking.h_score(X, -Y), r"labels holds negative labels"),
        (
            lambda: ranking.leep(_with(P, (1, 0), 0.5), Y),
            r"source_probs rows must sum to 1 within 0.001.*\[1\]",
        ),
        (lambda: ranking.leep(P - 0.1, Y), r"source_probs rows must sum to 1"),
        (lambda: ranking.leep(_with(P, (2, 0), -0.1), Y), r"source_probs holds negative probabilities"),
        (lambda: ranking.leep(_with(P, (2, 0), np.nan), Y), r"source_probs holds 1 NaN/inf"),
        (lambda: ranking.leep(P[0], Y), r"source_probs must be a non-empty 2-D array"),
        (lambda: ranking.leep(P, Y[1:]), r"labels has 5 labels but source_probs has 6"),
        (lambda: ranking.nce(Y, Y[1:]), r"target_labels has 5 labels but source_labels has 6"),
        (lambda: ranking.nce(Y - 1, Y), r"source_labels holds negative labels"),
        (lambda: ranking.nce(Y, Y[:, None]), r"target_labels must be a non-empty 1-D array"),
    ],
)
def test_bad_input_raises_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_probability_rows_within_tolerance_are_accepted():
    """float32 softmax rows sum to 1 only to ~1e-7: within 1e-3 is fine."""
    assert np.isfinite(ranking.leep(_with(P, (1, 0), 1 / 3 + 9e-4), Y))

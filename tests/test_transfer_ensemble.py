"""Tests of sparse_experts.transfer.ensemble: greedy forward selection on a case worked by hand (its order,
stop rule, max_size and ties), hand-computed NLL / accuracy / ECE, and every ValueError path."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from sparse_experts.transfer import ensemble

# ----------------------------------------------------------------------------------------------------------
# greedy_ensemble
# ----------------------------------------------------------------------------------------------------------


def _members(true_class_probs: list[tuple[float, float]]) -> np.ndarray:
    """member_probs [M, 2, 2] for labels [0, 1]: member m gives example 0 the row (p, 1 - p) and example 1
    the row (1 - q, q), so (p, q) are its probabilities of the true classes."""
    return np.array([[[p, 1 - p], [1 - q, q]] for p, q in true_class_probs])


LABELS = [0, 1]
# NLL = -(ln p + ln q) / 2 of each member alone: m0 0.9486, m1 1.3296, m2 1.2040, m3 1.1513.
HAND = _members([(0.5, 0.3), (0.7, 0.1), (0.1, 0.9), (0.5, 0.2)])


def test_greedy_order_worked_by_hand():
    """Start: m0, the lowest NLL (0.9486).
    Step 1, averages with m0: +m1 (0.6, 0.2) 1.0601; +m2 (0.3, 0.6) 0.8574; +m3 (0.5, 0.25) 1.0397 -> m2,
    although m3 is better alone (m2 is the complement of m0).
    Step 2, with {m0, m2}: +m1 (13/30, 13/30) 0.8362 < 0.8574; +m3 (11/30, 14/30) 0.8827 -> m1, the worst
    member alone.
    Step 3, with {m0, m2, m1}: +m3 (0.45, 0.375) 0.8897 > 0.8362 -> nothing lowers the NLL: stop."""
    chosen = ensemble.greedy_ensemble(HAND, LABELS, max_size=4)
    assert chosen == [0, 2, 1]
    assert all(type(i) is int for i in chosen)
    assert ensemble.nll(ensemble.average(HAND, chosen), LABELS) == pytest.approx(
        -(2 * math.log(13 / 30)) / 2, rel=1e-12
    )


def test_greedy_max_size_cuts_the_same_order():
    assert ensemble.greedy_ensemble(HAND, LABELS, max_size=1) == [0]
    assert ensemble.greedy_ensemble(HAND, LABELS, max_size=2) == [0, 2]
    assert ensemble.greedy_ensemble(HAND, LABELS, max_size=100) == [0, 2, 1]


def test_greedy_stops_unless_the_nll_drops_strictly():
    """A copy of the best member leaves the average, so the NLL, exactly unchanged: not added."""
    assert ensemble.greedy_ensemble(HAND[[0, 0]], LABELS, max_size=2) == [0]
    # m3 does not help m0 (1.0397 > 0.9486), nor does m1 (1.0601): m0 alone.
    assert ensemble.greedy_ensemble(HAND[[0, 3, 1]], LABELS, max_size=3) == [0]


def test_greedy_ties_go_to_the_lower_index():
    # Two copies of the best member (m0 at 1 and 2): start from index 1. Then +m2 (index 0) gives 0.8574,
    # the copy (index 2) 0.9486; then the copy: (11/30, 15/30) gives 0.8479 < 0.8574, so it is added.
    assert ensemble.greedy_ensemble(HAND[[2, 0, 0]], LABELS, max_size=3) == [1, 0, 2]
    # Two copies of m2 (at 1 and 2) tie as the step-1 choice: index 1; then the second copy gives
    # (0.7/3, 2.1/3), NLL 0.9060 > 0.8574, so it stops.
    assert ensemble.greedy_ensemble(HAND[[0, 2, 2]], LABELS, max_size=3) == [0, 1]


def _naive_greedy(member_probs, labels, max_size):
    """Forward selection spelled out with the public average and nll."""
    chosen, best = [], math.inf
    while len(chosen) < max_size:
        rest = [m for m in range(len(member_probs)) if m not in chosen]
        losses = [ensemble.nll(ensemble.average(member_probs, chosen + [m]), labels) for m in rest]
        if not rest or min(losses) >= best:
            return chosen
        best = min(losses)
        chosen.append(rest[losses.index(best)])
    return chosen


def test_greedy_matches_naive_selection_on_random_members():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 300)
    for seed in range(4):
        # Members of varying sharpness that are right on different subsets of examples.
        logits = rng.normal(size=(12, 300, 5)) * rng.uniform(1, 4, size=(12, 1, 1))
        logits[:, np.arange(300), labels] += 4 * (rng.uniform(size=(12, 300)) < 0.6)
        probs = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
        chosen = ensemble.greedy_ensemble(probs, labels, max_size=8)
        assert chosen == _naive_greedy(probs, labels, 8), seed
        assert len(chosen) >= 2 and len(set(chosen)) == len(chosen)


# ----------------------------------------------------------------------------------------------------------
# nll, accuracy, ece, average
# ----------------------------------------------------------------------------------------------------------

PROBS = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])


def test_nll_by_hand():
    assert ensemble.nll(PROBS, [0, 0, 1]) == pytest.approx(
        -(math.log(0.5) + math.log(0.9) + math.log(0.8)) / 3
    )
    # A zero probability for the true class costs -log(1e-12), not infinity.
    assert ensemble.nll([[1.0, 0.0]], [1]) == pytest.approx(-math.log(ensemble.LOG_EPSILON))
    assert type(ensemble.nll(jnp.asarray(PROBS), jnp.asarray([0, 0, 1]))) is float


def test_accuracy_by_hand():
    """Row 0 ties: argmax takes class 0 (right for label 0); row 1 predicts 0 (label 1: wrong); row 2
    predicts 1 (right)."""
    assert ensemble.accuracy(PROBS, [0, 1, 1]) == pytest.approx(2 / 3)
    assert ensemble.accuracy(PROBS, [1, 0, 1]) == pytest.approx(2 / 3)  # row 0 wrong, row 1 right


def test_ece_bin_edges_by_hand():
    """bins=4, edges 0, .25, .5, .75, 1 and bins (lo, hi].
    A: confidence 0.5, right  -> bin (.25, .5]  (the edge goes to the bin below)
    E: confidence 0.4, wrong  -> bin (.25, .5]
    F: confidence 1.0, wrong  -> bin (.75, 1]   (1.0 goes to the last bin)
    G: confidence 0.8, right  -> bin (.75, 1]
    ECE = (|1 - 0.9| + |1 - 1.8|) / 4 = 0.225. With [lo, hi) bins A and E would part: (0.5 + 0.4 + 0.8) / 4;
    without the 1.0 in the last bin: (0.1 + 0.2) / 4."""
    probs = [[0.5, 0.3, 0.2], [0.4, 0.35, 0.25], [1.0, 0.0, 0.0], [0.1, 0.8, 0.1]]
    assert ensemble.ece(probs, [0, 1, 2, 1], bins=4) == pytest.approx(0.225, rel=1e-12)


def test_ece_default_fifteen_bins_by_hand():
    """Confidences 0.95 (right) in (14/15, 1]; 0.7 (right) and 0.72 (wrong) both in (10/15, 11/15]:
    ECE = (|1 - 0.95| + |1 - 1.42|) / 3 = 0.47 / 3. With bins=2 all three share (0.5, 1]: |2 - 2.37| / 3."""
    probs = [[0.95, 0.05], [0.3, 0.7], [0.72, 0.28]]
    assert ensemble.ece(probs, [0, 1, 1]) == pytest.approx(0.47 / 3, rel=1e-12)
    assert ensemble.ece(probs, [0, 1, 1], bins=2) == pytest.approx(0.37 / 3, rel=1e-12)


def test_ece_of_a_calibrated_construction_is_zero():
    """Confidence 0.8 on 10 examples, 8 right; 0.6 on 5, 3 right; 1.0 on 2, both right."""
    probs = np.array([[0.8, 0.2]] * 10 + [[0.4, 0.6]] * 5 + [[0.0, 1.0]] * 2)
    labels = [0] * 8 + [1] * 2 + [1] * 3 + [0] * 2 + [1] * 2
    assert ensemble.ece(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert ensemble.ece(probs, 1 - np.array(labels)) > 0.3  # flipped labels: badly calibrated


def test_ece_matches_a_loop_over_bins():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(500, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 4, 500)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    expected = 0.0
    for b in range(15):
        inside = (confidence > b / 15) & (confidence <= (b + 1) / 15)
        if inside.any():
            expected += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    assert expected > 0.05
    assert ensemble.ece(probs, labels) == pytest.approx(expected, rel=1e-12)


def test_average_by_hand():
    members = np.array([[[1.0, 0.0]], [[0.0, 1.0]], [[0.5, 0.5]]])  # [M=3, N=1, C=2]
    np.testing.assert_allclose(ensemble.average(members, [0, 2]), [[0.75, 0.25]], rtol=1e-15)
    np.testing.assert_allclose(ensemble.average(members, [1, 1, 0]), [[1 / 3, 2 / 3]], rtol=1e-15)
    assert ensemble.average(members, [0]).shape == (1, 2)


# ----------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------


def _with(array: np.ndarray, index, value) -> np.ndarray:
    array = np.array(array, dtype=np.float64)
    array[index] = value
    return array


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ensemble.greedy_ensemble(HAND, LABELS, max_size=0), r"max_size=0 is not allowed.*>= 1"),
        (lambda: ensemble.greedy_ensemble(HAND, LABELS, max_size=1.5), r"max_size=1.5 is not allowed"),
        (lambda: ensemble.greedy_ensemble(HAND, [0, 2], 2), r"labels holds label 2, out of range.*\[0, 2\)"),
        (lambda: ensemble.greedy_ensemble(HAND, [0, -1], 2), r"labels holds negative labels"),
        (lambda: ensemble.greedy_ensemble(HAND, [0, 1, 1], 2), r"labels has 3 labels but member_probs has 2"),
        (lambda: ensemble.greedy_ensemble(HAND[0], LABELS, 2), r"member_probs must be a non-empty 3-D array"),
        (
            lambda: ensemble.greedy_ensemble(_with(HAND, (1, 0, 0), np.nan), LABELS, 2),
            r"member_probs holds 1 NaN",
        ),
        (
            lambda: ensemble.greedy_ensemble(_with(HAND, (3, 1, 1), 0.5), LABELS, 2),
            r"member_probs rows must sum to 1 within 0.001.*row \[3, 1\] sums to 1.3",
        ),
        (
            lambda: ensemble.greedy_ensemble(HAND - 0.5, LABELS, 2),
            r"member_probs holds negative probabilities",
        ),
        (lambda: ensemble.nll(PROBS, [0, 1]), r"labels has 2 labels but probs has 3"),
        (
            lambda: ensemble.nll(PROBS, [0, 1, 2]),
            r"labels holds label 2, out of range for probs with 2 classes",
        ),
        (lambda: ensemble.nll(_with(PROBS, (0, 0), np.inf), [0, 1, 1]), r"probs holds 1 NaN/inf"),
        (lambda: ensemble.accuracy(PROBS * 2, [0, 1, 1]), r"probs rows must sum to 1.*sums to 2.0"),
        (lambda: ensemble.accuracy(PROBS[None], [0, 1, 1]), r"probs must be a non-empty 2-D array"),
        (lambda: ensemble.ece(PROBS, [0, 1, 1], bins=0), r"bins=0 is not allowed"),
        (lambda: ensemble.ece(PROBS, [0.0, 1.0, 1.0]), r"labels must hold integer class indices"),
        (lambda: ensemble.average(HAND, [4]), r"indices=\[4\] out of range: member_probs has 4 members"),
        (lambda: ensemble.average(HAND, [-1]), r"indices=\[-1\] out of range"),
        (lambda: ensemble.average(HAND, []), r"indices must be a non-empty 1-D sequence"),
        (lambda: ensemble.average(HAND[:, :, :1], [0]), r"member_probs rows must sum to 1"),
    ],
)
def test_bad_input_raises_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()

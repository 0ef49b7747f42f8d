"""The paired bootstrap over test images and seeds (analysis.bootstrap)."""

import numpy as np
import pytest

from sparse_experts.analysis import bootstrap


def _model(rng, n, p):
    return rng.random(n) < p


def test_one_seed_matches_the_binomial_standard_error():
    rng = np.random.default_rng(0)
    n, p = 20_000, 0.7
    a, b = _model(rng, n, p), _model(rng, n, 0.5)
    out = bootstrap.paired(a, b, samples=2000)
    assert out.mean_a == pytest.approx(a.mean()) and out.gap == pytest.approx(a.mean() - b.mean())
    expected = np.sqrt(a.mean() * (1 - a.mean()) / n)
    assert out.se_a == pytest.approx(expected, rel=0.1)
    # independent errors: the gap's variance is the sum of both
    assert out.gap_se == pytest.approx(np.hypot(out.se_a, out.se_b), rel=0.1)


def test_pairing_shrinks_the_noise_of_a_gap_between_correlated_models():
    rng = np.random.default_rng(1)
    n = 20_000
    a = _model(rng, n, 0.7)
    b = a.copy()
    flip = rng.random(n) < 0.04  # b differs from a on 4% of the images
    b[flip] = ~b[flip]
    out = bootstrap.paired(a, b, samples=1000)
    unpaired = np.hypot(out.se_a, out.se_b)
    assert out.gap_se < 0.5 * unpaired
    assert out.gap_se == pytest.approx(np.sqrt(flip.mean() / n), rel=0.15)  # sign-test variance
    same = bootstrap.paired(a, a, samples=200)
    assert same.gap == 0.0 and same.gap_se == 0.0 and not same.resolved


def test_the_spread_over_seeds_counts():
    rng = np.random.default_rng(2)
    n = 20_000
    base = rng.random(n)
    seeds = np.stack([base < p for p in (0.6, 0.7, 0.8)])  # three seeds 10 points apart, nested errors
    one = bootstrap.paired(seeds[1], seeds[1], samples=500)
    three = bootstrap.paired(seeds, seeds[1], samples=2000)
    assert three.seeds == (3, 1)
    assert three.mean_a == pytest.approx(seeds.mean())
    # the seeds' own spread: std 0.1 over 3 seeds -> about 0.1 * sqrt(2/3) / sqrt(3) = 0.047 by resampling
    assert 0.03 < three.se_a < 0.06 and three.se_a > 5 * one.se_a
    assert three.to_dict()["gap_two_se"] == pytest.approx(2 * three.gap_se)


def test_seed_pairs_remove_the_luck_two_models_share():
    rng = np.random.default_rng(3)
    n = 20_000
    base = rng.random(n)
    luck = np.array([0.60, 0.66, 0.70, 0.72, 0.76, 0.80])  # each of 6 seeds' luck, shared by both models
    a = np.stack([base < p + 0.02 for p in luck])  # a: 2 points better on every seed
    b = np.stack([base < p for p in luck])
    apart = bootstrap.paired(a, b, samples=2000)
    pairs = bootstrap.paired(a, b, samples=2000, paired_seeds=True)
    assert pairs.paired_seeds and pairs.to_dict()["paired_seeds"] and "seed pairs" in str(pairs)
    assert pairs.gap == pytest.approx(apart.gap) == pytest.approx(0.02, abs=0.005)
    # seeds redrawn apart: the shared luck (std 7 points) swamps the gap; in pairs it cancels exactly
    assert apart.gap_se > 0.02 and not apart.resolved
    assert pairs.gap_se < 0.002 and pairs.resolved
    with pytest.raises(ValueError, match="paired_seeds=True needs the same seeds"):
        bootstrap.paired(a, b[:3], paired_seeds=True)


def test_correct_matrix_and_bad_input():
    labels = np.array([0, 1, 2, 1])
    correct = bootstrap.correct_matrix({1: [0, 1, 0, 0], 0: [0, 1, 2, 1]}, labels)
    np.testing.assert_array_equal(correct, [[1, 1, 1, 1], [1, 1, 0, 0]])  # seed order
    with pytest.raises(ValueError, match="same test images"):
        bootstrap.paired(np.ones((2, 10)), np.ones((2, 11)))
    with pytest.raises(ValueError, match="0/1"):
        bootstrap.paired(np.full(5, 0.5), np.ones(5))
    with pytest.raises(ValueError, match="samples"):
        bootstrap.paired(np.ones(5), np.ones(5), samples=1)
    with pytest.raises(ValueError, match="shape"):
        bootstrap.correct_matrix({0: [1, 2]}, labels)


def test_gain_kept_measures_the_share_of_a_gain_with_its_noise():
    rng = np.random.default_rng(0)
    n = 4000
    base = rng.random((3, n)) < 0.6
    full = base | (rng.random((3, n)) < 0.25)  # about +10 points
    cheap = base | (full & (rng.random((3, n)) < 0.5))  # keeps about half of it
    kept = bootstrap.gain_kept(cheap, full, base, samples=400)
    expected = (cheap.mean() - base.mean()) / (full.mean() - base.mean())
    assert kept["fraction"] == pytest.approx(expected) and 0.4 < kept["fraction"] < 0.6
    assert 0.005 < kept["se"] < 0.1
    same = bootstrap.gain_kept(full, full, base, samples=200)
    assert same["fraction"] == 1.0 and same["se"] < 1e-6
    with pytest.raises(ValueError, match="same seeds and images"):
        bootstrap.gain_kept(cheap[:2], full, base)

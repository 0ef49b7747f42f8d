"""Expert-selection proxies on hand-made cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from sparse_experts.transfer import proxies

FINE_TO_COARSE = [0, 0, 1, 1, 2, 2]  # 6 classes in 3 families


def test_family_mass_sums_each_familys_probability():
    probs = np.array([[0.5, 0.3, 0.1, 0.1, 0.0, 0.0], [0.1, 0.1, 0.6, 0.0, 0.1, 0.1]])
    np.testing.assert_allclose(proxies.family_mass(probs, FINE_TO_COARSE), [0.5, 0.4, 0.1])
    with pytest.raises(ValueError, match="upstream_probs"):
        proxies.family_mass(probs * 2, FINE_TO_COARSE)
    with pytest.raises(ValueError, match="fine_to_coarse"):
        proxies.family_mass(probs, [0, 1])


def test_domain_pick_takes_the_heaviest_family_or_keeps_the_generalist():
    assert proxies.domain_pick([0.2, 0.5, 0.3], min_share=0.4) == 1
    assert proxies.domain_pick([0.34, 0.33, 0.33], min_share=0.4) is None  # nothing stands out
    with pytest.raises(ValueError, match="min_share=2"):
        proxies.domain_pick([1.0], min_share=2)


def test_routing_histograms_count_top1_choices_per_layer():
    gates = np.zeros((2, 4, 3))
    gates[0, :, 0] = 1  # image 0: every token's top expert is 0
    gates[1, :2, 1], gates[1, 2:, 2] = 1, 1  # image 1: half to 1, half to 2
    hist = proxies.routing_histograms({3: gates, 1: gates[:, :, ::-1]})
    assert hist.shape == (2, 2, 3)
    np.testing.assert_allclose(hist[0, 1], [1, 0, 0])  # layer 3 comes second
    np.testing.assert_allclose(hist[1, 1], [0, 0.5, 0.5])
    np.testing.assert_allclose(hist[0, 0], [0, 0, 1])


def test_js_divergence_is_zero_for_equal_and_log2_for_disjoint():
    assert proxies.js_divergence([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0)
    assert proxies.js_divergence([1, 0], [0, 1]) == pytest.approx(np.log(2))


def test_routing_pick_finds_the_family_that_routes_like_the_task():
    rng = np.random.default_rng(0)
    families = rng.dirichlet(np.ones(4), size=(3, 2))  # 3 families, 2 layers, 4 experts
    hist = np.concatenate([np.repeat(families[f][None], 5, axis=0) for f in range(3)])
    labels = np.repeat(np.arange(3), 5)
    signatures = proxies.family_signatures(hist, labels, 3)
    np.testing.assert_allclose(signatures, families)
    upstream = hist.mean(axis=0)
    task = 0.9 * families[2] + 0.1 * upstream  # routes like family 2
    divergence, pick = proxies.routing_pick(task, signatures, upstream)
    assert pick == 2 and divergence.argmin() == 2
    _, pick = proxies.routing_pick(upstream, signatures, upstream)  # routes like the whole set
    assert pick is None
    with pytest.raises(ValueError, match="families"):
        proxies.family_signatures(hist, np.zeros(15, int), 3)

"""sparse_experts.analysis.adaptive (notebook 04): capacity sweeps with vanilla routing and BPR, fixed points,
compute per image at one capacity factor and its spread over images, on a tiny V-MoE and hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from sparse_experts import models
from sparse_experts.analysis import adaptive

E, Y = 4, 5


@pytest.fixture(scope="module")
def tiny():
    """A tiny V-MoE (MoE at layer 1, 4 experts, k=2, groups of 2 images) and a dense ViT, on 8 images."""
    moe = models.MoeConfig(num_experts=E, k=2, placement=(1,), capacity_factor=1.0, group_size=2)
    config = models.vit_config("mu/4", image_size=8, num_classes=Y, depth=2, width=16, mlp_dim=32,
                               num_heads=2, head_zero_init=False, moe=moe)  # fmt: skip
    images = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype(np.float32)
    labels = np.arange(8) % Y
    dense = models.ViT(config.replace(moe=None), rngs=nnx.Rngs(1))
    return models.ViT(config, rngs=nnx.Rngs(0)), dense, images, labels


def test_sweeps_table_curves_and_records(tiny):
    model, _, images, labels = tiny
    sweeps = adaptive.capacity_sweeps(model, images, labels, [0.25, 2.0], batch_size=4)
    assert list(sweeps) == ["vanilla", "BPR"]
    table = adaptive.sweep_table(sweeps)
    assert [row["capacity_factor"] for row in table] == [0.25, 2.0]
    low, high = table
    # Same slots either way: same GFLOPs; at 2x capacity nothing is dropped and both routings agree.
    assert low["gflops_per_image"] < high["gflops_per_image"]
    assert high["vanilla_dropped_fraction"] == pytest.approx(0, abs=1e-6)
    assert high["vanilla_accuracy"] == high["bpr_accuracy"]
    assert (
        low["vanilla_dropped_fraction"] > 0
        and low["expert_choices_per_image"] < high["expert_choices_per_image"]
    )
    N = model.config.num_tokens
    assert high["expert_choices_per_image"] == pytest.approx(2 * N)  # k choices x N tokens x 1 MoE layer
    curves = adaptive.sweep_curves(sweeps)
    assert list(curves) == ["V-MoE top-2, vanilla", "V-MoE top-2, BPR"]
    np.testing.assert_array_equal(curves["V-MoE top-2, BPR"][1], sweeps["BPR"]["accuracy"])
    records = adaptive.sweep_records(sweeps["vanilla"])
    assert records[1]["capacity_factor"] == 2.0 and records[1]["accuracy"] == high["vanilla_accuracy"]
    assert adaptive.sweep_records(None) is None
    other = {**sweeps, "BPR": {**sweeps["BPR"], "capacity_factor": np.array([0.5, 2.0])}}
    with pytest.raises(ValueError, match="differ from BPR's"):
        adaptive.sweep_table(other)


def test_expert_choice_sweeps_at_twice_the_factor(tiny):
    model, _, images, labels = tiny
    ec_config = model.config.replace(moe=models.MoeConfig(num_experts=E, k=2, placement=(1,), group_size=2,
                                                          router="expert_choice"))  # fmt: skip
    ec = models.ViT(ec_config, rngs=nnx.Rngs(2))
    sweeps = adaptive.capacity_sweeps(model, images, labels, [0.5], batch_size=4, expert_choice=ec)
    assert list(sweeps[adaptive.EXPERT_CHOICE]["capacity_factor"]) == [1.0]
    assert "expert choice (c)" in adaptive.sweep_curves(sweeps)


def test_fixed_points_and_compute_at_capacity(tiny):
    model, dense, images, labels = tiny
    points = adaptive.fixed_points({"dense ViT": dense}, images, labels, batch_size=4)
    gflops, accuracy = points["dense ViT"]
    assert gflops == pytest.approx(models.flops_per_image(dense.config) / 1e9)
    logits = np.asarray(dense(images, train=False))
    assert accuracy == pytest.approx(np.mean(logits.argmax(-1) == labels))
    np.testing.assert_allclose(adaptive.predict(dense, images, batch_size=3), logits, atol=1e-5)
    with pytest.raises(ValueError, match="batch_size=0"):
        adaptive.predict(dense, images, batch_size=0)
    at = adaptive.compute_at_capacity(model, images, labels, 0.25, batch_size=4)
    assert list(at) == ["vanilla", "BPR"]
    most = adaptive.max_expert_choices(model.config)
    assert most == 2 * model.config.num_tokens * 1
    for result in at.values():
        assert result.per_image.shape == (8,) and result.correct.shape == (8,)
        assert result.per_image.max() <= most and 0 <= result.accuracy <= 1
    # Capacity 0.25 keeps the same number of token-choices in each group, whichever routing fills them.
    assert at["vanilla"].per_image.sum() == at["BPR"].per_image.sum()
    with pytest.raises(ValueError, match="no MoE layers"):
        adaptive.max_expert_choices(dense.config)


def test_compute_spread_by_hand():
    # 8 images; the quarter with most compute: images 7, 6 (10, 9), with least: 0, 1 (0, 1).
    per_image = np.array([0, 1, 2, 3, 4, 5, 9, 10], float)
    correct = np.array([0, 0, 1, 1, 1, 1, 1, 1], bool)
    at = {"vanilla": adaptive.ComputeAtCapacity(per_image, correct),
          "BPR": adaptive.ComputeAtCapacity(per_image[::-1].copy(), correct)}  # fmt: skip
    vanilla, bpr = adaptive.compute_spread(at)
    assert vanilla["routing"] == "vanilla" and vanilla["mean"] == pytest.approx(34 / 8)
    assert vanilla["min"] == 0 and vanilla["max"] == 10 and vanilla["images with no expert compute"] == 1 / 8
    assert vanilla["accuracy"] == 0.75
    assert (
        vanilla["accuracy, most-compute quarter"] == 1.0 and vanilla["accuracy, least-compute quarter"] == 0.0
    )
    # BPR gave the most compute to images 0 and 1 (both wrong) and the least to 6 and 7 (both right).
    assert bpr["accuracy, most-compute quarter"] == 0.0 and bpr["accuracy, least-compute quarter"] == 1.0
    sentence = adaptive.spread_sentence([vanilla, bpr], 0.25, 12)
    assert "4.2 (vanilla) and 4.2 (BPR) token-choices per image on average, of 12 possible" in sentence
    assert "With BPR, the quarter of images that got the most compute is 0.0% accurate" in sentence
    with pytest.raises(ValueError, match="per_image"):
        adaptive.compute_spread({"vanilla": adaptive.ComputeAtCapacity(per_image, correct[:3])})

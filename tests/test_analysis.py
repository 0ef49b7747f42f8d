"""sparse_experts.analysis on a tiny real V-MoE (2 layers, MoE at layer 1, 4 experts, k=2, 8x8 images)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparse_experts import analysis, models

E, Y = 4, 5


@pytest.fixture(scope="module")
def model(tiny_vmoe):  # conftest: 2 layers, MoE at layer 1, E experts, Y classes, 8x8 images
    return tiny_vmoe


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(6, 8, 8, 3)).astype(np.float32)


def test_route_shapes_and_batching_invariance(model, images):
    logits, records = analysis.route(model, images, batch_size=2)
    assert logits.shape == (6, Y) and list(records) == [1]
    record = records[1]
    N = model.config.num_tokens
    assert record["combine_weights"].shape == (6, N, E) and record["gates"].shape == (6, N, E)
    assert record["tokens_per_image"].shape == (6,) and record["load"].shape == (E,)
    assert isinstance(record["combine_weights"], np.ndarray) and isinstance(record["capacity"], int)
    # capacity 8 x fair share: nothing dropped, every token keeps k=2 choices
    assert abs(record["dropped_fraction"]) < 1e-6
    np.testing.assert_allclose(record["tokens_per_image"], 2 * N)
    np.testing.assert_allclose(record["load"].sum(), 6 * N * 2)
    # one image per routing group and room for all: batch size and order do not matter
    logits3, records3 = analysis.route(model, images, batch_size=3)
    order = np.array([5, 2, 0, 4, 1, 3])
    logits_p, records_p = analysis.route(model, images[order], batch_size=2)
    np.testing.assert_allclose(logits3, logits, atol=1e-5)
    np.testing.assert_allclose(logits_p, logits[order], atol=1e-5)
    for key in ("combine_weights", "gates", "tokens_per_image"):
        np.testing.assert_allclose(records3[1][key], record[key], atol=1e-6)
        np.testing.assert_allclose(records_p[1][key], record[key][order], atol=1e-6)


def test_route_overrides_and_errors(model, images):
    _, records = analysis.route(model, images, batch_size=6, moe_overrides=dict(k=1, capacity_factor=0.5))
    N = model.config.num_tokens
    assert records[1]["capacity"] == 1  # ceil(0.5 x 1 x 5 / 4)
    assert records[1]["tokens_per_image"].max() <= N
    assert records[1]["dropped_fraction"] > 0
    with pytest.raises(ValueError, match="moe_overrides"):
        analysis.route(model, images, batch_size=2, moe_overrides=dict(capacity=1.0))
    with pytest.raises(ValueError, match=r"moe_overrides\['k'\]=9"):
        analysis.route(model, images, batch_size=2, moe_overrides=dict(k=9))
    with pytest.raises(ValueError, match="batch_size=0"):
        analysis.route(model, images, batch_size=0)
    with pytest.raises(ValueError, match="images"):
        analysis.route(model, images[..., :1], batch_size=2)


def test_expert_class_affinity_hand_case():
    # 3 images, 2 tokens, 2 experts; classes: image 0 and 2 are class 1, image 1 is class 0; class 2 absent
    weights = np.array([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]])
    affinity = analysis.expert_class_affinity(weights, np.array([1, 0, 1]), 3)
    assert affinity.shape == (2, 3)
    np.testing.assert_allclose(affinity[:, 0], [0.0, 1.0])
    np.testing.assert_allclose(affinity[:, 1], [2.5 / 3, 0.5 / 3])
    assert np.isnan(affinity[:, 2]).all()
    relative = analysis.expert_class_affinity(weights, np.array([1, 0, 1]), 3, relative=True)
    overall = np.array([2.5, 2.5]) / 5
    np.testing.assert_allclose(relative[:, 1], affinity[:, 1] / overall)
    with pytest.raises(ValueError, match="labels"):
        analysis.expert_class_affinity(weights, np.array([1, 0, 3]), 3)
    with pytest.raises(ValueError, match="combine_weights"):
        analysis.expert_class_affinity(weights[0], np.array([1, 0]), 3)


def test_small_statistics():
    gates = np.array([[[1.0, 0.0], [0.5, 0.5]]])
    assert analysis.router_entropy(gates) == pytest.approx(np.log(2) / 2)
    np.testing.assert_allclose(analysis.router_entropy(gates, reduce=False), [[0.0, np.log(2)]])
    weights = np.array([[[0.9, 0.0], [0.1, 0.6]]])
    np.testing.assert_allclose(analysis.expert_load(weights), [2 / 3, 1 / 3])
    np.testing.assert_allclose(analysis.expert_load(weights, weighted=True), [0.625, 0.375])
    np.testing.assert_allclose(
        analysis.compute_per_image({1: np.array([1, 2]), 3: {"tokens_per_image": [3, 4]}}), [4, 6]
    )
    with pytest.raises(ValueError, match="layers"):
        analysis.compute_per_image({1: np.array([1, 2])}, layers=[2])
    logits = np.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    np.testing.assert_allclose(
        analysis.accuracy_per_class(logits, np.array([0, 0, 0, 2]), 4), [2 / 3, np.nan, 1.0, np.nan]
    )
    choices, dropped = analysis.patch_choices(
        gates[0] * 0 + np.array([[0.2, 0.8], [0.6, 0.4]]), weights[0], k=2
    )
    np.testing.assert_array_equal(choices, [[1, 0], [0, 1]])
    np.testing.assert_array_equal(dropped, [[True, False], [False, False]])


def test_ablate_expert_leaves_original_and_removes_exactly_that_experts_output(model):
    mlp = model.encoder.blocks[1].mlp
    wo_before = np.asarray(mlp.experts.wo[...]).copy()
    ablated = analysis.ablate_expert(model, 1, 2)
    np.testing.assert_array_equal(np.asarray(mlp.experts.wo[...]), wo_before)  # the original is untouched
    off = ablated.encoder.blocks[1].mlp
    assert not np.asarray(off.experts.wo[...][2]).any() and not np.asarray(off.experts.bo[...][2]).any()
    np.testing.assert_array_equal(np.asarray(off.experts.wo[...][1]), wo_before[1])
    # at the layer: the ablated output is the original minus expert 2's weighted output, nothing else
    x = jax.random.normal(jax.random.key(1), (2, model.config.num_tokens, 16))
    layer = nnx.jit(lambda module, x: module(x, capacity_factor=1.0))  # one compile for both (same graph)
    y, record = layer(mlp, x)
    y_off, record_off = layer(off, x)
    np.testing.assert_allclose(record_off["combine_weights"], record["combine_weights"])  # routing unchanged
    h = jax.nn.gelu(jnp.einsum("BND,DH->BNH", x, mlp.experts.wi[...][2]) + mlp.experts.bi[...][2])
    expert_out = jnp.einsum("BNH,HD->BND", h, mlp.experts.wo[...][2]) + mlp.experts.bo[...][2]
    contribution = record["combine_weights"][..., 2:3] * expert_out
    assert np.abs(np.asarray(contribution)).max() > 1e-3  # expert 2 did process tokens
    np.testing.assert_allclose(y_off, y - contribution, atol=1e-5)
    with pytest.raises(ValueError, match="layer=0"):
        analysis.ablate_expert(model, 0, 1)
    with pytest.raises(ValueError, match="expert=4"):
        analysis.ablate_expert(model, 1, 4)


def test_capacity_sweep_compute_grows_with_capacity(model, images):
    labels = np.arange(6) % Y
    factors = [0.25, 0.5, 1.0]
    for bpr in (False, True):
        sweep = analysis.capacity_sweep(model, images, labels, factors, batch_size=6, batch_priority=bpr)
        np.testing.assert_array_equal(sweep["capacity_factor"], factors)
        assert (np.diff(sweep["gflops"]) > 0).all()
        assert (np.diff(sweep["tokens_per_image"]) >= 0).all()
        assert (np.diff(sweep["dropped_fraction"]) <= 0).all()
        assert ((sweep["accuracy"] >= 0) & (sweep["accuracy"] <= 1)).all()
        expected = [models.flops_per_image(model.config, capacity_factor=cf) / 1e9 for cf in factors]
        np.testing.assert_allclose(sweep["gflops"], expected)
    with pytest.raises(ValueError, match="capacity_factors"):
        analysis.capacity_sweep(model, images, labels, [0.5, -1.0], batch_size=6)


@pytest.mark.parametrize("router", ["expert_choice", "soft"])
def test_route_other_routers(router, images):
    config = models.vit_config(
        "mu/4", image_size=8, num_classes=Y, depth=2, width=16, mlp_dim=32, num_heads=2,
        moe=models.MoeConfig(num_experts=E, k=1, placement=(1,), router=router),
    )  # fmt: skip
    model = models.ViT(config, rngs=nnx.Rngs(0))
    overrides = dict(capacity_factor=0.5) if router == "expert_choice" else None
    logits, records = analysis.route(model, images, batch_size=3, moe_overrides=overrides)
    N = config.num_tokens
    assert logits.shape == (6, Y) and records[1]["combine_weights"].shape == (6, N, E)
    if router == "soft":
        np.testing.assert_allclose(records[1]["combine_weights"].sum(-1), 1.0, atol=1e-5)  # per token
        np.testing.assert_allclose(records[1]["tokens_per_image"], N)
        with pytest.raises(ValueError, match="Soft MoE"):
            analysis.route(model, images, batch_size=3, moe_overrides=dict(capacity_factor=1.0))
        with pytest.raises(ValueError, match="Soft MoE"):
            analysis.capacity_sweep(model, images, np.zeros(6, int), [1.0], batch_size=3)
    else:
        assert records[1]["capacity"] == 1  # ceil(0.5 x 5 tokens / 4 experts)
        assert records[1]["load"].sum() == 6 * 1 * E  # every expert fills its C slots in each image


def test_bpr_claim_check_verdicts():
    factors = [0.25, 0.5, 1.0, 1.5]
    check = analysis.bpr_claim_check(
        factors, [0.40, 0.60, 0.80, 0.80], [0.75, 0.78, 0.80, 0.81], num_images=5000
    )
    assert isinstance(check, analysis.Claim)
    assert check.verdict == "reproduced" and check.numbers["reference_capacity_factor"] == 1.0
    assert [r["capacity_factor"] for r in check.numbers["rows"]] == [0.25, 0.5]
    first = check.numbers["rows"][0]
    assert np.isclose(first["vanilla_drop"], 0.40) and np.isclose(first["bpr_drop"], 0.05)
    assert "capacity factor 0.25: vanilla -40.0, BPR -5.0" in check.sentence
    assert check.to_dict()["numbers"]["mean_gap"] == pytest.approx((0.35 + 0.18) / 2)
    # Both flat: BPR's advantage 0 is within the noise (2 x sqrt(0.25 / 100) = 0.1).
    flat = analysis.bpr_claim_check(factors, [0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5], num_images=100)
    assert flat.verdict == "within noise" and flat.numbers["noise"] == pytest.approx(0.1)
    # BPR gains on average by more than the noise, but falls below vanilla at C=0.5: not reproduced.
    mixed = analysis.bpr_claim_check(factors, [0.40, 0.75, 0.8, 0.8], [0.75, 0.70, 0.8, 0.8], num_images=5000)
    assert mixed.verdict == "not reproduced" and "falls below vanilla" in mixed.sentence
    worse = analysis.bpr_claim_check(factors, [0.7, 0.75, 0.8, 0.8], [0.3, 0.5, 0.8, 0.8], num_images=5000)
    assert worse.verdict == "contradicted"
    untested = analysis.bpr_claim_check([0.75, 1.5], [0.7, 0.8], [0.7, 0.8], num_images=100)
    assert untested.verdict == "not tested" and untested.numbers["reference_capacity_factor"] == 1.5
    with pytest.raises(ValueError, match="accuracies"):
        analysis.bpr_claim_check(factors, [0.5], [0.5], num_images=10)

"""Memory plans of MoE models (sparse_experts.models.sizing): expert weights split over the "expert" axis, the
MoE layer's activations per routing group, by hand; dense plans unchanged; bad input. The dense plans' own
tests are in tests/test_sharding.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from sparse_experts import models, parallel
from sparse_experts.models import MoeConfig, ViT, param_count, vit_config
from sparse_experts.models.sizing import moe_layer_activation_bytes


def tiny_moe(**moe):
    """Two layers, the second an MoE: N = 2 tokens (1 patch + class), D = 4, H = 8, A = 1, 16 pixels per
    patch, float32, no head; E = 2 experts, k = 1, capacity factor 1, routing groups of G = 2 images."""
    moe = dict(num_experts=2, k=1, capacity_factor=1.0, placement=(1,), group_size=2, **moe)
    return vit_config("mu/4", image_size=4, width=4, mlp_dim=8, num_heads=1, depth=2, num_classes=0,
                      channels=1, moe=MoeConfig(**moe))  # fmt: skip


def test_moe_layer_activations_by_hand():
    N, D, H, E, K, G, c, f = 2, 4, 8, 2, 1, 2, 4, 4
    S = G * N  # 4 tokens per group
    C = 2  # ceil(S x k x capacity factor / E) = ceil(4 x 1 x 1 / 2)
    parts = moe_layer_activation_bytes(tiny_moe())
    assert parts == {
        "router": 2 * S * E * f,  # logits and gates [S, E] in float32 (no copy: the tokens are float32)
        "routing": 3 * S * K * 4,  # expert, slot, weight [S, K]
        "buffers": 2 * E * C * D * c,  # the experts' inputs and outputs [E, C, D]
        "hidden": 3 * E * C * H * c,  # pre-gelu, tanh, gelu [E, C, H]
        "images": G,
        "capacity": C,
    }
    assert sum(parts[k] for k in ("router", "routing", "buffers", "hidden")) == 64 + 48 + 128 + 384
    # Split over "mlp": only the hidden units shrink. Expert choice: token and weight [E, C] per group.
    assert moe_layer_activation_bytes(tiny_moe(), {"mlp": 2})["hidden"] == 3 * E * C * H * c // 2
    choice = moe_layer_activation_bytes(tiny_moe(router="expert_choice"))
    assert choice["routing"] == 2 * E * C * 4 and choice["capacity"] == C
    # bfloat16 compute: buffers and hidden at 2 bytes, plus the router's float32 copy of the tokens [S, D].
    half = moe_layer_activation_bytes(tiny_moe().replace(dtype="bfloat16"))
    assert half["router"] == S * D * f + 2 * S * E * f and half["buffers"] == 2 * E * C * D * 2


def test_moe_activations_and_plan_by_hand():
    config = tiny_moe()
    # Per image, the dense layer (tests/test_sharding.py): stream 192, attention 144, MLP 3NHc = 192 -> 528;
    # the MoE layer keeps stream and attention (336 per image), and 624 per group of 2 images for its MLP.
    dense_layer, moe_layer, outside = 2 * 528, 2 * 336 + 624, 176  # two images, one group
    assert moe_layer == 1296
    working = moe_layer // 2  # half the largest layer
    kept = dense_layer + moe_layer
    assert models.activation_bytes(config, images=2) == (kept + working + 2 * outside, moe_layer)
    block_inputs = 2 * 2 * 2 * 4 * 4  # images x L x N x D x c
    remat = block_inputs + moe_layer + working + 2 * outside
    assert models.activation_bytes(config, images=2, remat=True) == (remat, moe_layer)
    assert models.activation_bytes(config, images=4)[0] == 2 * (kept + working + 2 * outside)

    # Parameters: experts E (D H + H + H D + D) = 2 x 76 and the router D E = 8 replace a dense MLP (76).
    experts, router, dense_mlp = 2 * 76, 4 * 2, 76
    total = param_count(config)
    assert total - param_count(config.replace(moe=None)) == experts + router - dense_mlp
    # Batch 4 on {"expert": 2}: 2 images (one group) per device, one expert each, the rest replicated.
    plan = models.memory_plan(config, {"expert": 2}, 4, "adam")
    assert plan.images_per_device == 2 and plan.param_count == total
    assert plan.expert_params == 4 * experts // 2
    assert plan.params == 4 * (total - experts) + 4 * experts // 2
    assert plan.optimizer_state == 2 * plan.params and plan.gradients == plan.params
    assert plan.activations == kept + working + 2 * outside
    assert plan.total == 4 * plan.params + plan.activations
    assert "C=2 slots per expert per group of 2 image(s); 1 experts per device" in str(plan)


def test_moe_plan_matches_xla_buffer_assignment_as_a_dense_plan_does():
    """A real measurement: XLA's temp buffers of a jitted gradient through V-MoE layers (indices dispatch,
    float32, CPU) against the plan; the MoE model is planned as closely as its dense twin (0.92 and 0.87
    measured with jax 0.10.2)."""

    def ratio(config):
        graphdef, params, rest = nnx.split(
            nnx.eval_shape(lambda: ViT(config, rngs=nnx.Rngs(0))), nnx.Param, ...
        )

        def loss(params, rest, images):
            return jnp.mean(nnx.merge(graphdef, params, rest)(images) ** 2)

        images = jax.ShapeDtypeStruct((16, 32, 32, 3), jnp.float32)
        compiled = jax.jit(jax.grad(loss)).lower(params, rest, images).compile()
        return (
            models.memory_plan(config, {"data": 1}, 16).activations
            / compiled.memory_analysis().temp_size_in_bytes
        )

    dense = vit_config("mu/4", image_size=32, num_classes=10)  # N = 65, D = 64, H = 256, L = 4
    moe = dense.replace(moe=MoeConfig(num_experts=8, k=2, placement="every-2"))  # MoE in layers 1 and 3
    dense_ratio, moe_ratio = ratio(dense), ratio(moe)
    assert 0.8 < moe_ratio < 1.2 and abs(moe_ratio - dense_ratio) < 0.1, (moe_ratio, dense_ratio)


def test_doubling_the_expert_axis_halves_the_expert_weights():
    config = vit_config(
        "mu/4", image_size=16, num_classes=10, moe=MoeConfig(num_experts=8, placement="every-2")
    )
    plans = {x: models.memory_plan(config, {"data": 8 // x, "expert": x}, 32) for x in (1, 2, 4, 8)}
    assert plans[1].expert_params > 0
    for x in (1, 2, 4):
        assert plans[x].expert_params == 2 * plans[2 * x].expert_params
        # Everything else is the same: dense weights replicated, 4 images per device either way.
        assert plans[x].params - plans[x].expert_params == plans[8].params - plans[8].expert_params
        assert plans[x].activations == plans[8].activations and plans[x].images_per_device == 4
        assert plans[x].optimizer_state - plans[2 * x].optimizer_state == 2 * plans[2 * x].expert_params
    # Under the FSDP rules the expert weights' D axis is split over "data" as well: 8 devices share the
    # matrices (the biases [E, H] only over "expert").
    fsdp = models.memory_plan(config, {"data": 4, "expert": 2}, 32, rules=parallel.FSDP_RULES)
    assert plans[8].expert_params < fsdp.expert_params < 1.05 * plans[8].expert_params


def test_dense_plans_are_unchanged():
    """ViT-22B on 256 x 4 with FSDP and remat: the figure notebooks 01 and 07 show (6.48 GiB), to the byte,
    as before MoE layers were sized; dense plans hold no expert weights."""
    config = vit_config("22B/14")
    plan = models.memory_plan(config, {"data": 256, "model": 4}, 4096, rules=parallel.FSDP_RULES, remat=True)
    assert plan.total == 6_961_235_360 and plan.expert_params == 0
    assert not any("MoE" in note for note in plan.notes)
    # A dense model on a mesh with an "expert" axis: the batch is split over it, nothing else changes.
    assert models.memory_plan(vit_config("mu/4"), {"data": 2, "expert": 3}, 12).expert_params == 0


def test_moe_plan_rejects_bad_input():
    with pytest.raises(ValueError, match=r"mesh_shape\['expert'\]=3 does not divide MoeConfig.num_experts=2; "
                                         r"use an expert axis size in \[1, 2\]"):  # fmt: skip
        models.memory_plan(tiny_moe(), {"expert": 3}, 6)
    with pytest.raises(ValueError, match=r"batch_size=6 gives 3 images per device \(2 data shards\), not a "
                                         r"multiple of MoeConfig.group_size=2; use a batch_size that is a "
                                         r"multiple of 4"):  # fmt: skip
        models.memory_plan(tiny_moe(), {"expert": 2}, 6)
    with pytest.raises(ValueError, match=r"images=3 does not fill whole routing groups of 2 images"):
        models.activation_bytes(tiny_moe(), images=3)
    with pytest.raises(ValueError, match=r"has no MoE layers \(moe=None\)"):
        moe_layer_activation_bytes(tiny_moe().replace(moe=None))
    # Soft MoE routes each image on its own: any batch that splits over the devices is fine.
    soft = tiny_moe(router="soft")
    assert models.memory_plan(soft, {"expert": 2}, 6).images_per_device == 3

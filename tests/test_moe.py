"""The V-MoE layer (sparse_experts.routing.MoeMlp) and V-MoE models (models.py with ``moe`` set).

Layers are created under one compiled program (:func:`layer`) and called through one compiled program per
set of call options (:func:`call`), so the file stays fast on 2 CPU cores.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparse_experts import models, routing
from sparse_experts.models import MoeConfig, flops_per_image, param_count, vit_config
from sparse_experts.routing import MoeMlp

FAST_COMPILE = {"xla_backend_optimization_level": 0}
RECORD_KEYS = {"combine_weights", "gates", "aux", "load", "dropped_fraction", "tokens_per_image", "capacity"}
AUX_KEYS = {"importance", "load", "switch", "z_loss"}
B, N, D, H, E = 4, 6, 8, 16, 4


@functools.cache
def layer(**options) -> MoeMlp:
    """An initialised MoeMlp (width D, hidden H, E experts) with these constructor options."""
    options = {"slots_per_expert": 2, **options}
    return nnx.jit(lambda: MoeMlp(D, H, E, rngs=nnx.Rngs(0), **options))()


@functools.partial(jax.jit, static_argnums=(0, 4), compiler_options=FAST_COMPILE)
def _call(graphdef, state, x, rng, kwargs):
    return nnx.merge(graphdef, state)(x, rng=rng, **dict(kwargs))


def call(module: MoeMlp, x, *, rng=None, **kwargs):
    """module(x, rng=rng, **kwargs) as one compiled program (cached per graph and options)."""
    graphdef, state = nnx.split(module)
    return _call(graphdef, state, x, rng, tuple(sorted(kwargs.items())))


def inputs(batch: int = B, seed: int = 0) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (batch, N, D))


def expert_outputs(module: MoeMlp, x) -> jax.Array:
    """Every expert on every token, by hand: [B, N, E, D]."""
    h = jnp.einsum("BND,EDH->BNEH", x, module.wi[...]) + module.bi[...]
    return jnp.einsum("BNEH,EHD->BNED", jax.nn.gelu(h), module.wo[...]) + module.bo[...]


# ---------------------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("router", ["top_k", "expert_choice", "soft"])
def test_shapes_and_record_keys(router):
    y, record = call(layer(router=router, group_size=2), inputs(), train=False)
    assert y.shape == (B, N, D) and set(record) == RECORD_KEYS and set(record["aux"]) == AUX_KEYS
    assert record["combine_weights"].shape == record["gates"].shape == (B, N, E)
    assert record["load"].shape == (E,) and record["tokens_per_image"].shape == (B,)
    assert record["dropped_fraction"].shape == ()
    assert all(np.isfinite(v) for v in record["aux"].values())
    weights = np.asarray(record["combine_weights"])
    assert (weights >= 0).all() and (weights <= np.asarray(record["gates"]) + 1e-6).all()


def test_top_k_combine_weights_follow_the_routing():
    module = layer(router="top_k", k=2, capacity_factor=0.5, group_size=2)
    _, record = call(module, inputs(), train=False)
    gates = np.asarray(record["gates"]).reshape(B // 2, 2 * N, E)
    C = routing.layer_capacity("top_k", 2 * N, E, 2, 0.5)
    assert record["capacity"] == C
    assignment = routing.top_k_routing(gates, 2, C)
    kept = np.asarray(assignment.slot) < C
    expected = np.zeros((B // 2, 2 * N, E))
    for g, s, c in zip(*np.nonzero(kept), strict=True):
        expected[g, s, assignment.expert[g, s, c]] += gates[g, s, assignment.expert[g, s, c]]
    np.testing.assert_allclose(record["combine_weights"], expected.reshape(B, N, E), atol=1e-6)
    # rows sum to the kept gates; dropped choices have weight 0
    kept_gates = np.sum(np.where(kept, np.asarray(assignment.weight), 0), axis=-1).reshape(B, N)
    np.testing.assert_allclose(np.sum(record["combine_weights"], -1), kept_gates, atol=1e-6)
    assert 0 < float(record["dropped_fraction"]) == pytest.approx(1 - kept.mean())
    np.testing.assert_array_equal(record["load"], np.bincount(assignment.expert[kept], minlength=E))
    np.testing.assert_array_equal(record["tokens_per_image"], kept.reshape(B, N * 2).sum(-1))


def test_expert_choice_record():
    module = layer(router="expert_choice", capacity_factor=1.0, group_size=1)
    _, record = call(module, inputs(), train=False)
    C = routing.layer_capacity("expert_choice", N, E, 2, 1.0)  # k is not used: ceil(6 / 4) = 2
    assert record["capacity"] == C == 2
    np.testing.assert_array_equal(record["load"], np.full(E, B * C))
    taken = np.asarray(record["combine_weights"]) > 0
    assert taken.sum(axis=1).tolist() == [[C] * E] * B  # each expert takes C tokens of each image
    np.testing.assert_allclose(record["tokens_per_image"], np.full(B, E * C))
    assert float(record["dropped_fraction"]) == pytest.approx(np.mean(~taken.any(-1)))


def test_capacity_override_at_call_time_drops_more():
    module = layer(router="top_k", k=1, capacity_factor=1.0)
    x = inputs()
    dropped = {
        cf: float(call(module, x, capacity_factor=cf)[1]["dropped_fraction"]) for cf in [0.2, 1.0, 8.0]
    }
    assert dropped[0.2] > dropped[1.0] >= dropped[8.0] == 0.0
    assert dropped[0.2] >= 1 - routing.capacity(N, E, 1, 0.2) * E / N - 1e-6


def test_eval_capacity_factor_applies_at_eval_only():
    module = layer(router="top_k", k=1, capacity_factor=2.0, eval_capacity_factor=0.5)
    x = inputs()
    assert call(module, x, train=False)[1]["capacity"] == routing.capacity(N, E, 1, 0.5)
    assert call(module, x, train=True, rng=jax.random.key(0))[1]["capacity"] == routing.capacity(N, E, 1, 2.0)


def test_batch_priority_changes_which_tokens_are_dropped():
    module = layer(router="top_k", k=1, capacity_factor=0.5, group_size=B)
    x = inputs(seed=3)
    vanilla = call(module, x, batch_priority=False)[1]
    bpr = call(module, x, batch_priority=True)[1]
    kept_vanilla = np.asarray(vanilla["combine_weights"]).sum(-1) > 0
    kept_bpr = np.asarray(bpr["combine_weights"]).sum(-1) > 0
    assert (kept_vanilla != kept_bpr).any()
    # BPR keeps the most confident tokens: its kept tokens carry at least as much total gate
    assert np.sum(bpr["combine_weights"]) >= np.sum(vanilla["combine_weights"]) - 1e-6
    # ... and moves compute between the images of the group
    assert not np.array_equal(vanilla["tokens_per_image"], bpr["tokens_per_image"])


def test_noise_at_training_time_only():
    module = layer(router="top_k", noise_std=1.0)
    x = inputs()
    eval_a, eval_b = call(module, x, train=False), call(module, x, train=False)
    np.testing.assert_array_equal(eval_a[1]["gates"], eval_b[1]["gates"])
    logits = np.einsum("BND,DE->BNE", np.asarray(x), np.asarray(module.router_kernel[...]))
    np.testing.assert_allclose(eval_a[1]["gates"], jax.nn.softmax(logits), atol=1e-6)
    train_a = call(module, x, train=True, rng=jax.random.key(1))
    train_b = call(module, x, train=True, rng=jax.random.key(2))
    assert not np.allclose(train_a[1]["gates"], train_b[1]["gates"])
    assert not np.allclose(train_a[1]["gates"], eval_a[1]["gates"])
    assert float(train_a[1]["aux"]["load"]) > 0
    quiet = layer(router="top_k", noise_std=0.0)  # noise_std=0: train equals eval
    np.testing.assert_array_equal(
        call(quiet, x, train=True, rng=jax.random.key(1))[0], call(quiet, x, train=False)[0]
    )


@pytest.mark.parametrize("router", ["top_k", "expert_choice", "soft"])
def test_gradients_finite_at_init(router):
    module = layer(router=router)
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def loss(params, x):
        y, record = nnx.merge(graphdef, params, rest)(x, train=router != "soft", rng=jax.random.key(0))
        return jnp.mean(y**2) + sum(record["aux"].values())

    grads = jax.jit(jax.grad(loss), compiler_options=FAST_COMPILE)(params, inputs())
    leaves = jax.tree.leaves(grads)
    assert leaves and all(np.isfinite(g).all() for g in leaves)
    assert any(np.abs(g).sum() > 0 for g in leaves)


@pytest.mark.parametrize("router", ["top_k", "expert_choice"])
def test_large_capacity_equals_the_dense_mixture(router):
    """k = E and room for every token: y = sum_e gate_e * expert_e(x), by hand."""
    module = layer(router=router, k=E, capacity_factor=100.0, group_size=2)
    x = inputs()
    y, record = call(module, x, train=False)
    gates = jax.nn.softmax(jnp.einsum("BND,DE->BNE", x, module.router_kernel[...]))
    expected = jnp.einsum("BNE,BNED->BND", gates, expert_outputs(module, x))
    np.testing.assert_allclose(y, expected, atol=1e-5)
    np.testing.assert_allclose(record["combine_weights"], gates, atol=1e-6)
    assert float(record["dropped_fraction"]) == 0.0


def test_soft_moe_by_hand():
    module = layer(router="soft", slots_per_expert=2)
    x = inputs()
    y, record = call(module, x)
    slots = np.asarray(module.slots[...]).reshape(E * 2, D)
    slots = slots / np.linalg.norm(slots, axis=-1, keepdims=True)
    tokens = np.asarray(x) / np.linalg.norm(np.asarray(x), axis=-1, keepdims=True)
    logits = np.einsum("BND,MD->BNM", tokens * float(module.scale[...]), slots)
    dispatch_w, combine_w = jax.nn.softmax(logits, axis=1), jax.nn.softmax(logits, axis=2)
    buffers = jnp.einsum("BNM,BND->BMD", dispatch_w, x).reshape(B, E, 2, D)
    out = module.experts(buffers).reshape(B, E * 2, D)
    np.testing.assert_allclose(y, jnp.einsum("BNM,BMD->BND", combine_w, out), atol=1e-4)
    np.testing.assert_allclose(record["combine_weights"], combine_w.reshape(B, N, E, 2).sum(-1), atol=1e-5)
    np.testing.assert_allclose(np.sum(record["combine_weights"], -1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="router='soft' has a fixed number of slots"):
        module(x, k=1)


def test_bad_inputs_give_clear_errors():
    module = layer(router="top_k", group_size=3)
    with pytest.raises(ValueError, match="B=4 is not divisible by group_size=3"):
        module(inputs())
    with pytest.raises(ValueError, match=f"k=5 exceeds num_experts={E}"):
        layer(router="top_k")(inputs(), k=5)
    with pytest.raises(ValueError, match="router='dense' is unknown"):
        MoeMlp(D, H, E, rngs=nnx.Rngs(0), router="dense")
    with pytest.raises(ValueError, match="capacity_factor=0 must be > 0"):
        layer(router="top_k")(inputs(), capacity_factor=0)


# ---------------------------------------------------------------------------------------------------------
# V-MoE models
# ---------------------------------------------------------------------------------------------------------
TINY = dict(image_size=16, num_classes=5, head_zero_init=False)


def build(config: models.VitConfig) -> models.ViT:
    """A model with random parameters from numpy and real noise keys (no per-shape init compiles)."""
    model = nnx.eval_shape(lambda: models.ViT(config, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    params = {
        path: jnp.asarray(rng.normal(size=v.shape) * 0.2 + (path[-1] == "scale"), dtype=v.dtype)
        for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    flat_keys = nnx.to_flat_state(nnx.state(model, nnx.RngKey))
    keys = {path: jax.random.key(i) for i, (path, _) in enumerate(flat_keys)}
    counts = {
        path: jnp.zeros((), jnp.uint32) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.RngCount))
    }
    nnx.update(model, *(nnx.from_flat_state(v) for v in (params, keys, counts)))
    return model


def test_param_counts_by_hand():
    """mu/4 at 16 pixels: D=64, H=256, N=17, 4 layers, 5 classes."""
    dense = 3136 + 64 + 1088 + 4 * 49984 + 128 + 325  # patches, cls, posemb, blocks, norm, head
    assert param_count(vit_config("mu/4", **TINY)) == dense == 204677
    config = vit_config("mu/4", **TINY, moe=MoeConfig(num_experts=4, k=2))  # every-2: layers 1, 3
    expert = 2 * 64 * 256 + 256 + 64
    assert param_count(config) == dense + 2 * (3 * expert + 64 * 4)  # 3 more experts and a router per layer
    assert param_count(config, active=True) == param_count(config) - 2 * 2 * expert
    assert param_count(vit_config("mu/4", **TINY), active=True) == dense
    soft = config.replace(moe=MoeConfig(num_experts=4, router="soft", capacity_factor=1.0))
    assert param_count(soft, active=True) == param_count(soft) == dense + 2 * (3 * expert + 4 * 5 * 64 + 1)


@pytest.mark.parametrize("placement, expected", [("every-2", (1, 3)), ("last-2", (1, 3)), ("last-1", (3,))])
def test_placement_puts_moe_layers_where_asked(placement, expected):
    config = vit_config("mu/4", **TINY, moe=MoeConfig(num_experts=2, k=1, placement=placement))
    model = nnx.eval_shape(lambda: models.ViT(config, rngs=nnx.Rngs(0)))
    moe = tuple(i for i, block in enumerate(model.encoder.blocks) if isinstance(block.mlp, MoeMlp))
    assert moe == expected == models.moe_layers(config)
    deep = vit_config("mu/4", **TINY, depth=8, moe=MoeConfig(num_experts=2, k=1, placement=placement))
    model = nnx.eval_shape(lambda: models.ViT(deep, rngs=nnx.Rngs(0)))
    moe = tuple(i for i, block in enumerate(model.encoder.blocks) if isinstance(block.mlp, MoeMlp))
    assert moe == {"every-2": (1, 3, 5, 7), "last-2": (5, 7), "last-1": (7,)}[placement]


@pytest.mark.parametrize("parallel_block", [False, True])
def test_vmoe_model_runs_end_to_end(parallel_block):
    moe = MoeConfig(num_experts=4, k=2, group_size=2, batch_priority=True, capacity_factor=1.0)
    config = vit_config("mu/4", **TINY, parallel_block=parallel_block, moe=moe)
    model = build(config)
    graphdef, state = nnx.split(model)
    images = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))

    @functools.partial(jax.jit, static_argnums=2, compiler_options=FAST_COMPILE)
    def run(state, images, capacity_factor):
        overrides = None if capacity_factor is None else {"capacity_factor": capacity_factor}
        return nnx.merge(graphdef, state)(images, return_stats=True, moe_overrides=overrides)

    logits, stats = run(state, images, None)
    assert logits.shape == (4, 5) and np.isfinite(logits).all()
    assert sorted(stats["moe"]) == [1, 3]
    for record in stats["moe"].values():
        assert set(record) == RECORD_KEYS and record["combine_weights"].shape == (4, 17, 4)
    _, cut = run(state, images, 0.25)
    assert float(cut["moe"][1]["dropped_fraction"]) > float(stats["moe"][1]["dropped_fraction"])


def test_moe_parameters_carry_logical_axes():
    config = vit_config("mu/4", **TINY, moe=MoeConfig(num_experts=2, k=1))
    model = nnx.eval_shape(lambda: models.ViT(config, rngs=nnx.Rngs(0)))
    for path, variable in nnx.to_flat_state(nnx.state(model.encoder.blocks[1].mlp, nnx.Param)):
        axes = variable.get_metadata()["out_sharding"]
        assert len(axes) == len(variable.shape), (path, axes)
        if path[-1] in ("wi", "bi", "wo", "bo"):
            assert axes[0] == "expert" and set(axes[1:]) <= {"embed", "mlp"}, (path, axes)


@pytest.mark.parametrize("router", ["top_k", "expert_choice", "soft"])
def test_moe_flops_match_xla_cost_analysis(router):
    """Within 10% of XLA's count on a tiny V-MoE (XLA also counts softmax, norm and routing arithmetic)."""
    moe = MoeConfig(num_experts=4, k=2, group_size=2, capacity_factor=1.25, router=router, placement=(1,))
    config = vit_config("mu/4", image_size=32, width=128, mlp_dim=512, num_heads=2, depth=2, moe=moe)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: models.ViT(config, rngs=nnx.Rngs(0))))
    batch = jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x), compiler_options=FAST_COMPILE)
    cost = forward.lower(state, batch).compile().cost_analysis()
    ratio = cost["flops"] / 4 / flops_per_image(config)
    print(router, ratio)
    assert 0.9 <= ratio <= 1.1, ratio
    if router != "soft":
        assert flops_per_image(config, capacity_factor=0.5) < flops_per_image(config)

"""The V-MoE layer (sparse_experts.models.MoeMlp) and V-MoE models (models.py with ``moe`` set).

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
from hypothesis import given
from hypothesis import strategies as st

from sparse_experts import models, routing
from sparse_experts.models import MoeConfig, MoeMlp, flops_per_image, param_count, vit_config

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
    mlp = module.experts
    h = jnp.einsum("BND,EDH->BNEH", x, mlp.wi[...]) + mlp.bi[...]
    return jnp.einsum("BNEH,EHD->BNED", jax.nn.gelu(h), mlp.wo[...]) + mlp.bo[...]


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
    # The layer's router runs in full float32 (on a GPU the default matmul precision is TF32).
    gates = jax.nn.softmax(jnp.einsum("BND,DE->BNE", x, module.router_kernel[...], precision="highest"))
    expected = jnp.einsum("BNE,BNED->BND", gates, expert_outputs(module, x))
    np.testing.assert_allclose(y, expected, atol=1e-5)
    np.testing.assert_allclose(record["combine_weights"], gates, atol=1e-6)
    assert float(record["dropped_fraction"]) == 0.0


def test_soft_moe_by_hand():
    module = layer(router="soft", slots_per_expert=2)
    x = inputs()
    # The layer and the hand computation in full float32 matmuls: on a GPU the default is TF32, and the two
    # sides' matmuls (different programs, different kernels) would differ by its rounding, ~1e-3.
    with jax.default_matmul_precision("highest"):
        y, record = call(module, x)
        slots = np.asarray(module.slots[...]).reshape(E * 2, D)
        slots = slots / np.linalg.norm(slots, axis=-1, keepdims=True)
        tokens = np.asarray(x) / np.linalg.norm(np.asarray(x), axis=-1, keepdims=True)
        logits = np.einsum("BND,MD->BNM", tokens * float(module.scale[...]), slots)
        dispatch_w, combine_w = jax.nn.softmax(logits, axis=1), jax.nn.softmax(logits, axis=2)
        buffers = jnp.einsum("BNM,BND->BMD", dispatch_w, x).reshape(B, E, 2, D)
        out = module.apply_experts(buffers).reshape(B, E * 2, D)
        expected = jnp.einsum("BNM,BMD->BND", combine_w, out)
    np.testing.assert_allclose(y, expected, atol=1e-4)
    np.testing.assert_allclose(record["combine_weights"], combine_w.reshape(B, N, E, 2).sum(-1), atol=1e-5)
    np.testing.assert_allclose(np.sum(record["combine_weights"], -1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="router='soft' has a fixed number of slots"):
        module(x, k=1)


def test_renormalize_option():
    plain = layer(router="top_k", k=2, capacity_factor=0.5, group_size=2)
    renormalized = layer(router="top_k", k=2, capacity_factor=0.5, group_size=2, renormalize=True)
    assert renormalized.renormalize and not plain.renormalize
    x = inputs()
    y_plain, raw = call(plain, x)
    y, record = call(renormalized, x)
    raw_weights, weights = np.asarray(raw["combine_weights"]), np.asarray(record["combine_weights"])
    processed = np.asarray(routing_processed(raw, "top_k", k=2, group_size=2))
    assert 0 < float(record["dropped_fraction"]) == float(raw["dropped_fraction"])  # same choices kept
    np.testing.assert_array_equal(record["load"], raw["load"])
    # Each token's kept weights, divided by their sum: rows sum to 1, or 0 when nothing was kept.
    total = raw_weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(
        weights, np.where(total > 0, raw_weights / np.where(total > 0, total, 1), 0), 1e-5
    )
    np.testing.assert_allclose(weights.sum(-1), processed.any(-1).astype(np.float32), atol=1e-5)
    expected = jnp.einsum("BNE,BNED->BND", weights, expert_outputs(renormalized, x))
    np.testing.assert_allclose(y, expected, atol=1e-5)
    assert not np.allclose(y, y_plain)
    with pytest.raises(TypeError, match="renormalize=1 is not allowed; expected True or False"):
        MoeMlp(D, H, E, rngs=nnx.Rngs(0), renormalize=1)


def test_bad_inputs_give_clear_errors():
    module = layer(router="top_k", group_size=3)
    with pytest.raises(ValueError, match="B=4 is not divisible by group_size=3"):
        module(inputs())
    with pytest.raises(ValueError, match=f"k=5 exceeds num_experts={E}"):
        layer(router="top_k")(inputs(), k=5)
    with pytest.raises(ValueError, match="router='dense' is not allowed; expected one of 'top_k'"):
        MoeMlp(D, H, E, rngs=nnx.Rngs(0), router="dense")
    with pytest.raises(ValueError, match="capacity_factor=0 is not allowed; expected a number > 0"):
        layer(router="top_k")(inputs(), capacity_factor=0)


# ---------------------------------------------------------------------------------------------------------
# Properties of the layer (hypothesis)
# ---------------------------------------------------------------------------------------------------------
def routing_processed(record, router: str, *, k: int, group_size: int, batch_priority: bool = False):
    """[B, N, E] bool: whether expert e processed token n, routed again per group with the routing primitives
    from the record's gates and capacity (traceable: runs inside the property tests' compiled program)."""
    gates = jnp.asarray(record["gates"])
    batch, tokens, experts = gates.shape
    grouped = gates.reshape(batch // group_size, group_size * tokens, experts)  # [G, S, E]
    C = int(record["capacity"])  # a Python int in the layer, an array once returned from jit
    if router == "top_k":
        assignment = routing.top_k_routing(grouped, k, C, batch_priority=batch_priority)
        kept = assignment.slot < C  # [G, S, K]
        one_hot = jax.nn.one_hot(assignment.expert, experts, dtype=jnp.int32)  # [G, S, K, E]
        processed = jnp.sum(one_hot * kept[..., None], axis=-2) > 0  # [G, S, E]
    else:
        token = routing.expert_choice_routing(grouped, C).token  # [G, E, C]
        taken = jnp.sum(jax.nn.one_hot(token, group_size * tokens, dtype=jnp.int32), axis=-2)  # [G, E, S]
        processed = jnp.swapaxes(taken, -1, -2) > 0
    return processed.reshape(batch, tokens, experts)


# (B, N, D, E, group_size): a few fixed shapes, so the number of compiled programs stays bounded. Each draw
# varies the data (tokens and router weights from a seed) and the call-time knobs, from small fixed lists:
# top-k has three (shape, k, capacity factor) cases, each with BPR on and off (6 programs); expert choice has
# two shapes times two capacity factors (4 programs). Every top-k case has fewer slots than choices.
PROPERTY_SHAPES = [(4, 6, 8, 4, 2), (2, 5, 6, 3, 1)]
TOP_K_CASES = [  # (shape, k, capacity factor): C = 3 of 12 tokens x 2, 4 of 12 x 1, 2 of 5 x 2
    (PROPERTY_SHAPES[0], 2, 0.5),
    (PROPERTY_SHAPES[0], 1, 1.25),
    (PROPERTY_SHAPES[1], 2, 0.5),
]
PROPERTY_CAPACITY_FACTORS = [0.5, 1.25]


@functools.cache
def shaped_layer(width: int, experts: int, **options) -> MoeMlp:
    return nnx.jit(lambda: MoeMlp(width, 2 * width, experts, rngs=nnx.Rngs(0), **options))()


@functools.partial(jax.jit, static_argnums=(0, 4), compiler_options=FAST_COMPILE)
def _call_with_router(graphdef, state, x, router_kernel, kwargs):
    """The layer with this router kernel on x; every expert on every token ``[B, N, E, D]`` (by experts());
    which expert processed which token ``[B, N, E]`` (:func:`routing_processed`). One program per call."""
    module = nnx.merge(graphdef, state)
    module.router_kernel[...] = router_kernel
    kwargs = dict(kwargs)
    y, record = module(x, **kwargs)
    B, N, D = x.shape
    every = jnp.broadcast_to(x[:, :, None, None, :], (B, N, module.num_experts, 1, D))  # [B, N, E, C=1, D]
    processed = routing_processed(
        record,
        module.router,
        k=kwargs.get("k", module.k),
        group_size=module.group_size,
        batch_priority=kwargs.get("batch_priority", module.batch_priority),
    )
    return y, record, module.apply_experts(every)[:, :, :, 0, :], processed


def check_layer_properties(router: str, shape, seed: int, **overrides):
    B_, N_, D_, E_, group_size = shape
    module = shaped_layer(D_, E_, router=router, group_size=group_size)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(B_, N_, D_)), jnp.float32)
    router_kernel = jnp.asarray(rng.normal(size=(D_, E_)), jnp.float32)  # spread-out gates, many drops
    graphdef, state = nnx.split(module)
    y, record, every_output, processed = _call_with_router(
        graphdef, state, x, router_kernel, tuple(sorted(overrides.items()))
    )
    processed = np.asarray(processed)
    k = overrides.get("k", module.k) if router == "top_k" else 1
    C = int(record["capacity"])
    assert C == routing.layer_capacity(router, group_size * N_, E_, k, overrides["capacity_factor"])
    weights, gates = np.asarray(record["combine_weights"]), np.asarray(record["gates"])
    # Zero wherever the expert did not process the token, the gate where it did (each expert takes a token at
    # most once, in either router).
    np.testing.assert_array_equal(weights[~processed], 0.0)
    np.testing.assert_allclose(weights, np.where(processed, gates, 0.0), rtol=1e-6, atol=0)
    # Load: per expert and group at most C (expert choice: exactly C); the record sums over groups.
    per_group = processed.reshape(B_ // group_size, group_size * N_, E_).sum(axis=1)  # [G, E]
    assert (per_group <= C).all()
    if router == "expert_choice":
        assert (per_group == C).all()
    load = np.asarray(record["load"])
    np.testing.assert_array_equal(load, per_group.sum(0))
    tokens_per_image = np.asarray(record["tokens_per_image"])
    np.testing.assert_array_equal(tokens_per_image, processed.reshape(B_, N_ * E_).sum(-1))
    assert tokens_per_image.sum() == load.sum() == processed.sum()
    dropped = float(record["dropped_fraction"])
    assert 0.0 <= dropped <= 1.0
    if router == "top_k":
        assert dropped == pytest.approx(1 - load.sum() / (B_ * N_ * k), abs=1e-6)
    else:  # the fraction of tokens no expert took
        assert dropped == pytest.approx(np.mean(~processed.any(-1)), abs=1e-6)
    # The output is the combine-weighted sum of the experts' outputs on each token.
    expected = np.einsum("BNE,BNED->BND", weights, np.asarray(every_output))
    np.testing.assert_allclose(y, expected, atol=2e-5, rtol=1e-5)


@given(st.sampled_from(TOP_K_CASES), st.booleans(), st.integers(0, 2**31 - 1))
def test_top_k_layer_properties(case, batch_priority, seed):
    shape, k, capacity_factor = case
    check_layer_properties(
        "top_k", shape, seed, k=k, capacity_factor=capacity_factor, batch_priority=batch_priority
    )


@given(
    st.sampled_from(PROPERTY_SHAPES), st.integers(0, 2**31 - 1), st.sampled_from(PROPERTY_CAPACITY_FACTORS)
)
def test_expert_choice_layer_properties(shape, seed, capacity_factor):
    check_layer_properties("expert_choice", shape, seed, capacity_factor=capacity_factor)


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
    experts = {}
    for path, variable in nnx.to_flat_state(nnx.state(model.encoder.blocks[1].mlp, nnx.Param)):
        axes = variable.get_metadata()["out_sharding"]
        assert len(axes) == len(variable.shape), (path, axes)
        if path[0] == "experts":
            experts[path[1:]] = (axes, variable.shape)
    D, H = config.width, config.mlp_dim
    assert experts == {  # the one MLP stacked over E=2, "expert" as the leading logical axis
        ("wi",): (("expert", "embed", "mlp"), (2, D, H)),
        ("bi",): (("expert", "mlp"), (2, H)),
        ("wo",): (("expert", "mlp", "embed"), (2, H, D)),
        ("bo",): (("expert", "embed"), (2, D)),
    }


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

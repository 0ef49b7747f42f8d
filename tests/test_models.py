"""ViT configs, recipe flags, parameter counts, FLOPs and forward equivalences (sparse_experts.models).

Speed on 2 CPU cores is mostly XLA compile time: an eager initialisation compiles one random-number kernel per
parameter shape and an eager forward one kernel per op. So tests build models abstractly and fill them from
numpy (:func:`build`; one test covers the real initialisers), and run forwards as one program compiled with
the unoptimised backend (:func:`forward`): the programs are tiny, compile time is what counts.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparse_experts import models
from sparse_experts.models import MoeConfig, VitConfig, flops_per_image, param_count, vit_config

# A micro model every test can afford: P = 16 patches, N = 17 tokens with the class token.
TINY = dict(image_size=16, num_classes=5, head_zero_init=False)


def tiny(**overrides) -> VitConfig:
    return vit_config("mu/4", **{**TINY, **overrides})


def build(config: VitConfig, seed: int = 0) -> models.ViT:
    """A model of this config with random parameters from numpy (no per-shape compiles)."""
    model = nnx.eval_shape(lambda: models.ViT(config, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    values = {
        path: jnp.asarray(rng.normal(size=v.shape) * 0.2 + (path[-1] == "scale"), dtype=v.dtype)
        for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    nnx.update(model, nnx.from_flat_state(values))
    return model


FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.partial(jax.jit, static_argnums=(0, 3), compiler_options=FAST_COMPILE)
def _forward(graphdef, state, x, kwargs):
    return nnx.merge(graphdef, state)(x, **dict(kwargs))


def forward(model: models.ViT, x: jax.Array, **kwargs):
    """model(x, **kwargs) as one compiled program."""
    graphdef, state = nnx.split(model)
    return _forward(graphdef, state, x, tuple(sorted(kwargs.items())))


def images(config: VitConfig, batch: int = 2, seed: int = 0) -> jax.Array:
    shape = (batch, config.image_size, config.image_size, config.channels)
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype=jnp.float32)  # numpy: no compile


def params(model) -> dict[tuple, jax.Array]:
    """Flat {path: value} of the model's parameters."""
    return {path: v[...] for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def names(config: VitConfig) -> set[str]:
    """The set of parameter leaf names in an (abstract) model of this config."""
    model = nnx.eval_shape(lambda: models.ViT(config, rngs=nnx.Rngs(0)))
    return {str(path[-1]) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}


# ---------------------------------------------------------------------------------------------------------
# Size strings
# ---------------------------------------------------------------------------------------------------------
# (D, L, H, A) as published (big_vision; ViT-22B Table 1).
PUBLISHED = {
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
    "22B": (6144, 48, 24576, 48),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_size_strings_decode_to_the_published_shapes(name):
    config = vit_config(f"{name}/14")
    assert (config.width, config.depth, config.mlp_dim, config.num_heads) == PUBLISHED[name]
    assert config.patch_size == 14 and config.name == f"{name}/14"
    assert vit_config(f"{name}/7").patch_size == 7  # any patch size after the slash


@pytest.mark.parametrize(
    "name, patch", [(n, p) for n, p in zip(models.SIZES, [4, 16, 16, 16, 16, 14, 14, 14, 14], strict=True)]
)
def test_every_size_runs_at_tiny_width(name, patch):
    """Each size string decodes and traces a forward with its recipe flags, at a tiny width and depth
    (abstractly: shapes and dtypes, no compile; the other tests run real forwards)."""
    config = vit_config(
        f"{name}/{patch}", width=16, depth=2, mlp_dim=32, num_heads=2, image_size=2 * patch, num_classes=3
    )
    assert config.num_patches == 4
    graphdef, state = nnx.split(nnx.eval_shape(lambda: models.ViT(config, rngs=nnx.Rngs(0))))
    logits, stats = jax.eval_shape(
        lambda state, x: nnx.merge(graphdef, state)(x, return_stats=True), state, images(config)
    )
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    assert stats["attn_max_logit"].shape == (2,)
    assert config.parallel_block == (name == "22B") and config.qk_norm == (name == "22B")


def test_original_vit_counts():
    """The original ViT counts (class token, biases, LayerNorm, 224 px, 1000 classes; the same as timm's)."""
    assert param_count(vit_config("B/16", image_size=224, num_classes=1000)) == 86_567_656
    assert param_count(vit_config("Ti/16")) == 5_717_416
    assert param_count(vit_config("S/16")) == 22_050_664
    assert param_count(vit_config("L/16")) == 304_326_632
    assert param_count(vit_config("H/14")) == 632_045_800
    # ViT-G/14 without a head: 1843M in Zhai et al. (2022) and the ViT-22B paper's Table 1.
    assert param_count(vit_config("G/14", pool="gap", num_classes=0)) == 1_842_772_352


def test_vit22b_count():
    """ViT-22B's 21.743B (Table 1) is its 48 layers' weight matrices, 12 L D^2; the whole model adds the
    patch and position embeddings, MLP biases, norm scales and (here) a 1000-class head."""
    config = vit_config("22B/14")
    assert param_count(config) == 21_756_396_520
    assert param_count(config.replace(num_classes=0)) == 21_750_251_520
    model = nnx.eval_shape(lambda: models.ViT(config.replace(scan_layers=True), rngs=nnx.Rngs(0)))
    matrices = sum(
        math.prod(v.shape)
        for path, v in nnx.to_flat_state(nnx.state(model.encoder.blocks, nnx.Param))
        if str(path[-1]).endswith("kernel")
    )
    assert matrices == 12 * 48 * 6144**2 == 21_743_271_936
    assert config.replace(scan_layers=True) != config and param_count(config.replace(scan_layers=True)) == (
        param_count(config)
    )


def test_real_initialisers():
    """Seeded, documented initial values: zero head and biases, unit norm scales, distinct stacked layers."""
    config = tiny(head_zero_init=True, scan_layers=True)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)  # one compile, not one per parameter shape
    def init(seed):
        return nnx.state(models.ViT(config, rngs=nnx.Rngs(jax.random.key(seed))), nnx.Param)

    values = {path: v[...] for path, v in nnx.to_flat_state(init(0))}
    assert param_count(config) == sum(v.size for v in values.values())
    again, other = nnx.to_flat_state(init(0)), dict(nnx.to_flat_state(init(1)))
    assert all(bool(jnp.all(values[path] == v[...])) for path, v in again)  # deterministic
    assert not bool(jnp.allclose(other[("posemb",)][...], values[("posemb",)]))  # and seeded
    assert not bool(jnp.any(values[("head",)])) and not bool(jnp.any(values[("patch_bias",)]))
    assert bool(jnp.all(values[("encoder", "norm", "scale")] == 1))
    query = values[("encoder", "blocks", "attn", "query")]  # [L, D, A, Q]
    assert query.shape[0] == config.depth and not bool(jnp.allclose(query[0], query[1]))
    assert 0.5 < float(jnp.std(values[("posemb",)])) / 0.02 < 1.5


def test_param_count_equals_the_unscanned_abstract_model():
    """param_count counts the scanned twin of a dense config; the plain model has the same parameters."""
    for config in [tiny(), tiny(parallel_block=True, qk_norm=True, pool="map", qkv_bias=False)]:
        model = nnx.eval_shape(lambda c=config: models.ViT(c, rngs=nnx.Rngs(0)))
        assert param_count(config) == sum(
            math.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param))
        )


# ---------------------------------------------------------------------------------------------------------
# Recipe flags: each changes exactly what it should
# ---------------------------------------------------------------------------------------------------------
def test_recipe_flags_change_the_expected_parameters():
    base = tiny()
    D, L, H, Q, Y = base.width, base.depth, base.mlp_dim, base.head_width, base.num_classes
    count = param_count(base)
    delta = lambda **kw: count - param_count(base.replace(**kw))  # noqa: E731

    assert delta(qkv_bias=False) == 3 * D * L
    assert delta(norm_bias=False) == (2 * L + 1) * D  # two norms per block and the final norm
    assert delta(norm="rmsnorm") == 0  # same parameters, different function
    assert delta(mlp_bias=False) == (H + D) * L
    assert delta(qk_norm=True) == -2 * 2 * Q * L  # scale and bias for queries and keys, per layer
    assert delta(pool="gap") == 2 * D  # the class token and its position row
    map_head = D + (4 * D * D + 4 * D) + 2 * D + (2 * D * H + H + D)  # probe, attention, norm, MLP
    assert delta(pool="map") == 2 * D - map_head
    assert delta(posemb="sincos2d") == base.num_tokens * D
    assert delta(num_classes=0) == D * Y + Y
    # Parallel: one norm per block instead of two, and one output bias for the fused attention+MLP output.
    assert delta(parallel_block=True) == L * (2 * D + D)
    # ViT-22B recipe on top: no QKV or norm biases, QK-norm scales only.
    recipe = dict(parallel_block=True, qk_norm=True, qkv_bias=False, norm="rmsnorm", norm_bias=False)
    assert delta(**recipe) == L * (3 * D + 3 * D + D) + D - 2 * Q * L

    assert {"query_bias", "key_bias", "value_bias"} <= names(base)
    assert not {"query_bias", "key_bias", "value_bias"} & names(base.replace(qkv_bias=False))
    assert "bias" in names(base) and "bias" not in names(base.replace(norm_bias=False))  # norm biases
    assert "bi" not in names(base.replace(mlp_bias=False)) and "bo" not in names(base.replace(mlp_bias=False))
    assert "cls" in names(base) and "cls" not in names(base.replace(pool="gap"))
    assert "probe" in names(base.replace(pool="map"))
    parallel = names(base.replace(parallel_block=True))
    assert {"in_kernel", "out_kernel"} <= parallel and "query" not in parallel


def test_norm_kinds():
    """LayerNorm centres and scales to unit variance; RMSNorm only divides by the root mean square."""
    x = jnp.arange(8.0).reshape(1, 8) + 3.0
    layer = models.Norm(8, "embed", tiny(), rngs=nnx.Rngs(0))(x)
    rms = models.Norm(8, "embed", tiny(norm="rmsnorm"), rngs=nnx.Rngs(0))(x)
    np.testing.assert_allclose(jnp.mean(layer), 0.0, atol=1e-6)
    np.testing.assert_allclose(jnp.var(layer), 1.0, atol=1e-4)
    np.testing.assert_allclose(rms, x / jnp.sqrt(jnp.mean(x**2)), rtol=1e-5)


@functools.partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
def _fused_and_unfused(graphdef, state, x):
    """A parallel block's output, and the same function from separate projections sliced from its weights."""
    block = nnx.merge(graphdef, state)
    fused, _, _ = block(x)
    (B, N, D), A = x.shape, block.num_heads
    h = block.norm(x)
    w_in, w_out = block.in_kernel[...], block.out_kernel[...]
    qkv_bias = block.qkv_bias[...] if block.qkv_bias is not None else jnp.zeros((3, A, D // A))
    q, k, v = [(h @ w_in[:, i * D : (i + 1) * D]).reshape(B, N, A, D // A) + qkv_bias[i] for i in range(3)]
    if block.q_norm is not None:
        q, k = block.q_norm(q), block.k_norm(k)
    weights = jax.nn.softmax(jnp.einsum("bnaq,btaq->bant", q, k) / np.sqrt(D // A), axis=-1)
    heads = jnp.einsum("bant,btaq->bnaq", weights, v).reshape(B, N, D)
    mlp = jax.nn.gelu(h @ w_in[:, 3 * D :] + block.mlp_bias[...]) @ w_out[D:]
    return fused, x + heads @ w_out[:D] + mlp + block.out_bias[...]


def test_parallel_block_equals_its_unfused_form():
    """The fused projections compute the same function as separate q/k/v/MLP projections built from slices."""
    for flags in [dict(qkv_bias=True, qk_norm=False), dict(qkv_bias=False, qk_norm=True, norm="rmsnorm")]:
        config = tiny(parallel_block=True, **flags)
        graphdef, state = nnx.split(build(config, seed=1).encoder.blocks[0])  # random biases and norms too
        x = jnp.asarray(
            np.random.default_rng(2).normal(size=(2, config.num_tokens, config.width)), jnp.float32
        )
        fused, unfused = _fused_and_unfused(graphdef, state, x)
        np.testing.assert_allclose(fused, unfused, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Forward variants: scan, remat, dtype, statistics
# ---------------------------------------------------------------------------------------------------------
def _scanned_copy(model: models.ViT, remat: bool = False) -> models.ViT:
    """A scan_layers twin of an unscanned model holding the same parameters (stacked on a layers axis)."""
    config = model.config.replace(scan_layers=True, remat=remat)
    twin = nnx.eval_shape(lambda: models.ViT(config, rngs=nnx.Rngs(0)))
    flat = params(model)
    stacked = {}
    for path, _ in nnx.to_flat_state(nnx.state(twin, nnx.Param)):
        if path[:2] == ("encoder", "blocks"):
            stacked[path] = jnp.stack([flat[path[:2] + (i,) + path[2:]] for i in range(config.depth)])
        else:
            stacked[path] = flat[path]
    nnx.update(twin, nnx.from_flat_state(stacked))
    return twin


@pytest.mark.parametrize("parallel", [False, True])
def test_scan_and_remat_match_the_plain_forward(parallel):
    """Same parameters give the same logits and statistics whether layers are looped, scanned or rematted."""
    config = tiny(parallel_block=parallel, qk_norm=parallel)
    x = images(config)
    plain = build(config)
    logits, stats = forward(plain, x, return_stats=True)
    for other in (_scanned_copy(plain), build(config.replace(remat=True))):  # build: same seed, same values
        other_logits, other_stats = forward(other, x, return_stats=True)
        np.testing.assert_allclose(other_logits, logits, atol=1e-5, rtol=1e-5)
        for key in ("attn_max_logit", "attn_entropy"):
            np.testing.assert_allclose(other_stats[key], stats[key], atol=1e-5, rtol=1e-5)


def test_scanned_rematted_gradients_match():
    config = tiny(parallel_block=True, qk_norm=True, depth=2)
    x = images(config)

    def grads(model):
        graphdef, state = nnx.split(model)
        loss = lambda state: jnp.mean(nnx.merge(graphdef, state)(x) ** 2)  # noqa: E731
        return nnx.merge(graphdef, jax.jit(jax.grad(loss), compiler_options=FAST_COMPILE)(state))

    plain = build(config)
    expected = grads(plain)
    actual = grads(_scanned_copy(plain, remat=True))
    for name in ("head", "patch_kernel", "posemb"):
        np.testing.assert_allclose(
            getattr(actual, name)[...], getattr(expected, name)[...], atol=1e-6, rtol=1e-4
        )
    for path, value in params(actual.encoder.blocks).items():  # stacked [L, ...] against layer by layer
        for i in range(config.depth):
            np.testing.assert_allclose(
                value[i], params(expected.encoder.blocks[i])[path], atol=1e-6, rtol=1e-4
            )


def test_return_stats_gives_finite_per_layer_statistics():
    config = tiny(depth=3)
    logits, stats = forward(build(config), images(config), return_stats=True)
    assert logits.shape == (2, config.num_classes)
    assert stats["attn_max_logit"].shape == stats["attn_entropy"].shape == (3,)
    assert bool(jnp.all(jnp.isfinite(stats["attn_max_logit"])))
    assert bool(jnp.all((stats["attn_entropy"] >= 0) & (stats["attn_entropy"] <= np.log(config.num_tokens))))
    assert stats["moe"] == {}


def test_qk_norm_bounds_attention_logits():
    """Blown-up query/key weights explode the logits of plain attention; QK-norm keeps |logit| <= sqrt(Q)."""
    max_logits = {}
    for qk_norm in (False, True):
        config = tiny(qk_norm=qk_norm, depth=1)
        model = build(config)
        attention = model.encoder.blocks[0].attn
        attention.query[...] = attention.query[...] * 100.0
        attention.key[...] = attention.key[...] * 100.0
        _, stats = forward(model, images(config), return_stats=True)
        max_logits[qk_norm] = float(stats["attn_max_logit"][0])
    assert max_logits[False] > 1e3
    assert max_logits[True] <= math.sqrt(tiny().head_width) + 1e-3


def test_bfloat16_compute_and_parameters():
    config = tiny(dtype="bfloat16", param_dtype=jnp.bfloat16, parallel_block=True)
    assert config.param_dtype == "bfloat16"  # dtype objects are stored by name
    model = build(config)
    assert {v.dtype for v in params(model).values()} == {jnp.dtype(jnp.bfloat16)}
    logits = forward(model, images(config))
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))


def test_pooling_and_features():
    for pool in ("cls", "gap", "map"):
        config = tiny(pool=pool)
        model = build(config)
        assert forward(model, images(config)).shape == (2, config.num_classes)
    headless = tiny(num_classes=0, posemb="sincos2d")
    assert forward(build(headless), images(headless)).shape == (2, headless.width)


def test_wrong_image_shape_is_a_clear_error():
    model = build(tiny())
    with pytest.raises(ValueError, match=r"expected \[B, 16, 16, 3\]"):
        model(jnp.zeros((2, 32, 32, 3)))


def test_parameters_carry_logical_axes():
    allowed = {None, "embed", "mlp", "heads", "kv", "fused", "classes", "layers"}
    for config in [tiny(pool="map"), tiny(parallel_block=True, qk_norm=True, scan_layers=True)]:
        model = nnx.eval_shape(lambda c=config: models.ViT(c, rngs=nnx.Rngs(0)))
        for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
            axes = variable.get_metadata()["out_sharding"]
            assert len(axes) == len(variable.shape) and set(axes) <= allowed, (path, axes)
            assert (axes[0] == "layers") == (config.scan_layers and path[:2] == ("encoder", "blocks")), path


# ---------------------------------------------------------------------------------------------------------
# FLOPs against XLA
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags", [dict(), dict(parallel_block=True, pool="map")])
def test_flops_match_xla_cost_analysis(flags):
    """Within 10% of XLA's count (measured 1.02: XLA also counts softmax and norm arithmetic)."""
    config = vit_config("mu/4", image_size=32, width=128, mlp_dim=512, num_heads=2, depth=2, **flags)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: models.ViT(config, rngs=nnx.Rngs(0))))
    batch = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x), compiler_options=FAST_COMPILE)
    cost = forward.lower(state, batch).compile().cost_analysis()
    ratio = cost["flops"] / 2 / flops_per_image(config)
    assert 0.9 <= ratio <= 1.1, ratio


def test_flops_of_known_models():
    assert flops_per_image(vit_config("B/16")) / 2 == pytest.approx(17.56e9, rel=0.01)  # the usual 17.6 GMACs
    assert flops_per_image(vit_config("22B/14")) == pytest.approx(11.21e12, rel=0.01)


# ---------------------------------------------------------------------------------------------------------
# Configs as plain data; errors
# ---------------------------------------------------------------------------------------------------------
def test_config_json_round_trip_and_hash():
    config = vit_config("S/16", qk_norm=True, moe=dict(placement=[3, 1], capacity_factor=1))
    assert config.moe == MoeConfig(placement=(1, 3), capacity_factor=1.0)
    assert VitConfig.from_json(config.to_json()) == config
    assert VitConfig.from_dict(config.to_dict()) == config
    assert (
        config.to_json()
        == vit_config("S/16", moe=MoeConfig(placement=(3, 1), capacity_factor=1.0), qk_norm=True).to_json()
    )
    assert " " not in config.to_json() and config.to_json().startswith('{"channels":3,')
    assert config.config_hash() == VitConfig.from_json(config.to_json()).config_hash()
    assert config.config_hash() != config.replace(qk_norm=False).config_hash()
    assert len(config.config_hash()) == 64 and hash(config) == hash(VitConfig.from_json(config.to_json()))
    assert "qk_norm=True" in repr(config)


def test_moe_placements():
    config = vit_config("B/16", moe=MoeConfig())
    assert models.moe_layers(config) == (1, 3, 5, 7, 9, 11)
    assert models.moe_layers(config.replace(moe=MoeConfig(placement="last-2"))) == (9, 11)
    assert models.moe_layers(config.replace(moe=MoeConfig(placement=(0, 5)))) == (0, 5)
    assert models.moe_layers(vit_config("B/16")) == ()
    with pytest.raises(ValueError, match="last-7' needs 7 odd layers but depth=12 has 6"):
        config.replace(moe=MoeConfig(placement="last-7"))
    with pytest.raises(ValueError, match=r"placement=\(0, 12\).*\[0, 12\)"):
        config.replace(moe=MoeConfig(placement=(0, 12)))
    with pytest.raises(ValueError, match="placement='middle'"):
        config.replace(moe=MoeConfig(placement="middle"))
    with pytest.raises(ValueError, match="k=3 exceeds num_experts=2"):
        MoeConfig(num_experts=2, k=3)
    with pytest.raises(ValueError, match="scan_layers=True needs identical layers"):
        config.replace(scan_layers=True)


@pytest.mark.parametrize(
    "size, overrides, message",
    [
        ("X/16", {}, r"unknown size string 'X/16'; expected NAME/PATCH with NAME one of mu, Ti, S, B"),
        ("B16", {}, "unknown size string 'B16'"),
        ("B/0", {}, "patch_size=0 is not allowed"),
        ("B/16", dict(width=100), "width=100 is not divisible by num_heads=12"),
        ("B/16", dict(image_size=200), "image_size=200 is not divisible by patch_size=16"),
        (
            "B/16",
            dict(norm="batchnorm"),
            "norm='batchnorm' is not allowed; expected one of 'layernorm', 'rmsnorm'",
        ),
        ("B/16", dict(pool="max"), "pool='max' is not allowed; expected one of 'cls', 'gap', 'map'"),
        (
            "B/16",
            dict(dtype="float64"),
            "dtype='float64' is not allowed; expected one of 'float32', 'bfloat16'",
        ),
        ("B/16", dict(posemb="rope"), "posemb='rope'"),
        ("B/16", dict(depth=0), "depth=0 is not allowed; expected an integer >= 1"),
        ("B/16", dict(widht=64), "unknown VitConfig field 'widht' \\(did you mean 'width'\\?\\)"),
        ("B/16", dict(patch_size=8), "come from the size string 'B/16'"),
    ],
)
def test_bad_configs_give_clear_errors(size, overrides, message):
    with pytest.raises(ValueError, match=message):
        vit_config(size, **overrides)


def test_wrong_types_in_configs_are_type_errors():
    with pytest.raises(TypeError, match="VitConfig.qk_norm='yes' is not allowed; expected True or False"):
        vit_config("B/16", qk_norm="yes")
    with pytest.raises(TypeError, match="VitConfig.depth=2.0 is not allowed; expected an integer >= 1"):
        vit_config("B/16", depth=2.0)
    with pytest.raises(
        TypeError, match="MoeConfig.capacity_factor='1' is not allowed; expected a number > 0"
    ):
        MoeConfig(capacity_factor="1")
    with pytest.raises(ValueError, match="MoeConfig.noise_std=-1 is not allowed; expected a number >= 0"):
        MoeConfig(noise_std=-1)


def test_configs_are_frozen_and_comparable():
    config = vit_config("mu/4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.width = 8  # type: ignore[misc]
    assert config == vit_config("mu/4") and config != vit_config("mu/2")

"""The one MLP (sparse_experts.models.mlp.Mlp), dense and stacked over E experts (models.moe).

Shapes: G groups, E experts, C capacity, D width, H hidden.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparse_experts.models import Mlp, MoeMlp, apply_stacked, stacked_experts

G, E, C, D, H = 3, 4, 2, 8, 16


def reference_experts(buffers, wi, wo, bi=None, bo=None):
    """The stacked-einsum expert MLPs the MoE layer and expert parallelism used before they shared the one
    MLP: ``[..., E, C, D]`` -> ``[..., E, C, D]``."""
    h = jnp.einsum("...ECD,EDH->...ECH", buffers, wi)
    if bi is not None:
        h = h + bi[:, None, :]
    y = jnp.einsum("...ECH,EHD->...ECD", jax.nn.gelu(h), wo)
    if bo is not None:
        y = y + bo[:, None, :]
    return y


def weights(bias: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {
        "wi": rng.normal(size=(E, D, H)) * D**-0.5,
        "wo": rng.normal(size=(E, H, D)) * H**-0.5,
    }
    if bias:
        out |= {"bi": rng.normal(size=(E, H)) * 0.5, "bo": rng.normal(size=(E, D)) * 0.5}
    return {name: value.astype(np.float32) for name, value in out.items()}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(G,), (2, G)])  # [G, E, C, D], and any leading dims
def test_stacked_experts_compute_the_einsum_formula_values_and_gradients(bias, lead):
    experts = stacked_experts(E, D, H, rngs=nnx.Rngs(0), bias=bias)
    given = weights(bias)
    for name, value in given.items():
        getattr(experts, name)[...] = jnp.asarray(value)
    assert (experts.bi is None) == (experts.bo is None) == (not bias)
    rng = np.random.default_rng(1)
    buffers = jnp.asarray(rng.normal(size=(*lead, E, C, D)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=buffers.shape), jnp.float32)  # a loss that weights every output
    graphdef, params = nnx.split(experts)

    def loss(params, buffers):
        return jnp.sum(apply_stacked(nnx.merge(graphdef, params), buffers) * cotangent)

    def reference_loss(given, buffers):
        return jnp.sum(reference_experts(buffers, **given) * cotangent)

    with jax.default_matmul_precision("highest"):  # both sides in full f32 (TF32 on a GPU otherwise)
        out = apply_stacked(experts, buffers)
        expected = reference_experts(buffers, **given)
        grads = jax.grad(loss, argnums=(0, 1))(params, buffers)
        expected_grads = jax.grad(reference_loss, argnums=(0, 1))(given, buffers)
    assert out.shape == buffers.shape
    assert np.abs(np.asarray(expected)).max() > 0.5  # a real signal
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(grads[1], expected_grads[1], atol=1e-5, rtol=1e-5)
    for name, value in expected_grads[0].items():
        np.testing.assert_allclose(getattr(grads[0], name)[...], value, atol=1e-5, rtol=1e-5, err_msg=name)
        assert np.abs(value).max() > 0.1, name
    # Expert e only sees buffer column e: changing column 0 changes only output column 0.
    moved = apply_stacked(experts, buffers.at[..., 0, :, :].add(1.0))
    np.testing.assert_array_equal(moved[..., 1:, :, :], out[..., 1:, :, :])
    assert not np.allclose(moved[..., 0, :, :], out[..., 0, :, :])


def test_the_moe_layer_runs_the_stacked_mlp():
    """MoeMlp.apply_experts (what dispatch feeds) is the same function with the layer's own weights."""
    layer = MoeMlp(D, H, E, rngs=nnx.Rngs(0))
    buffers = jax.random.normal(jax.random.key(2), (G, E, C, D))
    given = {name: getattr(layer.experts, name)[...] for name in ("wi", "bi", "wo", "bo")}
    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(
            layer.apply_experts(buffers), reference_experts(buffers, **given), atol=1e-5, rtol=1e-5
        )


def test_one_key_per_expert():
    experts = stacked_experts(E, D, H, rngs=nnx.Rngs(0))
    wi = np.asarray(experts.wi[...])
    assert wi.shape == (E, D, H)
    assert all(not np.allclose(wi[0], wi[e]) for e in range(1, E))  # each expert drew its own weights
    limit = np.sqrt(6 / (D + H))  # xavier uniform over [D, H], as the dense MLP
    assert np.abs(wi).max() <= limit and np.abs(wi).max() > 0.8 * limit
    np.testing.assert_array_equal(experts.bi[...], 0)


def test_dense_mlp_formula_and_layer_protocol():
    mlp = Mlp(D, H, rngs=nnx.Rngs(0), bias=False)
    assert mlp.bi is None and mlp.bo is None
    x = jax.random.normal(jax.random.key(3), (2, 5, D))  # [B, N, D]
    with jax.default_matmul_precision("highest"):
        y, record = mlp(x, train=True, k=1)  # routing overrides are for MoE layers: ignored here
        expected = jax.nn.gelu(x @ mlp.wi[...]) @ mlp.wo[...]
    assert record == {}
    np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5)

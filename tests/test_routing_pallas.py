"""The "pallas" routing backend (issue 18): top-k routing (vanilla and BPR) in one Pallas kernel and the
slot -> choice map in a second, checked in Pallas interpret mode on CPU against the XLA routing and the
loop reference (values and gradients), and lowered for a GPU (Triton) on this CPU-only machine. The
dispatch/combine agreement of all backends, "pallas" included, is in tests/test_routing.py. Shapes stay
small: interpret mode runs the kernels' loops one step at a time."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_routing import GATES, _reference_top_k

from sparse_experts import routing

# (groups, S, E, K, C): odd sizes (one program per group), and S = 200 tokens, E = 6 experts and E x C = 240
# buffer rows, padded to 256 tokens, 8 experts and 256 rows: two 128-row programs, two steps of each loop.
CASES = [(2, 7, 3, 2, 2), (2, 200, 6, 2, 40)]


def _gates(seed: int, shape) -> jnp.ndarray:
    rng = np.random.default_rng(seed)
    gates = jax.nn.softmax(jnp.asarray(rng.normal(size=shape), jnp.float32), axis=-1)
    # Ties: token 1 repeats token 0 (equal top-1 gates: BPR keeps position order), and one token has two
    # equal gates (top-k takes the lower expert first).
    gates = gates.at[..., 1, :].set(gates[..., 0, :])
    return gates.at[..., 2, :2].set(gates[..., 2, :1])


def test_by_hand_matches_the_reference_of_test_routing():
    for batch_priority in (False, True):
        for k in (1, 2):
            got = routing.top_k_routing(GATES, k, 2, batch_priority=batch_priority, backend="pallas")
            want = _reference_top_k(np.asarray(GATES), k, 2, batch_priority)
            for field, expected in zip(got, want, strict=True):
                np.testing.assert_array_equal(np.asarray(field), expected)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("batch_priority", [False, True])
def test_fused_equals_xla_routing_values_gradients_and_row_map(case, batch_priority):
    groups, num_tokens, num_experts, k, cap = case
    gates = _gates(num_tokens, (groups, num_tokens, num_experts))
    probe = jnp.arange(1.0, k + 1.0)  # a loss that weighs the K choices differently

    @jax.jit
    def both(g):  # one program per case: routing and its gradient for each backend and renormalize
        out = {}
        for backend in ("pallas", "indices"):
            for renormalize in (False, True):
                route = functools.partial(
                    routing.top_k_routing, k=k, capacity=cap, batch_priority=batch_priority,
                    renormalize=renormalize, backend=backend,
                )  # fmt: skip
                grad = jax.grad(lambda g, route=route: jnp.sum(route(g).weight * probe))(g)
                out[backend, renormalize] = (route(g), grad)
        fused = out["pallas", False][0]
        return out, routing.choice_of_buffer_row(fused, num_experts, cap)

    out, row_choice = both(gates)
    for renormalize in (False, True):
        (fused, fused_grad), (xla, xla_grad) = out["pallas", renormalize], out["indices", renormalize]
        np.testing.assert_array_equal(fused.expert, xla.expert)
        np.testing.assert_array_equal(fused.slot, xla.slot)
        np.testing.assert_allclose(fused.weight, xla.weight, rtol=1e-6, atol=0)
        np.testing.assert_allclose(fused_grad, xla_grad, rtol=1e-6, atol=1e-7)
        assert np.abs(np.asarray(fused_grad)).sum() > 0
    flat_index = routing._flat_slot_index(out["indices", False][0], cap, num_experts)
    want = jax.vmap(functools.partial(routing._choice_of_row, num_buffer_rows=num_experts * cap))(flat_index)
    np.testing.assert_array_equal(row_choice, want)


def test_matches_the_loop_reference_with_drops_and_leading_dims():
    gates = _gates(3, (2, 3, 16, 4))  # two leading group dims, tight capacity: many drops
    got = jax.jit(functools.partial(routing.fused_top_k_routing, k=2, capacity=3, batch_priority=True))(gates)
    assert got.expert.shape == (2, 3, 16, 2)
    for i in range(2):
        for j in range(3):
            want = _reference_top_k(np.asarray(gates[i, j]), 2, 3, batch_priority=True)
            for field, expected in zip(got, want, strict=True):
                np.testing.assert_array_equal(np.asarray(field[i, j]), expected)
    assert int(jnp.sum(got.slot == 3)) > 0  # the case has drops


def test_layer_forward_and_backward_agree_with_einsum():
    """Route -> dispatch -> experts -> combine with every step on "pallas" against "einsum" everywhere."""
    rng = np.random.default_rng(0)
    gates = _gates(5, (2, 16, 4))
    x = jnp.asarray(rng.normal(size=(2, 16, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(4, 3, 3)), jnp.float32)
    cap = routing.capacity(16, 4, 2, 0.75)  # some choices dropped

    def loss(x, g, w, backend):
        a = routing.top_k_routing(g, 2, cap, batch_priority=True, backend=backend)
        buffers = routing.dispatch(x, a, 4, cap, backend=backend)
        y = routing.combine(jnp.einsum("GECD,EDF->GECF", buffers, w), a, backend=backend)
        return jnp.sum(jnp.sin(y))

    value_and_grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    with jax.default_matmul_precision("highest"):  # a GPU's TF32 default would differ between the programs
        got, got_grads = value_and_grads(x, gates, w, "pallas")
        want, want_grads = value_and_grads(x, gates, w, "einsum")
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for name, a, b in zip(("x", "gates", "w"), got_grads, want_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


def test_not_a_default_and_checks_its_arguments():
    assert "pallas" in routing.BACKENDS and "pallas" not in routing.DEFAULT_BACKEND.values()
    with pytest.raises(ValueError, match="k=4 exceeds num_experts=3"):
        routing.fused_top_k_routing(GATES, 4, 2)
    with pytest.raises(TypeError, match="interpret=1 is not allowed"):
        routing.fused_top_k_routing(GATES, 1, 2, interpret=1)
    with pytest.raises(ValueError, match="backend='fused' is not allowed"):
        routing.top_k_routing(GATES, 1, 2, backend="fused")


def _gpu_lowering(fn, *args) -> list[str]:
    """Custom calls of ``fn`` lowered for an NVIDIA GPU (an H200) on this CPU-only machine: the compiled
    kernels, not the interpreted ones (``routing._run_kernel`` chooses at lowering). jax >= 0.11 needs an
    abstract GPU to pick the Triton target."""
    device = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=None, platform="cuda")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)):
        text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    return sorted(set(re.findall(r"custom_call @([\w$.]+)", text)))


@pytest.mark.parametrize("batch_priority", [False, True])
def test_kernels_lower_for_a_gpu_on_this_cpu(batch_priority):
    """S=1024, E=8, K=2, C=320 (a shape of the GPU benchmark): the layer's forward and backward lower to
    Triton kernels; what only a GPU can check is the final compile and the timing."""
    gates = jax.ShapeDtypeStruct((4, 1024, 8), jnp.float32)
    route = functools.partial(routing.fused_top_k_routing, k=2, capacity=320, batch_priority=batch_priority)
    assert _gpu_lowering(route, gates) == ["__gpu$xla.gpu.triton"]

    def layer(x, g, w):
        a = routing.top_k_routing(g, 2, 320, batch_priority=batch_priority, backend="pallas")
        buffers = routing.dispatch(x, a, 8, 320, backend="pallas")
        y = jnp.einsum("GECD,EDF->GECF", buffers, w)
        return jnp.sum(routing.combine(y, a, backend="pallas") ** 2)

    x, w = jax.ShapeDtypeStruct((4, 1024, 64), jnp.float32), jax.ShapeDtypeStruct((8, 64, 64), jnp.float32)
    calls = _gpu_lowering(jax.grad(layer, argnums=(0, 1, 2)), x, gates, w)
    assert calls == ["__gpu$xla.gpu.triton"]
    # Sizes that are not powers of 2 (Triton needs them) are padded: 7 tokens, 3 experts, K=3, 12 rows.
    odd = jax.ShapeDtypeStruct((2, 7, 3), jnp.float32)
    route = functools.partial(routing.fused_top_k_routing, k=3, capacity=4, batch_priority=batch_priority)
    assert _gpu_lowering(lambda g: routing.choice_of_buffer_row(route(g), 3, 4), odd) == [
        "__gpu$xla.gpu.triton"
    ]
    # The same program lowered for this CPU interprets the kernels: no custom call at all.
    text = jax.jit(jax.grad(layer, argnums=(0, 1, 2))).trace(x, gates, w).lower().as_text()
    assert "custom_call @__gpu" not in text

"""Expert parallelism (sparse_experts.parallel.experts): all_to_all over the "expert" axis in jax.shard_map.

The main pytest process sees one CPU device, so the 8-device comparison (expert-parallel == single-device
expert MLPs, forward and gradients w.r.t. the buffers and every expert parameter, on meshes
{"data": 2, "expert": 4} and {"expert": 8}; and the whole MoeMlp layer of each router kind called with and
without ``mesh=``) runs once in a subprocess (tests/_expert_parallel_check.py).
Shapes: G groups, E experts, C capacity, D width, H hidden.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_on_fake_devices
from flax import nnx

from sparse_experts import parallel
from sparse_experts.models import apply_stacked, stacked_experts
from sparse_experts.parallel.experts import expert_parallel_apply

HERE = pathlib.Path(__file__).parent
CASES = ["data2_expert4", "expert8"]


@pytest.fixture(scope="module")
def eight_devices() -> dict:
    return run_on_fake_devices("_expert_parallel_check.py", devices=8, timeout=120)


@pytest.mark.parametrize("case", CASES)
def test_expert_parallel_equals_single_device(eight_devices, case):
    result = eight_devices[case]
    assert result["forward"] < 1e-5, result
    assert result["grad_buffers"] < 1e-5, result
    assert result["grad_params"] < 1e-5, result
    assert result["max_abs_output"] > 0.5 and result["max_abs_grad_wi"] > 0.5  # real signals, not zeros
    assert result["all_to_all_ops"] == 2  # there and back
    assert result["output_spec"] == "P(('data', 'expert'), None, None, None)"


@pytest.mark.parametrize("router", ["top_k", "expert_choice", "soft"])
@pytest.mark.parametrize("case", CASES)
def test_moe_layer_with_mesh_equals_single_device(eight_devices, router, case):
    """The whole MoeMlp (route -> dispatch -> experts on their devices -> combine) with ``mesh=``."""
    result = eight_devices[f"layer_{router}_{case}"]
    assert result["forward"] < 1e-5 and result["grad_x"] < 1e-5 and result["grad_params"] < 1e-5, result
    assert result["max_abs_output"] > 0.1  # a real signal, not zeros
    assert result["all_to_all_ops"] >= 2  # the experts really ran expert-parallel


def test_expert_gradients_stay_sharded(eight_devices):
    # wi [E=8, D, H]: 2 experts per device with 4 expert shards, 1 with 8.
    assert eight_devices["data2_expert4"]["wi_grad_shard_shape"] == [2, 16, 32]
    assert eight_devices["expert8"]["wi_grad_shard_shape"] == [1, 16, 32]


def test_indivisible_experts_are_refused(eight_devices):
    assert "E=6 experts are not divisible by the expert axis size 8" in eight_devices["indivisible_error"]


def one_mlp(wi, wo):
    """(expert_fn, params) as MoeMlp passes them: the one MLP stacked over E (no biases), set to wi, wo."""
    experts = stacked_experts(wi.shape[0], wi.shape[1], wi.shape[2], rngs=nnx.Rngs(0), bias=False)
    experts.wi[...], experts.wo[...] = jnp.asarray(wi), jnp.asarray(wo)
    graphdef, params = nnx.split(experts)
    return (lambda buffers, params: apply_stacked(nnx.merge(graphdef, params), buffers)), params


def test_single_device_mesh_is_the_plain_computation():
    rng = np.random.default_rng(0)
    buffers = rng.normal(size=(2, 3, 2, 4)).astype(np.float32)  # [G, E, C, D]
    wi, wo = rng.normal(size=(3, 4, 5)).astype(np.float32), rng.normal(size=(3, 5, 4)).astype(np.float32)
    expert_fn, params = one_mlp(wi, wo)
    out = expert_parallel_apply(expert_fn, buffers, params, parallel.make_mesh({"data": 1}))
    with jax.default_matmul_precision("highest"):
        h = jnp.einsum("GECD,EDH->GECH", buffers, wi)
        expected = jnp.einsum("GECH,EHD->GECD", jax.nn.gelu(h), wo)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-5)


def test_bad_shapes_are_refused():
    mesh = parallel.make_mesh({"data": 1})
    expert_fn, params = one_mlp(np.zeros((3, 4, 5), np.float32), np.zeros((3, 5, 4), np.float32))
    with pytest.raises(ValueError, match=r"\[G, E, C, D\]"):
        expert_parallel_apply(expert_fn, np.zeros((2, 3, 4), np.float32), params, mesh)
    with pytest.raises(ValueError, match="leading E=3 axis"):
        expert_parallel_apply(
            expert_fn, np.zeros((2, 3, 2, 4), np.float32), {"wi": np.zeros((4, 4, 5))}, mesh
        )

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

from sparse_experts import parallel
from sparse_experts.parallel.experts import expert_mlp, expert_parallel_apply

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


def test_single_device_mesh_is_the_plain_computation():
    rng = np.random.default_rng(0)
    buffers = rng.normal(size=(2, 3, 2, 4)).astype(np.float32)  # [G, E, C, D]
    params = {
        "wi": rng.normal(size=(3, 4, 5)).astype(np.float32),
        "wo": rng.normal(size=(3, 5, 4)).astype(np.float32),
    }
    out = expert_parallel_apply(expert_mlp, buffers, params, parallel.make_mesh({"data": 1}))
    h = jnp.einsum("GECD,EDH->GECH", buffers, params["wi"])
    expected = jnp.einsum("GECH,EHD->GECD", jax.nn.gelu(h), params["wo"])
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_bad_shapes_are_refused():
    mesh = parallel.make_mesh({"data": 1})
    params = {"wi": np.zeros((3, 4, 5), np.float32), "wo": np.zeros((3, 5, 4), np.float32)}
    with pytest.raises(ValueError, match=r"\[G, E, C, D\]"):
        expert_parallel_apply(expert_mlp, np.zeros((2, 3, 4), np.float32), params, mesh)
    with pytest.raises(ValueError, match="leading E=3 axis"):
        expert_parallel_apply(
            expert_mlp, np.zeros((2, 3, 2, 4), np.float32), {"wi": np.zeros((4, 4, 5))}, mesh
        )

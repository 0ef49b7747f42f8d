"""Expert-parallel vs single-device expert MLPs (the one MLP, stacked over E) on 8 fake CPU devices; run by
tests/test_expert_parallel.py.

Needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (set before jax is imported). Prints one JSON object
{case: measurements}; the test asserts on it. Shapes: G groups, E experts, C capacity, D width, H hidden.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparse_experts import parallel
from sparse_experts.models import MoeMlp, apply_stacked, stacked_experts
from sparse_experts.parallel.experts import expert_parallel_apply

G, E, C, D, H = 8, 8, 3, 16, 32
MESHES = {"data2_expert4": {"data": 2, "expert": 4}, "expert8": {"expert": 8}}


def inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    buffers = rng.normal(size=(G, E, C, D)).astype(np.float32)
    params = {
        "wi": (rng.normal(size=(E, D, H)) * D**-0.5).astype(np.float32),
        "bi": (rng.normal(size=(E, H)) * 0.1).astype(np.float32),
        "wo": (rng.normal(size=(E, H, D)) * H**-0.5).astype(np.float32),
        "bo": (rng.normal(size=(E, D)) * 0.1).astype(np.float32),
    }
    cotangent = rng.normal(size=(G, E, C, D)).astype(np.float32)  # a loss that weights every output
    return buffers, params, cotangent


def one_mlp(params: dict):
    """The expert function and parameter pytree that MoeMlp passes to expert_parallel_apply: the one MLP,
    stacked over E, split into a graph and its parameters (each with a leading E axis), here set to
    ``params``."""
    experts = stacked_experts(E, D, H, rngs=nnx.Rngs(0))
    for name, value in params.items():
        getattr(experts, name)[...] = jnp.asarray(value)
    graphdef, state = nnx.split(experts)

    def expert_fn(buffers, state):
        return apply_stacked(nnx.merge(graphdef, state), buffers)

    return expert_fn, state


def max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b, strict=True))


def main() -> None:
    if jax.device_count() != 8:
        sys.exit(f"expected 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8), got "
                 f"{jax.device_count()}")  # fmt: skip
    buffers, arrays, cotangent = inputs()
    expert_fn, params = one_mlp(arrays)

    def reference_loss(buffers, params):
        return jnp.sum(expert_fn(buffers, params) * cotangent)

    ref_out = jax.jit(expert_fn)(buffers, params)
    ref_grads = jax.jit(jax.grad(reference_loss, argnums=(0, 1)))(buffers, params)
    results = {}
    for name, shape in MESHES.items():
        mesh = parallel.make_mesh(shape)
        placed = parallel.shard_batch(buffers, mesh)
        placed_params = jax.device_put(
            params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("expert"))
        )

        def apply(buffers, params, mesh=mesh):
            return expert_parallel_apply(expert_fn, buffers, params, mesh)

        def loss(buffers, params, apply=apply):
            return jnp.sum(apply(buffers, params) * cotangent)

        out = jax.jit(apply)(placed, placed_params)
        grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(placed, placed_params)
        text = jax.jit(apply).lower(placed, placed_params).as_text()
        results[name] = {
            "forward": max_diff([out], [ref_out]),
            "grad_buffers": max_diff([grads[0]], [ref_grads[0]]),
            "grad_params": max_diff(jax.tree.leaves(grads[1]), jax.tree.leaves(ref_grads[1])),
            "max_abs_output": float(np.max(np.abs(ref_out))),
            "max_abs_grad_wi": float(np.max(np.abs(ref_grads[1]["wi"][...]))),
            "all_to_all_ops": text.count("all_to_all"),
            "output_spec": str(out.sharding.spec),
            "wi_grad_shard_shape": list(grads[1]["wi"][...].addressable_shards[0].data.shape),
        }
    results.update(moe_layer_cases())
    try:
        expert_parallel_apply(expert_fn, buffers[:, :6], params, parallel.make_mesh({"expert": 8}))
        error = None
    except ValueError as caught:
        error = str(caught)
    results["indivisible_error"] = error
    print(json.dumps(results))


def moe_layer_cases() -> dict:
    """The whole MoeMlp layer (route -> dispatch -> experts -> combine), with and without a mesh."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 5, D)).astype(np.float32)  # B=8 images of N=5 tokens
    cotangent = rng.normal(size=x.shape).astype(np.float32)
    results = {}
    for router in ("top_k", "expert_choice", "soft"):
        layer = MoeMlp(D, H, 8, router=router, k=2, capacity_factor=1.0, rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

        def loss(params, x, mesh, graphdef=graphdef, rest=rest):
            y, _ = nnx.merge(graphdef, params, rest)(x, mesh=mesh)
            return jnp.sum(y * cotangent), y

        grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)
        ref_grad, ref_y = grad_fn(params, x, None)
        for name, shape in MESHES.items():
            mesh = parallel.make_mesh(shape)
            grad, y = grad_fn(params, x, mesh)
            results[f"layer_{router}_{name}"] = {
                "forward": max_diff([y], [ref_y]),
                "grad_x": max_diff([grad[1]], [ref_grad[1]]),
                "grad_params": max_diff(jax.tree.leaves(grad[0]), jax.tree.leaves(ref_grad[0])),
                "max_abs_output": float(np.max(np.abs(ref_y))),
                "all_to_all_ops": jax.jit(loss, static_argnums=2)
                .lower(params, x, mesh)
                .as_text()
                .count("all_to_all"),
            }
    return results


if __name__ == "__main__":
    main()

"""Expert parallelism: expert buffers travel to the devices that own their experts with ``all_to_all``.

Shape letters: G routing groups, E experts, C capacity, D width; X the size of the "expert" mesh axis. The
buffers ``[G, E, C, D]`` are split along G over :func:`~sparse_experts.parallel.data_axes`, every expert
parameter along its leading E over "expert". Inside ``jax.shard_map`` each device sends ``[g, E, C, D]`` ->
``[g x X, E / X, C, D]`` (all_to_all: split E, concatenate G), runs its E / X experts, and sends the result
home with the inverse all_to_all. The result and its gradients equal the single-device ones
(tests/test_expert_parallel.py, on 8 fake CPU devices).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh, PartitionSpec

from sparse_experts.parallel.mesh import data_axes, num_data_shards

Array = jax.Array
EXPERT_AXIS = "expert"


def expert_parallel_apply(
    expert_fn: Callable[[Array, Any], Array],
    buffers: Array,
    params: Any,
    mesh: Mesh,
) -> Array:
    """``expert_fn(buffers[G, E, C, D], params)`` -> ``[G, E, C, D_out]`` with the experts sharded over the
    mesh's "expert" axis. ``params``: a pytree of arrays with a leading E axis. ``expert_fn(local_buffers,
    local_params)`` must treat experts (parameter e touches buffer column e only) and groups independently.
    G must divide by the data shards and E by the expert axis size. Works under ``jax.jit`` and ``jax.grad``.
    """
    if buffers.ndim != 4:
        raise ValueError(f"buffers must have shape [G, E, C, D], got shape {buffers.shape}")
    G, E = buffers.shape[:2]
    sizes = dict(mesh.shape)
    experts_shards = sizes.get(EXPERT_AXIS, 1)
    batch_axes = data_axes(mesh)
    group_shards = num_data_shards(mesh)
    if G % group_shards:
        raise ValueError(f"G={G} groups are not divisible by the {group_shards} data shards {batch_axes}")
    if E % experts_shards:
        raise ValueError(f"E={E} experts are not divisible by the expert axis size {experts_shards}")
    for leaf in jax.tree.leaves(params):
        if leaf.ndim == 0 or leaf.shape[0] != E:
            raise ValueError(f"every expert parameter needs a leading E={E} axis, got shape {leaf.shape}")

    # ("data", "expert") even when the expert axis has size 1: the all_to_all output varies over "expert".
    groups = PartitionSpec(("data", EXPERT_AXIS))
    experts = PartitionSpec(EXPERT_AXIS)

    def local(buffers: Array, params: Any) -> Array:
        # [g, E, C, D] -> [g x X, E / X, C, D]: send expert block i to device i of the expert axis.
        routed = jax.lax.all_to_all(buffers, EXPERT_AXIS, 1, 0, tiled=True)
        out = expert_fn(routed, params)
        # [g x X, E / X, C, D_out] -> [g, E, C, D_out]: each group block goes home.
        return jax.lax.all_to_all(out, EXPERT_AXIS, 0, 1, tiled=True)

    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(groups, jax.tree.map(lambda _: experts, params)),
        out_specs=groups,
    )(buffers, params)

"""Expert parallelism: expert buffers travel to the devices that own their experts with ``all_to_all``.

Shape letters: G routing groups, E experts, C capacity (slots per expert per group), D width, H expert hidden
width; a leading ``g``/``e`` is the per-device part (G / data shards, E / expert shards).

Layout (routing issue, :mod:`sparse_experts.parallel`): the batch, hence the dispatched buffers
``[G, E, C, D]``, is split along G over :func:`sparse_experts.parallel.data_axes` (``("data", "expert")``),
and every expert parameter (leading axis E) along E over ``"expert"``. :func:`expert_parallel_apply` runs,
inside :func:`jax.shard_map`, on each device:

1. ``all_to_all`` over ``"expert"`` (split E, concatenate G): ``[g, E, C, D]`` -> ``[g x X, E / X, C, D]``
   (X = size of the expert axis): the device now holds, for its own E / X experts, the buffers of every group
   of its ``"expert"`` row;
2. ``expert_fn`` on those local experts with the local parameter shards;
3. the inverse ``all_to_all`` (split G, concatenate E): back to ``[g, E, C, D_out]``.

The result (and its gradients, which JAX derives by transposing the ``all_to_all``) equals the single-device
``expert_fn(buffers, params)``; tests/test_expert_parallel.py checks this on 8 fake CPU devices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh, PartitionSpec

from sparse_experts.parallel.mesh import data_axes

Array = jax.Array
EXPERT_AXIS = "expert"


def expert_parallel_apply(
    expert_fn: Callable[[Array, Any], Array],
    buffers: Array,
    params: Any,
    mesh: Mesh,
) -> Array:
    """``expert_fn(buffers, params)`` with the experts sharded over the mesh's ``"expert"`` axis.

    ``buffers`` ``[G, E, C, D]``: dispatched tokens (:func:`sparse_experts.routing.dispatch`), G split over
    :func:`~sparse_experts.parallel.data_axes` of ``mesh``. ``params``: a pytree of arrays whose leading axis
    is E, split over ``"expert"``. ``expert_fn(local_buffers [G', E', C, D], local_params) -> [G', E', C,
    D_out]`` must treat experts independently (parameter e only touches buffer column e) and groups
    independently: the MoE layer passes its one expert MLP, stacked over E
    (:meth:`sparse_experts.models.MoeMlp.apply_experts`). Returns ``[G, E, C, D_out]`` laid out like
    ``buffers``.

    Requires G divisible by the number of data shards and E divisible by the expert axis size (ValueError
    otherwise). Works under ``jax.jit`` and ``jax.grad``.
    """
    if buffers.ndim != 4:
        raise ValueError(f"buffers must have shape [G, E, C, D], got shape {buffers.shape}")
    G, E = buffers.shape[:2]
    sizes = dict(mesh.shape)
    experts_shards = sizes.get(EXPERT_AXIS, 1)
    batch_axes = data_axes(mesh)
    group_shards = 1
    for name in batch_axes:
        group_shards *= sizes.get(name, 1)
    if G % group_shards:
        raise ValueError(f"G={G} groups are not divisible by the {group_shards} data shards {batch_axes}")
    if E % experts_shards:
        raise ValueError(f"E={E} experts are not divisible by the expert axis size {experts_shards}")
    for leaf in jax.tree.leaves(params):
        if leaf.ndim == 0 or leaf.shape[0] != E:
            raise ValueError(f"every expert parameter needs a leading E={E} axis, got shape {leaf.shape}")

    # ("data", "expert") even when the expert axis has size 1 (same layout as data_axes then): the
    # all_to_all output varies over "expert", so the out spec must name it.
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

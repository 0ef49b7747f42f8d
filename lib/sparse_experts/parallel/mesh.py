"""Named device meshes, partition rules from NNX sharding metadata, and placement.

Shape letters (../../../shared/DESIGN.md): B batch, D width, H MLP/expert hidden width, L layers, A heads,
E experts, Q head width, F a fused projection width, Y classes.

:func:`make_mesh` always builds the axes ``("data", "expert", "model")`` (size 1 where unused, so any spec
is valid on every mesh) as ``AxisType.Auto``, so classic ``jax.jit`` shardings and GSPMD propagation work;
"model" is innermost, so tensor parallelism's per-layer collectives use neighbouring devices. The batch is
split over :func:`data_axes`.

Every parameter carries *logical* axis names; rules (Flax's ``LogicalRules`` format) map them to mesh axes:
"embed" (D) whole (Megatron), or over ("data", "expert") with ``fsdp=True`` (ZeRO-3 / ViT-22B style);
"mlp" (H), "heads" (A), "fused" (F) and "classes" (Y) over "model" (column-, then row-parallel MLP; whole
heads per device); "kv" (Q) and "layers" (L) replicated; "expert" (E) over "expert". A name missing from the
rules raises ValueError. :func:`partition_spec_for` resolves one array left to right: a mesh axis used by an
earlier dimension is skipped (expert weights [E, D, H] with fsdp get ``P("expert", "data", "model")``), size
1 axes are dropped, and trailing mesh axes are dropped until the dimension divides, down to replication, so
indivisible axes (ViT-Ti's 3 heads on 2 devices) stay correct, only less sharded. The fused axis is cut in
contiguous chunks of [q | k | v | mlp], not aligned with heads: GSPMD adds the collectives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXES = ("data", "expert", "model")  # mesh axis order: batch axes first, tensor parallelism innermost
LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def partition_rules(*, fsdp: bool = False) -> LogicalRules:
    """Logical axis -> mesh axes (module docstring); ``fsdp=True`` also shards "embed" over the batch axes."""
    return (
        ("embed", ("data", "expert") if fsdp else None),
        ("mlp", "model"),
        ("heads", "model"),
        ("kv", None),
        ("fused", "model"),
        ("classes", "model"),
        ("layers", None),
        ("expert", "expert"),
    )


TP_RULES: LogicalRules = partition_rules(fsdp=False)
FSDP_RULES: LogicalRules = partition_rules(fsdp=True)


def _mesh_sizes(shape: Mapping[str, int] | None, num_devices: int | None) -> dict[str, int]:
    """Validated {axis: size} over all of AXES; one size may be -1 (the rest) when num_devices is known."""
    shape = {"data": -1 if num_devices is not None else 1} if shape is None else dict(shape)
    unknown = [name for name in shape if name not in AXES]
    if unknown:
        raise ValueError(f"mesh shape {shape} names unknown axes {unknown}; the axes are {', '.join(AXES)}")
    for name, size in shape.items():
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or (size < 1 and size != -1):
            raise ValueError(f"mesh shape {shape}: {name}={size!r} must be a positive integer (or one -1)")
    fill = [name for name, size in shape.items() if size == -1]
    if len(fill) > 1 or (fill and num_devices is None):
        raise ValueError(f"mesh shape {shape}: at most one -1 size, and only when placing on real devices")
    sizes = {name: int(shape.get(name, 1)) for name in AXES}
    if fill:
        rest = math.prod(size for name, size in sizes.items() if name != fill[0])
        if num_devices % rest:
            raise ValueError(
                f"mesh shape {shape} cannot fill {num_devices} devices: {num_devices} is not divisible by "
                f"the other axes' product {rest}"
            )
        sizes[fill[0]] = num_devices // rest
    if num_devices is not None and math.prod(sizes.values()) != num_devices:
        raise ValueError(
            f"mesh shape {shape} has {math.prod(sizes.values())} devices but there are {num_devices}; "
            f"make the sizes multiply to {num_devices} (or use -1 for one axis)"
        )
    return sizes


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh with axes ("data", "expert", "model"). ``shape`` maps names to sizes (missing: 1; one may be -1,
    the rest; default: all on "data"), multiplying to the number of ``devices`` (default ``jax.devices()``).

    >>> make_mesh({"data": -1}).shape  # doctest: +SKIP
    {'data': 8, 'expert': 1, 'model': 1}
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = _mesh_sizes(shape, len(devices))
    axis_shapes = tuple(sizes[name] for name in AXES)
    return jax.make_mesh(axis_shapes, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def _sizes_of(mesh: Mesh | Mapping[str, int]) -> dict[str, int]:
    return dict(mesh.shape) if isinstance(mesh, Mesh) else _mesh_sizes(mesh, None)


def data_axes(mesh: Mesh | Mapping[str, int]) -> tuple[str, ...]:
    """The mesh axes the batch is split over: ("data", "expert") when the expert axis is used, else ("data",)
    (the tokens of the images on the expert devices travel to their experts with all_to_all)."""
    return ("data", "expert") if _sizes_of(mesh).get("expert", 1) > 1 else ("data",)


def num_data_shards(mesh: Mesh | Mapping[str, int]) -> int:
    """How many pieces the batch is cut into: the product of the :func:`data_axes` sizes."""
    sizes = _sizes_of(mesh)
    return math.prod(sizes.get(name, 1) for name in data_axes(mesh))


def _as_axes(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def partition_spec_for(
    logical_axes: Sequence[str | None] | None,
    shape: Sequence[int],
    rules: LogicalRules = TP_RULES,
    mesh: Mesh | Mapping[str, int] | None = None,
    *,
    where: str = "array",
) -> PartitionSpec:
    """The PartitionSpec of one array of ``shape`` whose dimensions carry ``logical_axes`` (None: replicated).
    Only with a ``mesh`` (or {axis: size}) are size-1 and indivisible mesh axes dropped (module docstring).
    ``where`` names the array in errors."""
    if not logical_axes:
        return PartitionSpec()
    if len(logical_axes) != len(shape):
        raise ValueError(
            f"{where}: logical axes {tuple(logical_axes)} do not match its shape {tuple(shape)} "
            f"(one name, or None, per dimension)"
        )
    table = {name: _as_axes(value) for name, value in rules}
    sizes = None if mesh is None else _sizes_of(mesh)
    used: set[str] = set()
    spec: list[str | tuple[str, ...] | None] = []
    for logical, dim in zip(logical_axes, shape, strict=True):
        if logical is None:
            spec.append(None)
            continue
        if logical not in table:
            raise ValueError(
                f"{where}: logical axis {logical!r} has no partition rule; known: {', '.join(table)}. "
                f"Add ({logical!r}, None) to the rules to replicate it, or map it to a mesh axis"
            )
        axes = [a for a in table[logical] if a not in used]
        if sizes is not None:
            unknown = [a for a in axes if a not in sizes]
            if unknown:
                raise ValueError(f"{where}: rule {logical!r} -> {unknown} names axes not in the mesh {sizes}")
            axes = [a for a in axes if sizes[a] > 1]
            while axes and dim % math.prod(sizes[a] for a in axes):
                axes.pop()  # indivisible: fewer mesh axes, down to replication
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def partition_specs(
    model_or_state: Any,
    rules: LogicalRules = TP_RULES,
    mesh: Mesh | Mapping[str, int] | None = None,
) -> nnx.State:
    """``nnx.state(model)`` with a PartitionSpec (:func:`partition_spec_for`) in every Variable, for real and
    abstract (``nnx.eval_shape``) models; Variables without axis metadata are replicated."""

    def spec(path, variable: nnx.Variable):
        where = jax.tree_util.keystr(path, simple=True, separator="/")
        axes = variable.get_metadata().get("out_sharding")
        return variable.replace(partition_spec_for(axes, variable.shape, rules, mesh, where=where))

    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)
    return jax.tree_util.tree_map_with_path(spec, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def param_shardings(model_or_state: Any, mesh: Mesh, rules: LogicalRules = TP_RULES) -> nnx.State:
    """Like :func:`partition_specs`, holding ``NamedSharding(mesh, spec)``: ready for ``jax.device_put`` or
    ``jax.jit(..., out_shardings=...)``."""
    specs = partition_specs(model_or_state, rules, mesh)
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs)


def shard_model(model: nnx.Module, mesh: Mesh, rules: LogicalRules = TP_RULES) -> nnx.Module:
    """Move an initialised model's state onto ``mesh`` under ``rules`` (in place; returns the model)."""
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, param_shardings(state, mesh, rules)))
    return model


def create_sharded(make: Callable[[], nnx.Module], mesh: Mesh, rules: LogicalRules = TP_RULES) -> nnx.Module:
    """``make()``'s module (same values) created directly in its shards by one jitted initialiser with
    ``out_shardings``: no device ever holds the whole model."""
    graphdef, abstract_state = nnx.split(nnx.eval_shape(make))
    shardings = param_shardings(abstract_state, mesh, rules)
    return nnx.merge(graphdef, jax.jit(lambda: nnx.state(make()), out_shardings=shardings)())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """NamedSharding of an array whose leading B axis is split over :func:`data_axes`, the rest replicated."""
    axes = data_axes(mesh)
    return NamedSharding(mesh, PartitionSpec(axes if len(axes) > 1 else axes[0], *[None] * (ndim - 1)))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Place every array [B, ...] of the pytree ``batch`` with B split over :func:`data_axes` (single process;
    with several, use ``jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)``)."""
    shards = num_data_shards(mesh)

    def place(path, x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        name = jax.tree_util.keystr(path, simple=True, separator="/") or "batch"
        if x.ndim == 0:
            raise ValueError(
                f"batch[{name!r}] is a scalar; every batch array needs a leading batch axis [B, ...]"
            )
        if x.shape[0] % shards:
            raise ValueError(
                f"batch[{name!r}] has shape {tuple(x.shape)}: its leading batch axis must be divisible by "
                f"the {shards} data shards of mesh {dict(mesh.shape)} (axes {data_axes(mesh)}); use a batch "
                f"size that is a multiple of {shards}"
            )
        return jax.device_put(x, batch_sharding(mesh, x.ndim))

    return jax.tree_util.tree_map_with_path(place, batch)

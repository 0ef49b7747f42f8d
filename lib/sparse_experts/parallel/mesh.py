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
from jax.experimental import multihost_utils
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
    nnx.update(model, put(state, param_shardings(state, mesh, rules)))
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


def process_rows(mesh: Mesh, batch_size: int) -> tuple[int, int]:
    """The rows ``[start, stop)`` of a global batch of ``batch_size`` that this process's devices hold (its
    share: with several processes each reads only these rows of batch t; one process: all of them).
    ``batch_size`` must divide by :func:`num_data_shards`; the share must be one contiguous block (true for
    meshes built by :func:`make_mesh` over ``jax.devices()``, whose devices come process by process)."""
    shards = num_data_shards(mesh)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    if batch_size % shards:
        raise ValueError(
            f"batch_size={batch_size} is not divisible by the {shards} data shards of mesh "
            f"{dict(mesh.shape)} (axes {data_axes(mesh)}); use a multiple of {shards}"
        )
    rows = _held_blocks(mesh, int(batch_size))
    if any(a[1] != b[0] for a, b in zip(rows, rows[1:], strict=False)):
        raise ValueError(
            f"this process's batch rows {rows} are not one block on mesh {dict(mesh.shape)}; build the mesh "
            "over jax.devices() in their order (make_mesh does), so each process holds contiguous rows"
        )
    return rows[0][0], rows[-1][1]


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Place every array [B, ...] of the pytree ``batch`` with B split over :func:`data_axes`. One process:
    the whole batch. Several: this process's share (the rows :func:`process_rows` names), placed with
    ``jax.make_array_from_process_local_data`` into the global batch."""
    shards = num_data_shards(mesh)
    processes = jax.process_count()
    if processes > 1:
        # how many of the batch's shards this process holds: the global size is local x shards / held
        held = len(_held_blocks(mesh, shards))

    def place(path, x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        name = jax.tree_util.keystr(path, simple=True, separator="/") or "batch"
        if x.ndim == 0:
            raise ValueError(
                f"batch[{name!r}] is a scalar; every batch array needs a leading batch axis [B, ...]"
            )
        local_shards = held if processes > 1 else shards
        if x.shape[0] % local_shards:
            what = "this process's share of the" if processes > 1 else "the"
            raise ValueError(
                f"batch[{name!r}] has shape {tuple(x.shape)}: {what} leading batch axis must be divisible "
                f"by the {local_shards} data shards it spans on mesh {dict(mesh.shape)} (axes "
                f"{data_axes(mesh)}); use a batch size that is a multiple of {shards}"
            )
        sharding = batch_sharding(mesh, x.ndim)
        if processes == 1:
            return jax.device_put(x, sharding)
        global_shape = (x.shape[0] * shards // held, *x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, np.asarray(x), global_shape)

    return jax.tree_util.tree_map_with_path(place, batch)


def _held_blocks(mesh: Mesh, batch_size: int) -> list[tuple[int, int]]:
    """The distinct row blocks ``[start, stop)`` of a global batch that this process's devices hold."""
    indices = batch_sharding(mesh).addressable_devices_indices_map((int(batch_size),)).values()
    return sorted({(index[0].start or 0, batch_size if index[0].stop is None else index[0].stop)
                   for index in indices})  # fmt: skip


def put(tree: Any, shardings: Any) -> Any:
    """``jax.device_put(tree, shardings)`` that also works with several processes, where a sharding spans
    devices of other processes: there every process passes the same full values (a model initialised from
    the same seed, a step counter) and places only its own shards (``jax.make_array_from_callback``).
    ``shardings``: one sharding for every leaf, or a pytree matching ``tree``. Arrays already spread over
    the processes are resharded by a jitted identity."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def one(x, sharding):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x if x.sharding == sharding else jax.jit(lambda v: v, out_shardings=sharding)(x)
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = one(jax.random.key_data(x), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: one(x, shardings), tree)
    return jax.tree.map(one, tree, shardings)


def to_host(tree: Any) -> Any:
    """Every array of ``tree`` as a numpy array holding its global value, also when it is spread over
    several processes (gathered from all of them; every process must call this together)."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)

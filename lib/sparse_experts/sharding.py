"""Named device meshes, partition rules from NNX sharding metadata, placement, and memory plans on paper.

Shape letters (../../shared/DESIGN.md): B batch, N tokens, D width, H MLP/expert hidden width, L layers,
A attention heads, E experts; Q head width (D / A), F a fused projection width, Y classes (models.py).

The mesh
--------
:func:`make_mesh` always builds the three named axes ``("data", "expert", "model")`` (size 1 where unused, so
a spec naming any of them is valid on every mesh) with ``AxisType.Auto``: classic ``jax.jit`` with
``in_shardings``/``out_shardings`` and GSPMD propagation work, and no einsum needs an ``out_sharding=``
(``jax.make_mesh`` would default to Explicit axes). "model" is the last, fastest-varying axis, so tensor
parallelism, whose collectives run inside every layer, uses neighbouring devices; the batch is split over the
leading ``("data", "expert")`` axes (:func:`data_axes`).

Partition rules
---------------
Every parameter of :mod:`sparse_experts.models` carries *logical* axis names (``out_sharding`` metadata);
rules map each logical name to mesh axes, in Flax's ``LogicalRules`` format (so they also work with
``nnx.logical_axis_rules`` + ``nnx.get_partition_spec``, minus the de-duplication and fallback below):

============  =====================  ====================================================================
logical axis  mesh axes              why
============  =====================  ====================================================================
"embed" (D)   None; ("data",         Megatron keeps D whole. With ``fsdp=True`` (ZeRO-3 / ViT-22B style)
              "expert") if fsdp      every weight is also split over the batch axes along D and gathered
                                     for use
"mlp" (H)     "model"                column-parallel first MLP matmul, row-parallel second (Megatron)
"heads" (A)   "model"                each device owns whole heads: attention needs no communication
"kv" (Q)      None                   a head is never split
"fused" (F)   "model"                the parallel block's fused [D, 3D + H] / [D + H, D] kernels
"classes" (Y) "model"                the head's output axis (the logits are gathered by GSPMD)
"layers" (L)  None                   scan_layers stacks layers; no pipeline parallelism here
"expert" (E)  "expert"               expert parallelism (routing issue): [E, D, H] expert weights
============  =====================  ====================================================================

:data:`TP_RULES` is the table without FSDP, :data:`FSDP_RULES` with it; :func:`partition_rules` builds
either. A name missing from the rules raises ValueError (add ``(name, None)`` to replicate it).

Resolution for one array (:func:`partition_spec_for`): dimensions are taken left to right; a mesh axis used by
an earlier dimension of the same array is skipped (so expert weights [E, D, H] with fsdp get
``P("expert", "data", "model")``); mesh axes of size 1 are dropped; and when a dimension is not divisible by
the product of its mesh axes, trailing mesh axes are dropped until it is, down to replication. Indivisible
axes therefore fall back to replication rather than crash (e.g. ViT-Ti's 3 heads on 2 "model" devices stay
whole on every device): the program stays correct, only less sharded, and :func:`partition_specs` shows
what was chosen.
Note that the parallel block's fused axis is cut into contiguous chunks of the [q | k | v | mlp] layout, so a
chunk does not align with heads; GSPMD inserts the collectives this needs (correct, but more traffic than a
head-aligned Megatron layout).

Placement: :func:`shard_model` (an initialised model), :func:`create_sharded` (initialised directly in its
shards by a jitted init with ``out_shardings``; nothing is ever materialised whole), :func:`shard_batch`
(leading B over :func:`data_axes`). Sizing: :func:`memory_plan` (bytes per device, abstractly).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from sparse_experts.models import ViT, VitConfig

AXES = ("data", "expert", "model")  # mesh axis order: batch axes first, tensor parallelism innermost
LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def partition_rules(*, fsdp: bool = False) -> LogicalRules:
    """Logical axis -> mesh axes (the table in the module docstring). ``fsdp=True`` also shards "embed"
    over the batch axes ("data", "expert")."""
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


# ---------------------------------------------------------------------------------------------------------
# The mesh.
# ---------------------------------------------------------------------------------------------------------
def _mesh_sizes(shape: Mapping[str, int] | None, num_devices: int | None) -> dict[str, int]:
    """Validated {axis: size} over all of AXES. One size may be -1 (the remaining devices) when
    num_devices is known."""
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
    """A mesh with axes ("data", "expert", "model"), all ``AxisType.Auto`` (see the module docstring).

    ``shape`` maps axis names to sizes, e.g. ``{"data": 2, "model": 4}``; missing axes get size 1, one size
    may be -1 (the remaining devices); default: every device on "data". The sizes must multiply to the number
    of ``devices`` (default ``jax.devices()``).

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
    """The mesh axes the batch is split over: ("data", "expert") when the expert axis is used, else
    ("data",). Experts are sharded over "expert", and the tokens of the images on those devices travel
    to their experts with all_to_all (routing issue)."""
    return ("data", "expert") if _sizes_of(mesh).get("expert", 1) > 1 else ("data",)


def num_data_shards(mesh: Mesh | Mapping[str, int]) -> int:
    """How many pieces the batch is cut into: the product of the :func:`data_axes` sizes."""
    sizes = _sizes_of(mesh)
    return math.prod(sizes.get(name, 1) for name in data_axes(mesh))


# ---------------------------------------------------------------------------------------------------------
# Partition specs from logical axis metadata.
# ---------------------------------------------------------------------------------------------------------
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

    With a ``mesh`` (or a {axis: size} mapping) mesh axes of size 1 are dropped and indivisible dimensions
    fall back to fewer mesh axes, down to replication (module docstring); without one the rules apply as
    written.
    ``where`` names the array in errors.
    """
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


def _state_of(model_or_state: Any) -> nnx.State:
    return model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)


def _logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    axes = variable.get_metadata().get("out_sharding")
    return tuple(axes) if axes else None


def _map_variables(fn, state: nnx.State) -> nnx.State:
    """fn(path string, variable) -> new value, over every Variable of ``state``; keeps the State layout."""

    def visit(path, variable):
        return variable.replace(fn(jax.tree_util.keystr(path, simple=True, separator="/"), variable))

    return jax.tree_util.tree_map_with_path(visit, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def partition_specs(
    model_or_state: Any,
    rules: LogicalRules = TP_RULES,
    mesh: Mesh | Mapping[str, int] | None = None,
) -> nnx.State:
    """A State shaped like ``nnx.state(model)`` whose Variables hold PartitionSpecs (cf.
    ``nnx.get_partition_spec``), from each Variable's logical axes under ``rules`` (see
    :func:`partition_spec_for` for what ``mesh`` changes). Works on real and abstract (``nnx.eval_shape``)
    models; Variables without axis metadata are replicated.
    """

    def spec(path, variable):
        return partition_spec_for(_logical_axes(variable), variable.shape, rules, mesh, where=path)

    return _map_variables(spec, _state_of(model_or_state))


def param_shardings(model_or_state: Any, mesh: Mesh, rules: LogicalRules = TP_RULES) -> nnx.State:
    """Like :func:`partition_specs`, holding ``NamedSharding(mesh, spec)``: ready for ``jax.device_put`` or
    ``jax.jit(..., out_shardings=...)``."""
    specs = partition_specs(model_or_state, rules, mesh)
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs)


# ---------------------------------------------------------------------------------------------------------
# Placement.
# ---------------------------------------------------------------------------------------------------------
def shard_model(model: nnx.Module, mesh: Mesh, rules: LogicalRules = TP_RULES) -> nnx.Module:
    """Move an initialised model's state onto ``mesh`` under ``rules`` (in place; returns the model).

    The model runs sharded from then on: ``nnx.jit``/``jax.jit`` follow the placed shardings (Auto mesh).
    """
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, param_shardings(state, mesh, rules)))
    return model


def create_sharded(
    config: VitConfig, mesh: Mesh, seed: int = 0, rules: LogicalRules = TP_RULES
) -> nnx.Module:
    """``ViT(config, rngs=nnx.Rngs(seed))`` created directly in its shards: the shapes come from
    ``nnx.eval_shape`` and one jitted initialiser writes each shard on its device (``out_shardings``), so no
    device ever holds the whole model. Same values as the eager constructor with the same seed.
    """
    abstract = nnx.eval_shape(lambda: ViT(config, rngs=nnx.Rngs(seed)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = param_shardings(abstract_state, mesh, rules)

    def init() -> nnx.State:
        return nnx.state(ViT(config, rngs=nnx.Rngs(seed)))

    return nnx.merge(graphdef, jax.jit(init, out_shardings=shardings)())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """NamedSharding of an array whose leading B axis is split over :func:`data_axes`, the rest replicated."""
    axes = data_axes(mesh)
    return NamedSharding(mesh, PartitionSpec(axes if len(axes) > 1 else axes[0], *[None] * (ndim - 1)))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Place every array of ``batch`` (a dict, or any pytree, of arrays [B, ...]) with its leading B axis
    split over :func:`data_axes` of ``mesh``. B must be divisible by :func:`num_data_shards`.

    (Single-process placement of a global batch; with several processes build the global array from each
    process's part with ``jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)``.)
    """
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


# ---------------------------------------------------------------------------------------------------------
# Memory plans on paper.
# ---------------------------------------------------------------------------------------------------------
OPTIMIZER_MOMENTS = {"sgd": 0, "momentum": 1, "adam": 2}
GiB = 2**30


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / GiB:,.3f} GiB" if num_bytes < GiB else f"{num_bytes / GiB:,.2f} GiB"


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device of one training step (see :func:`memory_plan` for the assumptions).

    ``print(plan)`` gives a table; ``plan.to_dict()`` plain data for JSON.
    """

    config: str
    mesh_shape: dict[str, int]
    batch_size: int
    optimizer: str
    remat: bool
    param_count: int
    images_per_device: int
    params: int
    optimizer_state: int
    gradients: int
    activations: int
    params_unsharded: int
    activations_per_layer: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def num_devices(self) -> int:
        return math.prod(self.mesh_shape.values())

    @property
    def total(self) -> int:
        return self.params + self.optimizer_state + self.gradients + self.activations

    @property
    def param_shard_factor(self) -> float:
        """Whole-model parameter bytes over the bytes on one device: the effective parameter sharding."""
        return self.params_unsharded / self.params

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(num_devices=self.num_devices, total=self.total, notes=list(self.notes))
        out["param_shard_factor"] = self.param_shard_factor
        return out

    def rows(self) -> list[tuple[str, int]]:
        return [
            ("parameters", self.params),
            ("optimizer state", self.optimizer_state),
            ("gradients", self.gradients),
            ("activations", self.activations),
            ("total", self.total),
        ]

    def per_device_bytes(self) -> dict[str, int]:
        """{"parameters": ..., "optimizer state": ..., "gradients": ..., "activations": ..., "total": ...}."""
        return dict(self.rows())

    def summary(self) -> str:
        """One line: the total per device and where it goes."""
        parts = ", ".join(f"{name} {_gib(b)}" for name, b in self.rows()[:-1])
        return f"{self.config}: {_gib(self.total)} per device ({parts})"

    def __str__(self) -> str:
        mesh = " x ".join(f"{k}={v}" for k, v in self.mesh_shape.items() if v > 1) or "1 device"
        head = (
            f"memory plan: {self.config} ({self.param_count / 1e9:,.3f}B parameters) on {mesh} "
            f"({self.num_devices} devices); batch {self.batch_size} ({self.images_per_device} per device), "
            f"{self.optimizer}, remat {'on' if self.remat else 'off'}"
        )
        lines = [head, f"{'per device':<18}{'bytes':>18}{'':>4}{'GiB':>12}"]
        for name, num_bytes in self.rows():
            lines.append(f"{name:<18}{num_bytes:>18,}{'':>4}{num_bytes / GiB:>12,.3f}")
        lines.append(f"parameters are split {self.param_shard_factor:,.1f} ways on average")
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


def _abstract_state(config: VitConfig) -> nnx.State:
    # Identical layers: the scanned twin has the same arrays (stacked on a replicated "layers" axis, so the
    # same bytes per device) and traces one block instead of L.
    if config.moe is None:
        config = dataclasses.replace(config, scan_layers=True)
    return nnx.state(nnx.eval_shape(lambda: ViT(config, rngs=nnx.Rngs(0))), nnx.Param)


def _shard_elements(shape: Sequence[int], spec: PartitionSpec, sizes: Mapping[str, int]) -> int:
    count = 1
    for i, dim in enumerate(shape):
        entry = spec[i] if i < len(spec) else None
        count *= dim // math.prod(sizes[a] for a in _as_axes(entry))
    return count


def activation_bytes(
    config: VitConfig, images: int, model_shards: Mapping[str, int] | None = None, *, remat: bool = False
) -> tuple[int, int]:
    """Analytic activation bytes a training step keeps for the backward pass of ``images`` images, and the
    bytes of one layer's share.

    Per image and layer, with c the compute dtype's bytes and f = 4 (norm statistics and softmax run in
    float32); elementwise chains that XLA fuses are counted once:

    - residual stream, replicated over "model" (no sequence parallelism): the block input, and in a sequential
      block the mid-block residual (ND each); per norm its normalised float32 value and its output, which is
      the next matmul's input (ND (f + c); one norm in a parallel block, two in a sequential one);
    - attention, split over the heads' mesh axes: q, k, v and the heads' output (4ND); with qk_norm the
      normalised q and k and their norm outputs (2ND (f + c)); the attention weights [A, N, N] in float32
      (plus their compute-dtype copy when c < 4);
    - MLP, split over the "mlp" mesh axes: the hidden before gelu, gelu's tanh and its output (3NH);
    - parallel block: the concatenated [heads | hidden] input of the fused output matmul (N (D + H)).

    Outside the blocks: patches [P, X], the final norm (ND (f + 2c)), pooled features (D), float32 logits (Y).
    Without remat every layer's share is kept (L x layer); with remat each block keeps only its input
    (L x ND) and one block at a time is recomputed (+ 1 layer). Both add half a layer for the gradients in
    flight during a layer's backward: an empirical term, fitted to XLA's buffer assignment
    (``compiled.memory_analysis().temp_size_in_bytes`` of a jitted gradient) on CPU. There, for float32 ViTs,
    the estimate is within about 10% of XLA for unscanned layers with or without remat and scanned layers
    with remat; scanned layers *without* remat measured ~1.6x more (the scan stacks its residuals in extra
    buffers), and bfloat16 measured no smaller than float32 (the CPU computes in float32); on GPU/TPU bfloat16
    activations take c = 2 bytes. ``model_shards``: {"heads": ..., "mlp": ...} divisors for the attention and
    MLP parts (default 1). Returns (total, per layer).
    """
    if config.moe is not None:
        raise NotImplementedError("activation sizes of MoE layers arrive with the routing issue")
    shards = {"heads": 1, "mlp": 1, **(model_shards or {})}
    c, f = jnp.dtype(config.dtype).itemsize, 4
    N, D, H, A, L = config.num_tokens, config.width, config.mlp_dim, config.num_heads, config.depth
    norms = 1 if config.parallel_block else 2
    stream = norms * N * D * c + norms * N * D * (f + c)
    attention = 4 * N * D * c + 2 * config.qk_norm * N * D * (f + c) + A * N * N * (f + (c if c < f else 0))
    mlp = 3 * N * H * c
    if config.parallel_block:
        attention, mlp = attention + N * D * c, mlp + N * H * c
    per_layer = stream + attention // shards["heads"] + mlp // shards["mlp"]
    patches = config.num_patches * config.patch_size**2 * config.channels
    outside = (patches + N * D + D) * c + N * D * (f + c) + 4 * config.num_classes
    working = per_layer // 2  # gradients in flight during one layer's backward (empirical, see above)
    saved = (L * N * D * c + per_layer if remat else L * per_layer) + working
    return images * (saved + outside), images * per_layer


def memory_plan(
    config: VitConfig,
    mesh_shape: Mapping[str, int],
    batch_size: int,
    optimizer: str = "adam",
    *,
    rules: LogicalRules = TP_RULES,
    remat: bool | None = None,
    moment_dtype: str | None = None,
) -> MemoryPlan:
    """Bytes per device of a training step of ``config`` on a mesh of ``mesh_shape`` (no devices needed).

    - Parameters: every array of ``nnx.eval_shape`` (nothing allocated) split as :func:`partition_specs`
      splits it under ``rules`` on a mesh of that shape (indivisible axes replicated); bytes of one shard
      (the largest, which is every shard: splits are exact), summed.
    - Optimizer state: ``OPTIMIZER_MOMENTS[optimizer]`` copies of the parameters ("sgd" 0, "momentum" 1,
      "adam" 2), sharded like them, in ``moment_dtype`` (default: the parameter dtype, as optax's defaults do;
      pass "float32" for float32 moments of bfloat16 parameters). Step counters are ignored.
    - Gradients: one copy of the parameters (same dtype and sharding).
    - Activations: :func:`activation_bytes` for ``batch_size / num_data_shards`` images per device, with
      attention and MLP activations split over the mesh axes their "heads"/"mlp" weights use (the Megatron
      ideal; the residual stream is replicated over "model", no sequence parallelism); ``remat`` defaults to
      ``config.remat``.

    Not counted: XLA temporaries and fusion buffers, weights gathered for compute under FSDP (about one layer
    at a time), the input pipeline, and collective buffers. A plan, not a measurement.
    """
    if optimizer not in OPTIMIZER_MOMENTS:
        raise ValueError(
            f"optimizer={optimizer!r} is unknown; expected one of {', '.join(OPTIMIZER_MOMENTS)}"
        )
    sizes = _mesh_sizes(mesh_shape, None)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    shards = num_data_shards(sizes)
    if batch_size % shards:
        raise ValueError(
            f"batch_size={batch_size} is not divisible by the {shards} data shards of mesh {sizes} "
            f"(axes {data_axes(sizes)}); use a multiple of {shards}"
        )
    remat = config.remat if remat is None else bool(remat)
    state = _abstract_state(config)
    specs = partition_specs(state, rules, sizes)
    params = unsharded = count = optimizer_state = 0
    for (_, variable), (_, spec) in zip(nnx.to_flat_state(state), nnx.to_flat_state(specs), strict=True):
        itemsize = jnp.dtype(variable.dtype).itemsize
        shard = _shard_elements(variable.shape, spec.get_value(), sizes)
        params += shard * itemsize
        moment_size = jnp.dtype(moment_dtype or variable.dtype).itemsize
        optimizer_state += OPTIMIZER_MOMENTS[optimizer] * shard * moment_size
        unsharded += math.prod(variable.shape) * itemsize
        count += math.prod(variable.shape)

    def divisor(logical: str, dim: int) -> int:  # how many ways this rule splits an axis of size dim
        return dim // _shard_elements([dim], partition_spec_for([logical], [dim], rules, sizes), sizes)

    model_shards = {"heads": divisor("heads", config.num_heads), "mlp": divisor("mlp", config.mlp_dim)}
    images = batch_size // shards
    activations, per_layer = activation_bytes(config, images, model_shards, remat=remat)
    notes = (
        f"activations for {images} images per device, attention split {model_shards['heads']} ways, "
        f"MLP {model_shards['mlp']} ways; compute dtype {config.dtype}, parameters {config.param_dtype}",
    )
    return MemoryPlan(
        config=config.name,
        mesh_shape=sizes,
        batch_size=batch_size,
        optimizer=optimizer,
        remat=remat,
        param_count=count,
        images_per_device=images,
        params=params,
        optimizer_state=optimizer_state,
        gradients=params,
        activations=activations,
        params_unsharded=unsharded,
        activations_per_layer=per_layer,
        notes=notes,
    )

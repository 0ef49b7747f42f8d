"""Sizing on paper, on abstract shapes (nothing allocated): parameters, forward FLOPs per image, and bytes per
device of a training step on a mesh, MoE layers included.

Shape letters (../../../shared/DESIGN.md): B batch, N tokens, P patches, D width, H MLP/expert hidden width,
L layers, A heads, E experts, K choices per token, C capacity (slots per expert), G images per routing group,
S = G x N tokens per group, M = E x C slots per image (Soft MoE), Y classes; X pixels per patch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from sparse_experts.models.vit import ViT, VitConfig, moe_layers
from sparse_experts.parallel.mesh import (
    TP_RULES,
    LogicalRules,
    _as_axes,
    _mesh_sizes,
    data_axes,
    num_data_shards,
    partition_spec_for,
    partition_specs,
)
from sparse_experts.routing import layer_capacity


@functools.lru_cache(maxsize=8)
def _abstract_state(config: VitConfig) -> nnx.State:
    """The parameters of ``config`` as shapes (read-only: cached, V-MoE-15B takes ~10 s); identical layers
    are traced as their scanned twin (the same arrays, stacked on a replicated "layers" axis), one block
    instead of L."""
    if config.moe is None and not config.adapter_dim:
        config = dataclasses.replace(config, scan_layers=True)
    return nnx.state(nnx.eval_shape(lambda: ViT(config, rngs=nnx.Rngs(0))), nnx.Param)


@functools.lru_cache(maxsize=64)
def param_count(config: VitConfig, *, active: bool = False) -> int:
    """Total parameters, by abstract initialisation (22B/14 in ~0.1 s). ``active=True``: those used per token;
    for "top_k" and "expert_choice" each MoE layer counts its router and k of its E experts (the total for a
    dense ViT and Soft MoE, where every token mixes into every expert's slots)."""
    total = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(_abstract_state(config)))
    if not active or config.moe is None or config.moe.router == "soft":
        return total
    D, H, moe = config.width, config.mlp_dim, config.moe
    per_expert = 2 * D * H + (H + D if config.mlp_bias else 0)
    return total - len(moe_layers(config)) * (moe.num_experts - moe.k) * per_expert


def flops_per_image(config: VitConfig, *, capacity_factor: float | None = None) -> float:
    """Forward FLOPs per image, analytic: 2 x the multiply-adds of the matmuls (norms, softmax, gelu, biases
    and additions left out).

    Per layer q/k/v 3ND^2, scores and weighted values 2N^2D, output ND^2, MLP 2NDH; plus the patch embedding
    PXD, the MAP head (2ND^2 + 2ND + 2D^2 + 2DH), one adapter set (2NDR per layer) and the head DY. An MoE
    layer replaces 2NDH by the router NDE plus E x C slots of 2DH per group of G images, per image, C from
    :func:`layer_capacity` at ``capacity_factor`` (default: the eval one); dispatch and combine by indices are
    not counted. Soft MoE (M = E x C slots per image): 3NDM for logits, dispatch and combine, plus 2DHM.
    """
    D, H, L, N, P = config.width, config.mlp_dim, config.depth, config.num_tokens, config.num_patches
    if config.moe is None and capacity_factor is not None:
        raise ValueError(f"capacity_factor={capacity_factor} given, but this config has no MoE layers")
    macs = P * config.patch_size**2 * config.channels * D
    macs += L * (4 * N * D * D + 2 * N * N * D + 2 * N * D * H)
    if config.moe is not None:
        moe = config.moe
        E, G = moe.num_experts, moe.group_size
        if moe.router == "soft":  # slots fixed at construction from the training capacity factor
            M = E * layer_capacity("soft", N, E, 1, moe.capacity_factor)
            moe_macs = 3 * N * D * M + 2 * D * H * M
        else:
            if capacity_factor is None:
                capacity_factor = moe.eval_capacity_factor or moe.capacity_factor
            C = layer_capacity(moe.router, G * N, E, moe.k, capacity_factor)
            moe_macs = N * D * E + E * C * 2 * D * H / G
        macs += len(moe_layers(config)) * (moe_macs - 2 * N * D * H)
    if config.pool == "map":
        macs += 2 * N * D * D + 2 * N * D + 2 * D * D + 2 * D * H
    macs += L * 2 * N * D * config.adapter_dim  # one adapter set per image: [D] -> [R] -> [D] per token
    macs += D * config.num_classes
    return 2.0 * macs


OPTIMIZER_MOMENTS = {"sgd": 0, "momentum": 1, "adam": 2}
GiB = 2**30


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / GiB:,.3f} GiB" if num_bytes < GiB else f"{num_bytes / GiB:,.2f} GiB"


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device of one training step (:func:`memory_plan`); ``print(plan)`` gives a table."""

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
    activations_per_layer: int = 0  # the largest layer's share (an MoE layer's, when larger)
    expert_params: int = 0  # bytes of expert weights per device (part of ``params``)
    notes: tuple[str, ...] = field(default=())

    @property
    def num_devices(self) -> int:
        return math.prod(self.mesh_shape.values())

    @property
    def total(self) -> int:
        return self.params + self.optimizer_state + self.gradients + self.activations

    @property
    def param_shard_factor(self) -> float:  # the effective parameter sharding
        return self.params_unsharded / self.params

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(num_devices=self.num_devices, total=self.total, notes=list(self.notes))
        return {**out, "param_shard_factor": self.param_shard_factor}

    def rows(self) -> list[tuple[str, int]]:
        names = ("parameters", "optimizer state", "gradients", "activations", "total")
        values = (self.params, self.optimizer_state, self.gradients, self.activations, self.total)
        return list(zip(names, values, strict=True))

    def per_device_bytes(self) -> dict[str, int]:
        return dict(self.rows())

    def summary(self) -> str:
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


def _shard_elements(shape: Sequence[int], spec: PartitionSpec, sizes: Mapping[str, int]) -> int:
    count = 1
    for i, dim in enumerate(shape):
        entry = spec[i] if i < len(spec) else None
        count *= dim // math.prod(sizes[a] for a in _as_axes(entry))
    return count


def moe_layer_activation_bytes(
    config: VitConfig, model_shards: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Activation bytes one MoE layer of ``config`` keeps for the backward pass of a training step, per
    routing group, in place of the dense MLP's (:func:`activation_bytes` adds them); c the compute dtype's
    bytes, f = 4 (the router runs in float32), the training capacity C of :func:`layer_capacity`.

    "top_k" and "expert_choice", per group of G = ``moe.group_size`` images (S = G x N tokens):

    - "router": the tokens' float32 copy [S, D] (only when c < f), logits and gates [S, E] in float32;
    - "routing": the assignment, expert, slot and weight [S, K] (top-k; expert choice: token and weight
      [E, C]), 4 bytes each;
    - "buffers": the experts' inputs and outputs [E, C, D] (a device holds E / X experts for X groups
      after the all_to_all, the same count), indices dispatch and combine;
    - "hidden": the experts' hidden units [E, C, H], three times (pre-gelu, gelu's tanh, gelu output, as
      the dense MLP), split over "mlp" (``model_shards["mlp"]``).

    "soft" (per image, G = 1, M = E x C slots): "router" the L2-normalised tokens [N, D], logits and both
    softmaxes [N, M] in float32; no "routing"; "buffers" [M, D] twice; "hidden" [M, H] three times.
    Not counted: the one-hot dispatch and combine tensors [S, E, C] of the "einsum" backend (TPU's default;
    the plan follows the "indices" backend), the auxiliary losses' scalars. Also returns "images" (G) and
    "capacity" (C)."""
    moe = config.moe
    if moe is None:
        raise ValueError(f"config {config.name!r} has no MoE layers (moe=None); nothing to size here")
    shards = {"mlp": 1, **(model_shards or {})}
    c, f = jnp.dtype(config.dtype).itemsize, 4
    N, D, H, E = config.num_tokens, config.width, config.mlp_dim, moe.num_experts
    copy = D * f if c < f else 0  # per token: the router's float32 copy of its input
    if moe.router == "soft":
        G = 1
        C = layer_capacity("soft", N, E, 1, moe.capacity_factor)
        router, routing = N * D * f + 3 * N * E * C * f, 0
    else:
        G = moe.group_size
        S = G * N
        C = layer_capacity(moe.router, S, E, moe.k, moe.capacity_factor)
        router = S * copy + 2 * S * E * f
        routing = 3 * S * moe.k * 4 if moe.router == "top_k" else 2 * E * C * 4
    return {
        "router": router,
        "routing": routing,
        "buffers": 2 * E * C * D * c,
        "hidden": 3 * E * C * H * c // shards["mlp"],
        "images": G,
        "capacity": C,
    }


def activation_bytes(
    config: VitConfig, images: int, model_shards: Mapping[str, int] | None = None, *, remat: bool = False
) -> tuple[int, int]:
    """Activation bytes a training step keeps for the backward pass of ``images`` images, and the largest
    layer's share.

    Per image and layer, c the compute dtype's bytes, f = 4 (norm statistics and softmax in float32), fused
    elementwise chains counted once: the residual stream, replicated over "model" (block input and, in a
    sequential block, the mid-block residual, ND each; per norm ND (f + c)); attention, split over the heads'
    mesh axes (q, k, v, output 4ND; with qk_norm 2ND (f + c); weights [A, N, N] in float32, plus a copy when
    c < 4); the MLP, split over "mlp" (3NH: hidden, gelu's tanh, output); a parallel block's fused input
    N (D + H). An MoE layer keeps, instead of its MLP's 3NH (and a parallel block's NH), the bytes of
    :func:`moe_layer_activation_bytes` per routing group (``images`` must fill whole groups). Outside the
    blocks: patches, the final norm, pooled features, float32 logits. With remat each block keeps only its
    input and one block (the largest) is recomputed. Half a layer more (the largest) for gradients in flight
    is an empirical term fitted to XLA's buffer assignment on CPU, within ~10% for float32 ViTs except
    scanned layers without remat (~1.6x more measured). ``model_shards``: {"heads": ..., "mlp": ...}
    divisors.
    """
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
    num_moe = len(moe_layers(config))
    layers = [(L - num_moe, images * per_layer, images * (per_layer // 2))]  # (count, bytes, half) per kind
    if num_moe:
        moe = moe_layer_activation_bytes(config, shards)
        G = moe["images"]
        if isinstance(images, bool) or not isinstance(images, int) or images < 1 or images % G:
            raise ValueError(
                f"images={images!r} does not fill whole routing groups of {G} images "
                f"(MoeConfig.group_size={config.moe.group_size}); use a positive multiple of {G}"
            )
        group = moe["router"] + moe["routing"] + moe["buffers"] + moe["hidden"]
        moe_layer = images * (per_layer - mlp // shards["mlp"]) + images // G * group
        layers.append((num_moe, moe_layer, moe_layer // 2))
    layers = [layer for layer in layers if layer[0]]
    largest = max(size for _, size, _ in layers)
    working = max(half for _, _, half in layers)  # gradients in flight (empirical, see above)
    kept = images * L * N * D * c + largest if remat else sum(count * size for count, size, _ in layers)
    patches = config.num_patches * config.patch_size**2 * config.channels
    outside = (patches + N * D + D) * c + N * D * (f + c) + 4 * config.num_classes
    return kept + working + images * outside, largest


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

    Parameters: one shard of every array as :func:`partition_specs` splits it under ``rules``; optimizer
    state: ``OPTIMIZER_MOMENTS[optimizer]`` copies of them in ``moment_dtype`` (default the parameter dtype,
    as optax's); gradients: one copy; activations: :func:`activation_bytes` for the images per device, split
    as the "heads"/"mlp" weights are (``remat`` defaults to ``config.remat``). Not counted: XLA temporaries,
    weights gathered under FSDP, the input pipeline, collective buffers. A plan, not a measurement.

    MoE layers: every expert weight ([E, D, H], [E, H], [E, H, D], [E, D]; Soft MoE's slots [E, C, D]) is
    split over the "expert" mesh axis by the rules, so a device holds E / (expert axis size) experts' weights,
    their gradients and optimizer state (``MemoryPlan.expert_params``); the router [D, E] is replicated like
    the other dense weights. Their activations are :func:`moe_layer_activation_bytes` per routing group at
    the training capacity factor. The expert axis size must divide E, and the images per device must fill
    whole routing groups (``MoeConfig.group_size``), as the expert-parallel layer requires.
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
    moe, images = config.moe, batch_size // shards
    if moe is not None:
        experts_axis = sizes.get("expert", 1)
        if moe.num_experts % experts_axis:
            divisors = [d for d in range(1, moe.num_experts + 1) if moe.num_experts % d == 0]
            raise ValueError(
                f"mesh_shape['expert']={experts_axis} does not divide "
                f"MoeConfig.num_experts={moe.num_experts}; use an expert axis size in {divisors}"
            )
        group = 1 if moe.router == "soft" else moe.group_size
        if images % group:
            raise ValueError(
                f"batch_size={batch_size} gives {images} images per device ({shards} data shards), not a "
                f"multiple of MoeConfig.group_size={group}; use a batch_size that is a multiple of "
                f"{shards * group}, or a smaller group_size"
            )
    remat = config.remat if remat is None else bool(remat)
    state = _abstract_state(config)
    specs = partition_specs(state, rules, sizes)
    params = unsharded = count = optimizer_state = expert_params = 0
    for (_, variable), (_, spec) in zip(nnx.to_flat_state(state), nnx.to_flat_state(specs), strict=True):
        itemsize = jnp.dtype(variable.dtype).itemsize
        shard = _shard_elements(variable.shape, spec.get_value(), sizes)
        params += shard * itemsize
        if "expert" in (variable.get_metadata().get("out_sharding") or ()):
            expert_params += shard * itemsize
        moment_size = jnp.dtype(moment_dtype or variable.dtype).itemsize
        optimizer_state += OPTIMIZER_MOMENTS[optimizer] * shard * moment_size
        unsharded += math.prod(variable.shape) * itemsize
        count += math.prod(variable.shape)

    def divisor(logical: str, dim: int) -> int:  # how many ways this rule splits an axis of size dim
        return dim // _shard_elements([dim], partition_spec_for([logical], [dim], rules, sizes), sizes)

    model_shards = {"heads": divisor("heads", config.num_heads), "mlp": divisor("mlp", config.mlp_dim)}
    activations, per_layer = activation_bytes(config, images, model_shards, remat=remat)
    notes = (
        f"activations for {images} images per device, attention split {model_shards['heads']} ways, "
        f"MLP {model_shards['mlp']} ways; compute dtype {config.dtype}, parameters {config.param_dtype}",
    )
    if moe is not None:
        slots = moe_layer_activation_bytes(config, model_shards)
        notes += (
            f"{len(moe_layers(config))} MoE layers ({moe.router}, E={moe.num_experts}, k={moe.k}, capacity "
            f"factor {moe.capacity_factor}): C={slots['capacity']} slots per expert per group of "
            f"{slots['images']} image(s); {moe.num_experts // sizes.get('expert', 1)} experts per device, "
            f"their weights {_gib(expert_params)} of the {_gib(params)} of parameters",
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
        expert_params=expert_params,
        notes=notes,
    )

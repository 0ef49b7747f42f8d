"""Vision Transformers with the ViT-22B recipe as opt-in flags, and the one hook where V-MoE layers plug in.

Shape letters (../../shared/DESIGN.md): B batch, P patches per image, N tokens (P, or P + 1 with a class
token), D width, H MLP hidden width, L layers, A heads, Q head width (D / A), Y classes; local to this module:
T key tokens (N, named apart in scores [B, A, N, T]), X pixels per patch, F a fused width (3D + H in, D + H
out).

Defaults are the original ViT (Dosovitskiy et al. 2021); ``vit_config("22B/14")`` turns on the ViT-22B recipe
(Dehghani et al. 2023), each ingredient a :class:`VitConfig` field: ``parallel_block`` (x + attn(norm(x)) +
mlp(norm(x)), with fused [D, 3D + H] and [D + H, D] matmuls; an MoE layer runs beside attention, unfused),
``qk_norm`` (normalise q and k per head, bounding the attention logits), ``qkv_bias``, ``norm``
("layernorm" or "rmsnorm") and ``norm_bias`` (ViT-22B: rmsnorm without bias), ``mlp_bias`` (in a parallel
block it also gives the fused attention output its bias; a sequential block's attention output always has
one), ``pool`` ("cls", "gap" or "map": a learned probe attends over the tokens), ``posemb`` ("learn" or
"sincos2d"), ``param_dtype``/``dtype`` (norms and softmax in float32, logits returned in float32), ``remat``
and ``scan_layers`` (the L blocks stacked on a "layers" axis under nnx.scan; not with MoE layers).

Adapters (Houlsby et al. 2019; the adapter experts of Puigcerver et al. 2021): ``adapter_dim`` R > 0 adds
``adapter_sets`` S residual bottleneck adapters after every block, x + mlp(x) with the one :class:`Mlp` of
hidden width R, its output weights zero-initialised so that a new adapter leaves the model's function
unchanged, and gives the model one head per set (``head`` [S, D, Y]); ``model(images, adapter=s)`` runs
set s. Local letter: S adapter sets, R adapter width.

Every parameter carries logical axis names (``out_sharding`` metadata, mapped to mesh axes by
:mod:`sparse_experts.parallel.mesh`). :func:`make_mlp` chooses each layer's MLP; every MLP returns
``(y[B, N, D], record)``, and MoE records come back in the stats under "moe".
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sparse_experts.models.mlp import Mlp, param
from sparse_experts.models.moe import MoeMlp
from sparse_experts.routing import (
    MOE_ROUTERS,
    check_bool,
    check_capacity_factor,
    check_choices,
    check_int,
    check_noise_std,
    check_one_of,
    fail,
)

DTYPES = ("float32", "bfloat16")
NORMS = ("layernorm", "rmsnorm")
POOLS = ("cls", "gap", "map")
POSEMBS = ("learn", "sincos2d")

# Size name -> architecture (big_vision's table; "mu" is this workbook's CPU-sized micro model).
SIZES: Mapping[str, Mapping[str, Any]] = {
    "mu": dict(width=64, depth=4, mlp_dim=256, num_heads=4),
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
    "H": dict(width=1280, depth=32, mlp_dim=5120, num_heads=16),
    "g": dict(width=1408, depth=40, mlp_dim=6144, num_heads=16),
    "G": dict(width=1664, depth=48, mlp_dim=8192, num_heads=16),
    # ViT-22B (Dehghani et al. 2023, Table 1). GAP pooling is an assumption (pool="map" adds 453M parameters).
    "22B": dict(
        width=6144, depth=48, mlp_dim=24576, num_heads=48, parallel_block=True, qk_norm=True,
        qkv_bias=False, norm="rmsnorm", norm_bias=False, pool="gap",
    ),
}  # fmt: skip


def placement_layers(placement: str | tuple[int, ...], depth: int) -> tuple[int, ...]:
    """0-based MoE layer indices, as V-MoE places them: "every-n" is n-1, 2n-1, ...; "last-n" the last n odd
    layers (last-2 of 12 is 9, 11); a tuple those layers. A placement that does not fit ``depth`` raises."""
    if isinstance(placement, str):
        match = re.fullmatch(r"(every|last)-([1-9]\d*)", placement)
        if not match:
            fail("MoeConfig.placement", placement, "'every-n', 'last-n' or a tuple of layer indices")
        n = int(match.group(2))
        if match.group(1) == "every":
            layers = tuple(range(n - 1, depth, n))
        else:
            odd = tuple(range(1, depth, 2))
            if n > len(odd):
                raise ValueError(
                    f"MoeConfig.placement={placement!r} needs {n} odd layers but depth={depth} has "
                    f"{len(odd)}; use last-{len(odd)} or fewer, or a deeper model"
                )
            layers = odd[len(odd) - n :]
        if not layers:
            raise ValueError(f"MoeConfig.placement={placement!r} selects no layer of depth={depth}")
        return layers
    bad = [i for i in placement if isinstance(i, bool) or not isinstance(i, numbers.Integral)]
    bad += [i for i in placement if not bad and not 0 <= i < depth]
    if bad or len(set(placement)) != len(placement) or not placement:
        raise ValueError(
            f"MoeConfig.placement={placement!r} is not allowed; expected distinct 0-based layer indices "
            f"in [0, {depth}) (depth={depth})"
        )
    return tuple(sorted(int(i) for i in placement))


@dataclass(frozen=True)
class MoeConfig:
    """Where and how MoE layers replace dense MLPs (V-MoE). ``group_size`` counts images per routing group;
    ``eval_capacity_factor=None`` means the training value."""

    num_experts: int = 8
    k: int = 2
    capacity_factor: float = 1.05
    eval_capacity_factor: float | None = None
    batch_priority: bool = False
    group_size: int = 1
    router: str = "top_k"
    placement: str | tuple[int, ...] = "every-2"
    noise_std: float = 1.0

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        set_("num_experts", check_int("MoeConfig.num_experts", self.num_experts))
        set_("k", check_choices(self.k, self.num_experts, name="MoeConfig.k"))
        set_("capacity_factor", check_capacity_factor(self.capacity_factor, "MoeConfig.capacity_factor"))
        if self.eval_capacity_factor is not None:
            value = check_capacity_factor(self.eval_capacity_factor, "MoeConfig.eval_capacity_factor")
            set_("eval_capacity_factor", value)
        set_("batch_priority", check_bool("MoeConfig.batch_priority", self.batch_priority))
        set_("group_size", check_int("MoeConfig.group_size", self.group_size))
        check_one_of("MoeConfig.router", self.router, MOE_ROUTERS)
        set_("noise_std", check_noise_std(self.noise_std, "MoeConfig.noise_std"))
        if not isinstance(self.placement, str):  # canonical: a sorted tuple; VitConfig checks the depth
            layers = tuple(self.placement)
            set_("placement", tuple(sorted(layers)) if all(isinstance(i, int) for i in layers) else layers)


@dataclass(frozen=True)
class VitConfig:
    """A ViT (or V-MoE) architecture as plain data, validated on construction; see :func:`vit_config`."""

    name: str
    patch_size: int
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    image_size: int = 224
    channels: int = 3
    num_classes: int = 1000  # 0: no head, the model returns pooled features [B, D]
    parallel_block: bool = False
    qk_norm: bool = False
    qkv_bias: bool = True
    norm: str = "layernorm"
    norm_bias: bool = True
    mlp_bias: bool = True
    pool: str = "cls"
    posemb: str = "learn"
    head_zero_init: bool = True
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: bool = False
    scan_layers: bool = False
    moe: MoeConfig | None = None
    adapter_dim: int = 0  # R: bottleneck width of the adapters after every block (0: none)
    adapter_sets: int = 1  # S: adapter sets (each with its own head) when adapter_dim > 0

    def __post_init__(self) -> None:
        own, set_ = "VitConfig", functools.partial(object.__setattr__, self)
        if not isinstance(self.name, str):
            fail(f"{own}.name", self.name, "a size string such as 'B/16'")
        for field in ["patch_size", "width", "depth", "mlp_dim", "num_heads", "image_size", "channels"]:
            set_(field, check_int(f"{own}.{field}", getattr(self, field)))
        set_("num_classes", check_int(f"{own}.num_classes", self.num_classes, minimum=0))
        set_("adapter_dim", check_int(f"{own}.adapter_dim", self.adapter_dim, minimum=0))
        set_("adapter_sets", check_int(f"{own}.adapter_sets", self.adapter_sets))
        if self.adapter_dim and (self.scan_layers or not self.num_classes):
            raise ValueError(
                f"VitConfig.adapter_dim={self.adapter_dim} needs scan_layers=False and num_classes > 0 "
                f"(one head per adapter set); got scan_layers={self.scan_layers}, "
                f"num_classes={self.num_classes}"
            )
        for field in ["parallel_block", "qk_norm", "qkv_bias", "norm_bias", "mlp_bias", "head_zero_init",
                      "remat", "scan_layers"]:  # fmt: skip
            set_(field, check_bool(f"{own}.{field}", getattr(self, field)))
        check_one_of(f"{own}.norm", self.norm, NORMS)
        check_one_of(f"{own}.pool", self.pool, POOLS)
        check_one_of(f"{own}.posemb", self.posemb, POSEMBS)
        for field in ["param_dtype", "dtype"]:
            value = getattr(self, field)
            if not isinstance(value, str):  # accept jnp.bfloat16 and friends, store the name
                try:
                    value = jnp.dtype(value).name
                except TypeError:
                    pass
            set_(field, check_one_of(f"{own}.{field}", value, DTYPES))
        if self.width % self.num_heads:
            raise ValueError(
                f"VitConfig.width={self.width} is not divisible by num_heads={self.num_heads}; "
                f"pick a width that is a multiple of num_heads"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"VitConfig.image_size={self.image_size} is not divisible by patch_size={self.patch_size}; "
                f"pick an image size that is a multiple of the patch size"
            )
        if self.posemb == "sincos2d" and self.width % 4:
            raise ValueError(
                f"VitConfig.posemb='sincos2d' needs width divisible by 4, got width={self.width}"
            )
        if isinstance(self.moe, Mapping):
            set_("moe", MoeConfig(**self.moe))
        if self.moe is not None:
            if not isinstance(self.moe, MoeConfig):
                fail(f"{own}.moe", self.moe, "None, a MoeConfig or a dict of MoeConfig fields")
            placement_layers(self.moe.placement, self.depth)
            if self.scan_layers:
                raise ValueError(
                    "VitConfig.scan_layers=True needs identical layers, but moe places MoE layers at "
                    f"{moe_layers(self)}; set scan_layers=False"
                )

    @property
    def head_width(self) -> int:
        """Q = D / A."""
        return self.width // self.num_heads

    @property
    def num_patches(self) -> int:
        """P = (image_size / patch_size)**2."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """N: P, plus one for the class token when pool == "cls"."""
        return self.num_patches + (self.pool == "cls")

    def replace(self, **overrides: Any) -> VitConfig:
        """A copy with some fields changed; unknown fields raise ValueError naming the valid ones."""
        _check_fields(overrides)
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """The fields; the adapter fields only when adapters are on (older configs keep their JSON)."""
        data = dataclasses.asdict(self)
        if not self.adapter_dim:
            del data["adapter_dim"], data["adapter_sets"]
        return data

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace; equal configs give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def config_hash(self) -> str:
        """sha256 hex digest of :meth:`to_json`: a stable cache key."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VitConfig:
        _check_fields(data)
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> VitConfig:
        return cls.from_dict(json.loads(text))


def _check_fields(overrides: Mapping[str, Any]) -> None:
    valid = [f.name for f in dataclasses.fields(VitConfig)]
    for key in overrides:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown VitConfig field {key!r}{hint}; valid fields: {', '.join(valid)}")


def vit_config(size: str, **overrides: Any) -> VitConfig:
    """Decode a big_vision size string "NAME/PATCH" (e.g. "B/16", "22B/14", "mu/4") plus field overrides.

    >>> vit_config("B/16").width, vit_config("mu/4", image_size=32, qk_norm=True).qk_norm
    (768, True)
    """
    match = re.fullmatch(r"([^/]+)/(\d+)", size) if isinstance(size, str) else None
    if not match or match.group(1) not in SIZES:
        raise ValueError(
            f"unknown size string {size!r}; expected NAME/PATCH with NAME one of {', '.join(SIZES)} "
            f"and PATCH a positive integer, e.g. 'B/16' or 'mu/4'"
        )
    if "name" in overrides or "patch_size" in overrides:
        raise ValueError(f"name and patch_size come from the size string {size!r}; change the string instead")
    _check_fields(overrides)
    fields = {**SIZES[match.group(1)], **overrides}
    return VitConfig(name=size, patch_size=int(match.group(2)), **fields)


def moe_layers(config: VitConfig) -> tuple[int, ...]:
    """0-based indices of the layers whose MLP is an MoE (empty for a dense ViT)."""
    return () if config.moe is None else placement_layers(config.moe.placement, config.depth)


# Building blocks. Parameters are stored in param_dtype and cast to the compute dtype where used.
_zeros, _ones = nnx.initializers.zeros, nnx.initializers.ones


def _param(rngs: nnx.Rngs, init, shape: tuple[int, ...], axes: tuple[str | None, ...], config: VitConfig):
    return param(rngs, init, shape, axes, config.param_dtype)


def _xavier(in_axis, out_axis):
    return nnx.initializers.xavier_uniform(in_axis=in_axis, out_axis=out_axis)


def _get(param: nnx.Param | None, dtype) -> jax.Array | None:
    return None if param is None else param[...].astype(dtype)


class Norm(nnx.Module):
    """LayerNorm or RMSNorm over the last axis (size ``size``) with a learned scale and optional bias."""

    def __init__(self, size: int, axis: str, config: VitConfig, *, rngs: nnx.Rngs):
        self.centre = config.norm == "layernorm"
        self.scale = _param(rngs, _ones, (size,), (axis,), config)
        self.bias = _param(rngs, _zeros, (size,), (axis,), config) if config.norm_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x.astype(jnp.float32)
        if self.centre:
            y = y - jnp.mean(y, axis=-1, keepdims=True)
        y = y * jax.lax.rsqrt(jnp.mean(jnp.square(y), axis=-1, keepdims=True) + 1e-6)
        y = y * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


def attend(q, k, v, *, q_norm=None, k_norm=None, with_stats=False):
    """Attention of q [B, N, A, Q] over k, v [B, T, A, Q] -> ([B, N, A, Q], stats), softmax in float32.
    ``with_stats``: the max logit and mean attention entropy (float32 scalars, no gradient); else {}."""
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    logits = jnp.einsum("BNAQ,BTAQ->BANT", q, k) * (q.shape[-1] ** -0.5)
    log_weights = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    weights = jnp.exp(log_weights)
    out = jnp.einsum("BANT,BTAQ->BNAQ", weights.astype(v.dtype), v)
    stats = {}
    if with_stats:
        logits, log_weights = jax.lax.stop_gradient((logits.astype(jnp.float32), log_weights))
        entropy = -jnp.sum(jnp.exp(log_weights) * log_weights, axis=-1)
        stats = {"attn_max_logit": jnp.max(logits), "attn_entropy": jnp.mean(entropy)}
    return out, stats


class Attention(nnx.Module):
    """q/k/v projections [D, A, Q], attention, output [A, Q, D]: the sequential block's and the MAP head's."""

    def __init__(self, config: VitConfig, *, qk_norm: bool, rngs: nnx.Rngs):
        D, A, Q = config.width, config.num_heads, config.head_width
        self.dtype = config.dtype
        for name in ("query", "key", "value"):
            setattr(self, name, _param(rngs, _xavier(0, (1, 2)), (D, A, Q), ("embed", "heads", "kv"), config))
            bias = _param(rngs, _zeros, (A, Q), ("heads", "kv"), config) if config.qkv_bias else None
            setattr(self, f"{name}_bias", bias)
        self.out = _param(rngs, _xavier((0, 1), 2), (A, Q, D), ("heads", "kv", "embed"), config)
        self.out_bias = _param(rngs, _zeros, (D,), ("embed",), config)
        self.q_norm = Norm(Q, "kv", config, rngs=rngs) if qk_norm else None
        self.k_norm = Norm(Q, "kv", config, rngs=rngs) if qk_norm else None

    def project(self, x: jax.Array, name: str) -> jax.Array:
        y = jnp.einsum("BND,DAQ->BNAQ", x, _get(getattr(self, name), self.dtype))
        bias = _get(getattr(self, f"{name}_bias"), self.dtype)
        return y if bias is None else y + bias

    def __call__(self, x: jax.Array, context: jax.Array | None = None, *, with_stats: bool = False):
        """x [B, N, D] attends over context [B, T, D] (default: x itself) -> ([B, N, D], stats)."""
        context = x if context is None else context
        q, k, v = self.project(x, "query"), self.project(context, "key"), self.project(context, "value")
        y, stats = attend(q, k, v, q_norm=self.q_norm, k_norm=self.k_norm, with_stats=with_stats)
        y = jnp.einsum("BNAQ,AQD->BND", y, _get(self.out, self.dtype))
        return y + _get(self.out_bias, self.dtype), stats


def make_mlp(config: VitConfig, layer_index: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """Layer ``layer_index``'s MLP: an :class:`MoeMlp` at :func:`moe_layers`, else a dense :class:`Mlp`."""
    if layer_index not in moe_layers(config):
        return Mlp.from_vit_config(config, rngs=rngs)
    return MoeMlp.from_vit_config(config, layer_index, rngs=rngs)


class EncoderBlock(nnx.Module):
    """Sequential (original ViT) block: x + attn(norm1(x)), then x + mlp(norm2(x)). [B, N, D] -> [B, N, D]."""

    def __init__(self, config: VitConfig, layer_index: int, *, rngs: nnx.Rngs):
        self.norm1 = Norm(config.width, "embed", config, rngs=rngs)
        self.attn = Attention(config, qk_norm=config.qk_norm, rngs=rngs)
        self.norm2 = Norm(config.width, "embed", config, rngs=rngs)
        self.mlp = make_mlp(config, layer_index, rngs=rngs)

    def __call__(self, x, *, train=False, with_stats=False, moe_overrides=None):
        """-> (x [B, N, D], attention stats, MLP record)."""
        y, stats = self.attn(self.norm1(x), with_stats=with_stats)
        x = x + y
        y, record = self.mlp(self.norm2(x), train=train, **(moe_overrides or {}))
        return x + y, stats, record


class ParallelBlock(nnx.Module):
    """ViT-22B block: h = norm(x); x + attn(h) + mlp(h), with [q | k | v | mlp hidden] one matmul (F = 3D + H)
    and [heads | mlp hidden] another (F = D + H). At an MoE layer only q/k/v are fused (F = 3D)."""

    def __init__(self, config: VitConfig, layer_index: int, *, rngs: nnx.Rngs):
        D, H, A, Q = config.width, config.mlp_dim, config.num_heads, config.head_width
        self.dtype, self.num_heads = config.dtype, A
        self.norm = Norm(D, "embed", config, rngs=rngs)
        self.mlp = make_mlp(config, layer_index, rngs=rngs) if layer_index in moe_layers(config) else None
        hidden = 0 if self.mlp is not None else H  # the fused MLP width
        self.in_kernel = _param(rngs, _xavier(0, 1), (D, 3 * D + hidden), ("embed", "fused"), config)
        qkv_bias = config.qkv_bias
        self.qkv_bias = _param(rngs, _zeros, (3, A, Q), (None, "heads", "kv"), config) if qkv_bias else None
        self.mlp_bias = _param(rngs, _zeros, (H,), ("mlp",), config) if config.mlp_bias and hidden else None
        self.out_kernel = _param(rngs, _xavier(0, 1), (D + hidden, D), ("fused", "embed"), config)
        self.out_bias = _param(rngs, _zeros, (D,), ("embed",), config) if config.mlp_bias else None
        self.q_norm = Norm(Q, "kv", config, rngs=rngs) if config.qk_norm else None
        self.k_norm = Norm(Q, "kv", config, rngs=rngs) if config.qk_norm else None

    def __call__(self, x, *, train=False, with_stats=False, moe_overrides=None):
        """-> (x [B, N, D], attention stats, MLP record)."""
        B, N, D = x.shape
        h = self.norm(x)
        fused = jnp.einsum("BND,DF->BNF", h, _get(self.in_kernel, self.dtype))
        qkv = fused[..., : 3 * D].reshape(B, N, 3, self.num_heads, D // self.num_heads)
        if self.qkv_bias is not None:
            qkv = qkv + _get(self.qkv_bias, self.dtype)
        heads, stats = attend(
            *jnp.unstack(qkv, axis=2), q_norm=self.q_norm, k_norm=self.k_norm, with_stats=with_stats
        )
        branches = [heads.reshape(B, N, D)]
        if self.mlp is None:
            hidden = fused[..., 3 * D :]
            hidden = hidden if self.mlp_bias is None else hidden + _get(self.mlp_bias, self.dtype)
            branches.append(jax.nn.gelu(hidden))
        y = jnp.einsum("BNF,FD->BND", jnp.concatenate(branches, axis=-1), _get(self.out_kernel, self.dtype))
        if self.out_bias is not None:
            y = y + _get(self.out_bias, self.dtype)
        record = {}
        if self.mlp is not None:
            moe_y, record = self.mlp(h, train=train, **(moe_overrides or {}))
            y = y + moe_y
        return x + y, stats, record


class Encoder(nnx.Module):
    """L blocks (an nnx.List, or stacked on a "layers" axis with scan_layers) then a final norm:
    [B, N, D] -> ([B, N, D], stats)."""

    def __init__(self, config: VitConfig, *, rngs: nnx.Rngs):
        block = ParallelBlock if config.parallel_block else EncoderBlock
        sets, layers = range(config.adapter_sets), range(config.depth if config.adapter_dim else 0)
        # [L][S] bottleneck MLPs whose output starts at zero (None without adapters)
        adapters = [nnx.List([_adapter(config, rngs) for _ in sets]) for _ in layers]
        self.adapters = nnx.List(adapters) if adapters else None
        self.scan, self.remat, self.depth = config.scan_layers, config.remat, config.depth
        if config.scan_layers:  # identical layers (no MoE), so one layer index fits all

            @nnx.split_rngs(splits=config.depth)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def create(rngs: nnx.Rngs):
                return block(config, 0, rngs=rngs)

            self.blocks = create(rngs)
        else:
            self.blocks = nnx.List([block(config, i, rngs=rngs) for i in range(config.depth)])
        self.norm = Norm(config.width, "embed", config, rngs=rngs)

    def __call__(self, x, *, train=False, with_stats=False, moe_overrides=None, adapter=0):
        """``with_stats``: False, True (attention statistics and MoE records) or "moe" (MoE records only);
        ``adapter``: the adapter set after each block (when the model has adapters)."""
        attn_stats = with_stats is True

        def apply(block, x, overrides):
            return block(x, train=train, with_stats=attn_stats, moe_overrides=overrides)

        apply = nnx.remat(apply) if self.remat else apply
        if self.scan:

            def body(x, block):
                x, stats, _ = apply(block, x, moe_overrides)
                return x, stats

            axes, metadata = (nnx.Carry, 0), {nnx.PARTITION_NAME: "layers"}
            scan = nnx.scan(body, in_axes=axes, out_axes=axes, transform_metadata=metadata)
            x, stats = scan(x, self.blocks)
            records = {}
        else:
            per_layer, records = [], {}
            for i, block in enumerate(self.blocks):
                overrides = moe_overrides
                if overrides and overrides.get("rng") is not None:
                    overrides = {**overrides, "rng": jax.random.fold_in(overrides["rng"], i)}
                x, layer_stats, record = apply(block, x, overrides)
                if self.adapters is not None:
                    x = x + self.adapters[i][adapter](x)[0]
                per_layer.append(layer_stats)
                if record:
                    records[i] = record
            stats = jax.tree.map(lambda *s: jnp.stack(s), *per_layer)
        stats = {**(stats if attn_stats else {}), "moe": records} if with_stats else {}
        return self.norm(x), stats


def _adapter(config: VitConfig, rngs: nnx.Rngs) -> Mlp:
    """One adapter: the MLP [D] -> [R] -> [D] with zero output weights and bias (x + adapter(x) = x)."""
    mlp = Mlp(config.width, config.adapter_dim, rngs=rngs, dtype=config.dtype, param_dtype=config.param_dtype)
    mlp.wo[...] = jnp.zeros_like(mlp.wo[...])
    return mlp


def sincos2d(side: int, width: int) -> jax.Array:
    """Fixed 2-D sine-cosine position embeddings [side**2, width] (width divisible by 4)."""
    omega = 1.0 / 10_000 ** (jnp.arange(width // 4) / (width // 4 - 1 or 1))
    y, x = jnp.meshgrid(jnp.arange(side), jnp.arange(side), indexing="ij")
    y, x = y.reshape(-1, 1) * omega, x.reshape(-1, 1) * omega
    return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)


class MapHead(nnx.Module):
    """Attention pooling: a learned probe [D] attends over x [B, N, D]; y + mlp(norm(y)) -> [B, D]."""

    def __init__(self, config: VitConfig, *, rngs: nnx.Rngs):
        self.probe = _param(
            rngs, nnx.initializers.xavier_uniform(), (1, 1, config.width), (None, None, "embed"), config
        )
        self.attn = Attention(config, qk_norm=False, rngs=rngs)
        self.norm = Norm(config.width, "embed", config, rngs=rngs)
        self.mlp = Mlp.from_vit_config(config, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        probe = jnp.broadcast_to(self.probe[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        y, _ = self.attn(probe, x)
        y = y + self.mlp(self.norm(y))[0]
        return y[:, 0]


class ViT(nnx.Module):
    """Vision Transformer: ``model(images[B, image_size, image_size, channels])`` -> float32 logits [B, Y]
    (pooled features [B, D] when num_classes == 0). ``return_stats=True`` -> (logits, stats) with
    "attn_max_logit" [L], "attn_entropy" [L] and "moe" {layer index: MoE record} from the same pass; "moe"
    gives only the MoE records (no extra work). ``moe_overrides`` (k, capacity_factor, rng, mesh) go to
    every MoE layer, an ``rng`` folded with the layer index first.
    """

    def __init__(self, config: VitConfig, *, rngs: nnx.Rngs):
        D, p, C = config.width, config.patch_size, config.channels
        self.config = config
        patch_init = nnx.initializers.lecun_normal((0, 1, 2), 3)
        self.patch_kernel = _param(rngs, patch_init, (p, p, C, D), (None, None, None, "embed"), config)
        self.patch_bias = _param(rngs, _zeros, (D,), ("embed",), config)
        cls = config.pool == "cls"
        self.cls = _param(rngs, _zeros, (1, 1, D), (None, None, "embed"), config) if cls else None
        learned = config.posemb == "learn"
        init = nnx.initializers.normal(0.02)
        self.posemb = _param(rngs, init, (config.num_tokens, D), (None, "embed"), config) if learned else None
        self.encoder = Encoder(config, rngs=rngs)
        self.map_head = MapHead(config, rngs=rngs) if config.pool == "map" else None
        Y, init = config.num_classes, (_zeros if config.head_zero_init else _xavier(0, 1))
        sets = (config.adapter_sets,) if config.adapter_dim else ()  # one head per adapter set
        axes = (None,) * len(sets)
        self.head = _param(rngs, init, (*sets, D, Y), (*axes, "embed", "classes"), config) if Y else None
        self.head_bias = _param(rngs, _zeros, (*sets, Y), (*axes, "classes"), config) if Y else None

    def embed(self, images: jax.Array) -> jax.Array:
        """images [B, S, S, C] -> tokens [B, N, D]: patches ("BPX,XD->BPD"), class token, positions."""
        cfg = self.config
        expected = (cfg.image_size, cfg.image_size, cfg.channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images have shape {images.shape}; expected [B, {', '.join(map(str, expected))}]"
            )
        B, S, p = images.shape[0], cfg.image_size, cfg.patch_size
        patches = images.astype(cfg.dtype).reshape(B, S // p, p, S // p, p, cfg.channels)
        patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(B, cfg.num_patches, -1)
        kernel = _get(self.patch_kernel, cfg.dtype).reshape(-1, cfg.width)
        x = jnp.einsum("BPX,XD->BPD", patches, kernel) + _get(self.patch_bias, cfg.dtype)
        if self.cls is not None:
            x = jnp.concatenate([jnp.broadcast_to(_get(self.cls, cfg.dtype), (B, 1, cfg.width)), x], axis=1)
        if self.posemb is not None:
            return x + _get(self.posemb, cfg.dtype)
        fixed = sincos2d(S // p, cfg.width)
        fixed = jnp.pad(fixed, ((1, 0), (0, 0))) if self.cls is not None else fixed
        return x + fixed.astype(cfg.dtype)

    def _adapter_index(self, adapter: Any) -> int:
        sets = self.config.adapter_sets if self.config.adapter_dim else 1
        if isinstance(adapter, bool) or not isinstance(adapter, numbers.Integral) or not 0 <= adapter < sets:
            raise ValueError(
                f"adapter={adapter!r}: this model has {sets} adapter set(s); expected an index in [0, {sets})"
            )
        return int(adapter)

    def encode(self, images, *, train=False, return_stats=False, moe_overrides=None, adapter=0):
        """images [B, S, S, C] -> pooled features [B, D] (and stats when return_stats), through adapter set
        ``adapter`` when the model has adapters."""
        tokens = self.embed(images)
        adapter = self._adapter_index(adapter)
        x, stats = self.encoder(
            tokens, train=train, with_stats=return_stats, moe_overrides=moe_overrides, adapter=adapter
        )
        if self.config.pool == "cls":
            pooled = x[:, 0]
        elif self.config.pool == "gap":
            pooled = jnp.mean(x, axis=1)
        else:
            pooled = self.map_head(x)
        return (pooled, stats) if return_stats else pooled

    def __call__(self, images, *, train=False, return_stats=False, moe_overrides=None, adapter=0):
        if moe_overrides and self.config.moe is None:
            raise ValueError(f"moe_overrides={moe_overrides!r} given, but this model has no MoE layers")
        adapter = self._adapter_index(adapter)
        pooled = self.encode(
            images, train=train, return_stats=return_stats, moe_overrides=moe_overrides, adapter=adapter
        )
        pooled, stats = pooled if return_stats else (pooled, None)
        out = pooled if self.head is None else self.classify(pooled, adapter=adapter)
        out = out.astype(jnp.float32)
        return (out, stats) if return_stats else out

    def classify(self, pooled: jax.Array, *, adapter: int = 0) -> jax.Array:
        """The head: pooled features [B, D] -> logits [B, Y] (adapter set ``adapter``'s head, when the model
        has adapters), in the compute dtype."""
        adapter = self._adapter_index(adapter)
        head, bias = _get(self.head, self.config.dtype), _get(self.head_bias, self.config.dtype)
        if self.config.adapter_dim:
            head, bias = head[adapter], bias[adapter]
        return jnp.einsum("BD,DY->BY", pooled.astype(head.dtype), head) + bias

"""The MoE layer (V-MoE, expert choice, Soft MoE) on the routing functions of :mod:`sparse_experts.routing`.

Shape letters (../../../shared/DESIGN.md): B batch, N tokens per image, D width, H expert hidden width,
G routing groups, S tokens per group, E experts, K choices per token, C capacity (slots per expert).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sparse_experts.models.mlp import Mlp, param
from sparse_experts.parallel.experts import EXPERT_AXIS, expert_parallel_apply
from sparse_experts.routing import (
    _EXACT,
    BACKENDS,
    MOE_ROUTERS,
    check_bool,
    check_choices,
    check_int,
    check_noise_std,
    check_one_of,
    combine,
    dispatch,
    expert_choice_routing,
    importance_loss,
    layer_capacity,
    load_loss,
    noisy_router_logits,
    router_z_loss,
    switch_load_balancing_loss,
    top_k_routing,
)

Array = jax.Array


def _l2_normalize(x: Array, axis: int = -1) -> Array:
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True) + 1e-6)


def stacked_experts(num_experts: int, width: int, hidden: int, *, rngs: nnx.Rngs, **mlp_options) -> Mlp:
    """E copies of :class:`~sparse_experts.models.mlp.Mlp` (one rng key each) by ``nnx.vmap``: every weight
    gains a leading E axis named "expert" (``wi[E, D, H]``, ``bi[E, H]``, ``wo[E, H, D]``, ``bo[E, D]``)."""

    @nnx.split_rngs(splits=num_experts)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: EXPERT_AXIS})
    def create(rngs: nnx.Rngs) -> Mlp:
        return Mlp(width, hidden, rngs=rngs, **mlp_options)

    return create(rngs)


def apply_stacked(experts: Mlp, buffers: Array) -> Array:
    """Stacked experts (:func:`stacked_experts`) on buffers ``[..., E, C, D]`` -> ``[..., E, C, D]``: expert e
    on buffer column e only."""
    axis = buffers.ndim - 3

    @nnx.vmap(in_axes=(0, axis), out_axes=axis, transform_metadata={nnx.PARTITION_NAME: EXPERT_AXIS})
    def run(mlp: Mlp, x: Array) -> Array:
        return mlp(x)[0]

    return run(experts, buffers)


class MoeMlp(nnx.Module):
    """E expert MLPs (:func:`stacked_experts`) replacing a ViT's dense MLP: ``x[B, N, D]`` ->
    ``(y[B, N, D], record)``.

    - ``"top_k"`` (V-MoE): G = B / ``group_size`` groups of S = group_size x N tokens; a float32 router
      kernel ``[D, E]`` (no bias) plus training noise of std ``noise_std / E``; gates = softmax;
      :func:`top_k_routing` with C = :func:`layer_capacity`; :func:`dispatch`, experts, :func:`combine`.
    - ``"expert_choice"`` (Zhou et al. 2022): same groups and gates, :func:`expert_choice_routing`.
    - ``"soft"`` (Puigcerver et al. 2023): per image, E x C learned slots ``[E, C, D]``; logits = (learned
      scale x L2-normalised tokens) . (L2-normalised slots); dispatch is a softmax over the N tokens, combine
      over the E x C slots. C (``slots_per_expert``) is fixed; no noise, no drops, no k/BPR/capacity.

    The record (same keys for every router): "combine_weights" ``[B, N, E]`` (the weight with which expert
    e's output enters token n, 0 where e did not process n); "gates" ``[B, N, E]`` (Soft MoE: the combine
    weights); "aux" scalars "importance", "load", "switch", "z_loss"; "load" ``[E]`` token-choices each
    expert processed; "dropped_fraction" (expert choice: of tokens no expert took); "tokens_per_image" ``[B]``
    kept token-choices per image; "capacity" C (a Python int).
    """

    def __init__(
        self,
        width: int,
        hidden: int,
        num_experts: int,
        *,
        rngs: nnx.Rngs,
        router: str = "top_k",
        k: int = 2,
        capacity_factor: float = 1.05,
        eval_capacity_factor: float | None = None,
        batch_priority: bool = False,
        renormalize: bool = False,
        group_size: int = 1,
        noise_std: float = 1.0,
        slots_per_expert: int = 1,
        mlp_bias: bool = True,
        dtype: str = "float32",
        param_dtype: str = "float32",
        backend: str | None = None,
    ):
        # k and the capacity factors are checked where they are used (routing), and by MoeConfig.
        check_one_of("router", router, MOE_ROUTERS)
        for name, value in [("width", width), ("hidden", hidden), ("num_experts", num_experts),
                            ("group_size", group_size), ("slots_per_expert", slots_per_expert)]:  # fmt: skip
            check_int(name, value)
        check_noise_std(noise_std)
        check_bool("renormalize", renormalize)
        check_one_of("backend", backend, (*BACKENDS, None))
        D, H, E = width, hidden, num_experts
        self.router, self.num_experts, self.k = router, E, k
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor
        self.batch_priority, self.group_size, self.noise_std = batch_priority, group_size, noise_std
        self.slots_per_expert, self.dtype, self.backend = slots_per_expert, dtype, backend
        self.renormalize = renormalize
        self.experts = stacked_experts(
            E, D, H, rngs=rngs, bias=mlp_bias, dtype=dtype, param_dtype=param_dtype
        )
        if router == "soft":
            self.slots = param(
                rngs, nnx.initializers.normal(D**-0.5), (E, slots_per_expert, D), ("expert", None, "embed"),
                param_dtype,
            )  # fmt: skip
            self.scale = param(rngs, nnx.initializers.ones, (), (), param_dtype)
            self.router_kernel = None
            self.noise_rngs = None
        else:
            self.router_kernel = param(
                rngs, nnx.initializers.normal(0.02), (D, E), ("embed", None), param_dtype
            )
            self.slots = self.scale = None
            self.noise_rngs = nnx.Rngs(noise=rngs.params())

    @classmethod
    def from_vit_config(cls, config, layer_index: int, *, rngs: nnx.Rngs) -> MoeMlp:
        """The MoE MLP of layer ``layer_index`` of a ViT config with ``moe`` set."""
        moe = config.moe
        slots = layer_capacity("soft", config.num_tokens, moe.num_experts, 1, moe.capacity_factor)
        return cls(
            config.width, config.mlp_dim, moe.num_experts, rngs=rngs, router=moe.router, k=moe.k,
            capacity_factor=moe.capacity_factor, eval_capacity_factor=moe.eval_capacity_factor,
            batch_priority=moe.batch_priority, group_size=moe.group_size, noise_std=moe.noise_std,
            slots_per_expert=slots, mlp_bias=config.mlp_bias, dtype=config.dtype,
            param_dtype=config.param_dtype,
        )  # fmt: skip

    def apply_experts(self, buffers: Array, mesh=None) -> Array:
        """The experts on buffers ``[..., E, C, D]`` -> ``[..., E, C, D]``; expert-parallel
        (:func:`sparse_experts.parallel.expert_parallel_apply`) for ``[G, E, C, D]`` on a ``mesh`` whose
        "expert" axis is > 1."""
        if mesh is None or dict(mesh.shape).get(EXPERT_AXIS, 1) == 1:
            return apply_stacked(self.experts, buffers)
        graphdef, params = nnx.split(self.experts)  # params: arrays with a leading E axis

        def local(buffers: Array, params) -> Array:
            return apply_stacked(nnx.merge(graphdef, params), buffers)

        return expert_parallel_apply(local, buffers, params, mesh)

    def __call__(
        self,
        x: Array,
        *,
        train: bool = False,
        k: int | None = None,
        capacity_factor: float | None = None,
        batch_priority: bool | None = None,
        rng: Array | None = None,
        mesh=None,
    ) -> tuple[Array, dict]:
        """x ``[B, N, D]`` -> (y ``[B, N, D]``, record). ``k``, ``capacity_factor`` and ``batch_priority``
        override the constructor's for this call; ``rng`` replaces the module's noise stream (training
        only); a ``mesh`` runs the experts expert-parallel (same result)."""
        if x.ndim != 3:
            raise ValueError(f"x must have shape [B, N, D], got shape {x.shape}")
        x = x.astype(self.dtype)
        if self.router == "soft":
            if k is not None or batch_priority is not None or capacity_factor is not None:
                raise ValueError(
                    "router='soft' has a fixed number of slots and no k or batch priority; "
                    f"got k={k}, capacity_factor={capacity_factor}, batch_priority={batch_priority}"
                )
            return self._soft(x, mesh)
        B, N, D = x.shape
        if B % self.group_size:
            raise ValueError(
                f"batch size B={B} is not divisible by group_size={self.group_size} (images per routing "
                f"group); use a batch that is a multiple of {self.group_size} or a smaller group_size"
            )
        E = self.num_experts
        k = self.k if k is None else check_choices(k, E)
        if capacity_factor is None:
            eval_factor = self.eval_capacity_factor
            capacity_factor = self.capacity_factor if train or eval_factor is None else eval_factor
        batch_priority = self.batch_priority if batch_priority is None else batch_priority
        G, S = B // self.group_size, self.group_size * N
        C = layer_capacity(self.router, S, E, k, capacity_factor)
        tokens = x.reshape(G, S, D)
        # Full float32 router (as Switch advises): which expert a token meets must not depend on the
        # platform's default matmul precision.
        kernel = self.router_kernel[...].astype(jnp.float32)
        logits = jnp.einsum("GSD,DE->GSE", tokens.astype(jnp.float32), kernel, precision=_EXACT)
        if train and self.noise_std > 0:
            rng = self.noise_rngs.noise() if rng is None else rng
            noisy, std_added = noisy_router_logits(logits, rng, self.noise_std)
        else:
            noisy, std_added = logits, 0.0
        gates = jax.nn.softmax(noisy, axis=-1)  # [G, S, E]
        aux = {
            "importance": importance_loss(gates),
            "load": load_loss(logits, noisy, std_added, k),
            "switch": switch_load_balancing_loss(gates, jax.lax.top_k(gates, k)[1]),
            "z_loss": router_z_loss(logits),
        }
        if self.router == "top_k":
            routing = top_k_routing(
                gates, k, C, batch_priority=batch_priority, renormalize=self.renormalize, backend=self.backend
            )
            kept = (routing.slot < C).astype(jnp.float32)  # [G, S, K]
            expert_one_hot = jax.nn.one_hot(routing.expert, E, dtype=jnp.float32)  # [G, S, K, E]
            combine_weights = jnp.einsum("GSK,GSKE->GSE", routing.weight, expert_one_hot, precision=_EXACT)
            kept_per_token = jnp.einsum("GSK,GSKE->GSE", kept, expert_one_hot, precision=_EXACT)  # 0 or 1
            dropped = 1.0 - jnp.sum(kept_per_token) / (G * S * k)
        else:
            routing = expert_choice_routing(gates, C)
            taken = jax.nn.one_hot(routing.token, S, dtype=jnp.float32)  # [G, E, C, S]
            combine_weights = jnp.einsum("GECS,GEC->GSE", taken, routing.weight, precision=_EXACT)
            kept_per_token = jnp.sum(taken, axis=2).swapaxes(-1, -2)  # [G, S, E]
            dropped = jnp.mean((jnp.sum(kept_per_token, axis=-1) == 0).astype(jnp.float32))
        buffers = dispatch(tokens, routing, E, C, backend=self.backend)  # [G, E, C, D]
        y = combine(self.apply_experts(buffers, mesh), routing, backend=self.backend, num_tokens=S)
        record = {
            "combine_weights": combine_weights.reshape(B, N, E),
            "gates": gates.reshape(B, N, E),
            "aux": aux,
            "load": jnp.sum(kept_per_token, axis=(0, 1)),
            "dropped_fraction": dropped,
            "tokens_per_image": jnp.sum(kept_per_token.reshape(B, N * E), axis=-1),
            "capacity": C,
        }
        return y.reshape(B, N, D).astype(x.dtype), record

    def _soft(self, x: Array, mesh=None) -> tuple[Array, dict]:
        B, N, D = x.shape
        E, C = self.num_experts, self.slots_per_expert
        slots = _l2_normalize(self.slots[...].astype(jnp.float32)).reshape(E * C, D)  # [M = E x C, D]
        tokens = self.scale[...].astype(jnp.float32) * _l2_normalize(x.astype(jnp.float32))
        logits = jnp.einsum("BND,MD->BNM", tokens, slots, precision=_EXACT)  # [B, N, M], full f32 router
        dispatch_weights = jax.nn.softmax(logits, axis=1)  # over tokens, per slot
        combine_slot_weights = jax.nn.softmax(logits, axis=2)  # over all slots, per token
        buffers = jnp.einsum("BNM,BND->BMD", dispatch_weights.astype(x.dtype), x).reshape(B, E, C, D)
        out = self.apply_experts(buffers, mesh).reshape(B, E * C, D)
        y = jnp.einsum("BNM,BMD->BND", combine_slot_weights.astype(x.dtype), out)
        combine_weights = jnp.sum(combine_slot_weights.reshape(B, N, E, C), axis=-1)  # [B, N, E]
        aux = {
            "importance": importance_loss(combine_weights),
            "load": jnp.zeros((), jnp.float32),
            "switch": switch_load_balancing_loss(combine_weights, jnp.argmax(combine_weights, axis=-1)),
            "z_loss": router_z_loss(logits),
        }
        record = {
            "combine_weights": combine_weights,
            "gates": combine_weights,
            "aux": aux,
            "load": jnp.full((E,), float(B * C), jnp.float32),
            "dropped_fraction": jnp.zeros((), jnp.float32),
            "tokens_per_image": jnp.full((B,), float(N), jnp.float32),
            "capacity": C,
        }
        return y.astype(x.dtype), record

"""Routing primitives for sparse mixtures of experts: who goes where, and how tokens travel there and back.

Shape letters (../../shared/DESIGN.md): G routing groups (any number of leading dims, each routed
independently), S tokens per group, E experts, K choices per token, C capacity (slots per expert, the integer
from :func:`capacity`; "capacity factor" is the ratio), D width.

Token choice (V-MoE) gives an :class:`Assignment`, expert choice (Zhou et al. 2022) an :class:`ExpertChoice`.
:func:`dispatch` and :func:`combine` move tokens ``[..., S, D]`` to expert buffers ``[..., E, C, D]`` and
back, for either record, with two backends that agree to float tolerance (values and gradients): "einsum"
(V-MoE/GShard's one-hot ``[..., S, E, C]`` tensors; memory and time grow as S x E x C) and "indices"
(scatter/gather into the flat ``[E * C]`` buffer; dropped choices point one past its end and are read with
``mode="fill"``, written with ``mode="drop"``, since JAX clamps out-of-range indices by default).

Validation: Python numbers and array shapes are always checked; array *values* (NaN gates) only when
concrete, so every function works under ``jax.jit`` and ``jax.vmap``.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from typing import NamedTuple, NoReturn

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton
from jax.scipy.special import ndtr

Array = jax.Array

# Defaults per platform (jax.default_backend()), set by hand from benchmarks/routing.py (tables in
# benchmarks/README.md), never timed at run time. TPU was not measured: "einsum" is V-MoE's choice there.
DEFAULT_BACKEND = {"cpu": "indices", "gpu": "indices", "tpu": "einsum"}
# "pallas": top-k routing (vanilla or BPR) in one Pallas kernel, the slot -> choice map in a second, then the
# "indices" gathers (see "fused routing" below). Not a default anywhere until it measures faster on a GPU;
# on CPU it runs in Pallas interpret mode (for the agreement tests; slow).
BACKENDS = ("einsum", "indices", "pallas")
# How BPR finds each choice's slot (same result): "sort" (O(S log S)) or "pairwise" (O(S^2), one fused
# reduction; faster on the H200, within noise of "sort" on CPU).
BPR_METHOD = {"cpu": "sort", "gpu": "pairwise", "tpu": "sort"}
BPR_METHODS = ("sort", "pairwise")
# Moving tokens must not round them: the default float32 matmul precision (TF32 on GPUs, bfloat16 passes on
# TPU) would perturb every token by ~1e-3; at HIGHEST a product with a 0/1 tensor is exact.
_EXACT = jax.lax.Precision.HIGHEST


class Assignment(NamedTuple):
    """Token choice: ``expert[..., S, K]`` (int32) the expert asked for, ``slot[..., S, K]`` (int32) its slot
    in that expert's buffer (``capacity`` when dropped), ``weight[..., S, K]`` its gate (0 when dropped)."""

    expert: Array
    slot: Array
    weight: Array


class ExpertChoice(NamedTuple):
    """Expert choice: ``token[..., E, C]`` (int32) the token a slot took, ``weight[..., E, C]`` its gate."""

    token: Array
    weight: Array


# --------------------------------------------------------------------------------------------- validation
# One helper per check, called at the boundaries; a wrong type raises TypeError, a wrong value ValueError.
def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def fail(name: str, value, expected: str, error: type[Exception] = ValueError) -> NoReturn:
    """Raise ``error("<name>=<value!r> is not allowed; expected <expected>")``."""
    raise error(f"{name}={value!r} is not allowed; expected {expected}")


def check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int, if it is an integer (Python or NumPy, not a bool) >= ``minimum``."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        fail(name, value, f"an integer >= {minimum}", TypeError)
    if value < minimum:
        fail(name, value, f"an integer >= {minimum}")
    return int(value)


def check_bool(name: str, value) -> bool:
    """``value`` as a bool, if it is one (Python or NumPy)."""
    if not isinstance(value, bool | np.bool_):
        fail(name, value, "True or False", TypeError)
    return bool(value)


def check_number(name: str, value, *, allow_zero: bool = False, hint: str = "") -> float:
    """``value`` as a float, if a real number (or concrete 0-d array) > 0 (>= 0 with ``allow_zero``)."""
    expected = f"a number {'>=' if allow_zero else '>'} 0" + (f" {hint}" if hint else "")
    if isinstance(value, bool | np.bool_ | str) or not (
        isinstance(value, numbers.Real) or (_is_concrete(value) and np.ndim(value) == 0)
    ):
        fail(name, value, expected, TypeError)
    number = float(value)
    if not (number >= 0 if allow_zero else number > 0):
        fail(name, value, expected)
    return number


def check_one_of(name: str, value, allowed: tuple) -> object:
    if value not in allowed:
        fail(name, value, "one of " + ", ".join(repr(a) for a in allowed))
    return value


def check_choices(k, num_experts: int, name: str = "k") -> int:
    """``k`` as an int, if 1 <= k <= num_experts: a token's K choices are distinct experts."""
    k = check_int(name, k)
    if k > num_experts:
        raise ValueError(f"{name}={k} exceeds num_experts={num_experts}; use k <= num_experts")
    return k


def check_capacity_factor(value, name: str = "capacity_factor") -> float:
    return check_number(name, value, hint="(1.0 gives each expert its fair share)")


def check_noise_std(value, name: str = "noise_std") -> float:
    return check_number(name, value, allow_zero=True, hint="(0 turns the noise off)")


def _check_gates(gates, name: str = "gates") -> None:
    if jnp.ndim(gates) < 2:
        raise ValueError(
            f"{name} must have shape [..., S, E] (at least 2 dims), got shape {jnp.shape(gates)}; "
            "add a leading axis for a single token"
        )
    if _is_concrete(gates) and np.isnan(np.asarray(gates)).any():
        raise ValueError(f"{name} contain NaN; check the router logits (learning rate, inputs)")


def resolve_default(name: str, value: str | None, defaults: dict[str, str], allowed: tuple[str, ...]) -> str:
    """``value`` if one of ``allowed``; for None the platform's entry of ``defaults`` (else the CPU's)."""
    if value is None:
        return defaults.get(jax.default_backend(), defaults["cpu"])
    return check_one_of(name, value, (*allowed, None))


# ----------------------------------------------------------------------------------------------- capacity
def capacity(
    num_tokens: int, num_experts: int, k: int, capacity_factor: float, multiple_of: int | None = None
) -> int:
    """Slots per expert C = ceil(num_tokens * k * capacity_factor / num_experts), rounded up to a multiple of
    ``multiple_of`` when given (V-MoE uses 4). Expert choice uses k=1.

    >>> capacity(num_tokens=1024, num_experts=8, k=2, capacity_factor=1.25)
    320
    """
    check_int("num_experts", num_experts)
    check_int("k", k)
    check_capacity_factor(capacity_factor)
    if multiple_of is not None:
        check_int("multiple_of", multiple_of)
    # Round away float noise first: 100 tokens x 1.1 / 10 experts is 11.000000000000002 in floats: 11 slots.
    slots = math.ceil(round(num_tokens * k * capacity_factor / num_experts, 9))
    if multiple_of is not None:
        slots = math.ceil(slots / multiple_of) * multiple_of
    if slots < 1:
        raise ValueError(
            f"capacity for num_tokens={num_tokens}, num_experts={num_experts}, k={k}, "
            f"capacity_factor={capacity_factor} is {slots}; need at least 1 slot (raise capacity_factor)"
        )
    return slots


# ------------------------------------------------------------------------------------------------ routers
def _slots_in_service_order(served: Array, num_experts: int) -> Array:
    """Slot of each choice of ``served[..., S, K]`` (tokens in service order, served K-major): how many
    earlier choices asked for the same expert."""
    *lead, num_tokens, num_choices = served.shape
    flat = jnp.swapaxes(served, -1, -2).reshape(*lead, num_choices * num_tokens)  # K-major
    one_hot = jax.nn.one_hot(flat, num_experts, dtype=jnp.int32)  # [..., K*S, E]
    position = jnp.cumsum(one_hot, axis=-2) - 1  # [..., K*S, E]
    slot = jnp.sum(position * one_hot, axis=-1)  # [..., K*S]
    return jnp.swapaxes(slot.reshape(*lead, num_choices, num_tokens), -1, -2)


def _bpr_slots_pairwise(top_experts: Array, priority: Array, num_experts: int) -> Array:
    """BPR slots ``[..., S, K]`` without sorting: the earlier-level choices for the same expert, plus the
    same-level ones of tokens ahead (higher ``priority``, or equal and an earlier position)."""
    num_tokens = top_experts.shape[-2]
    one_hot = jax.nn.one_hot(top_experts, num_experts, dtype=jnp.int32)  # [..., S, K, E]
    per_level = jnp.sum(one_hot, axis=-3)  # [..., K, E] choices per expert at each level
    earlier_levels = jnp.cumsum(per_level, axis=-2) - per_level  # [..., K, E] exclusive over levels
    base = jnp.sum(one_hot * earlier_levels[..., None, :, :], axis=-1)  # [..., S, K]
    position = jnp.arange(num_tokens)
    mine, theirs = priority[..., :, None], priority[..., None, :]  # [..., S(me), S(them)]
    ahead = (theirs > mine) | ((theirs == mine) & (position[None, :] < position[:, None]))
    same_expert = top_experts[..., :, None, :] == top_experts[..., None, :, :]  # [..., S, S, K]
    within = jnp.sum(ahead[..., None] & same_expert, axis=-2, dtype=jnp.int32)  # [..., S, K]
    return base + within


def top_k_routing(
    gates: Array,
    k: int,
    capacity: int,
    batch_priority: bool = False,
    renormalize: bool = False,
    bpr_method: str | None = None,
    *,
    backend: str | None = None,
) -> Assignment:
    """V-MoE top-k routing of ``gates[..., S, E]`` with K = ``k`` choices and C = ``capacity`` slots.

    A token's K choices are its K largest gates, descending (ties to the lower expert). Choices are served
    K-major (all first choices, then all second ...); within a level in position order, or with
    ``batch_priority`` (BPR) in descending top-1 gate (ties keep position order). Each expert fills slots
    0, 1, ... in service order; a choice that finds its expert full is dropped, not re-routed.
    ``renormalize`` divides each token's kept weights by their sum (off, as in V-MoE; a token with nothing
    kept keeps weights 0, finite gradients). ``bpr_method``: "sort", "pairwise" or None (``BPR_METHOD``).
    ``backend="pallas"`` computes the same assignment in one Pallas kernel (:func:`fused_top_k_routing`,
    which has no ``bpr_method``); any other backend, or None, uses the XLA ops below.
    """
    _check_gates(gates)
    num_experts = gates.shape[-1]  # E: the last dim of gates
    check_choices(k, num_experts)
    check_int("capacity", capacity)
    check_bool("renormalize", renormalize)
    bpr_method = resolve_default("bpr_method", bpr_method, BPR_METHOD, BPR_METHODS)
    if resolve_default("backend", backend, DEFAULT_BACKEND, BACKENDS) == "pallas":
        return fused_top_k_routing(gates, k, capacity, batch_priority=batch_priority, renormalize=renormalize)

    # The chosen gates come from a one-hot product, not from top_k: exact (one nonzero term), with an
    # elementwise gradient where top_k's is a scatter (a slow kernel on CPU and GPU alike).
    _, top_experts = jax.lax.top_k(jax.lax.stop_gradient(gates), k)  # [..., S, K]
    top_experts = top_experts.astype(jnp.int32)
    chosen = jax.nn.one_hot(top_experts, num_experts, dtype=gates.dtype)  # [..., S, K, E]
    top_gates = jnp.sum(gates[..., None, :] * chosen, axis=-1)  # [..., S, K]
    if not batch_priority:  # position order: the token order is already the service order
        slot = _slots_in_service_order(top_experts, num_experts)
    elif bpr_method == "pairwise":
        slot = _bpr_slots_pairwise(top_experts, jax.lax.stop_gradient(top_gates[..., 0]), num_experts)
    else:
        order = jnp.argsort(-top_gates[..., 0], axis=-1, stable=True)  # [..., S] tokens in service order
        served = jnp.take_along_axis(top_experts, order[..., None], axis=-2)  # [..., S, K] in service order
        slot_by_service = _slots_in_service_order(served, num_experts)  # [..., S, K], rows in service order
        # Back to token order: row i belongs to token order[i] (a permutation: a unique-index scatter).
        slot = _over_groups(
            lambda rows, tokens: jnp.zeros_like(rows).at[tokens].set(rows, unique_indices=True),
            order.ndim - 1,
        )(slot_by_service, order)
    kept = slot < capacity
    weight = jnp.where(kept, top_gates, jnp.zeros_like(top_gates))
    if renormalize:
        # Where nothing (or only underflowed gates) is kept divide by 1, so neither branch of the where (value
        # or gradient) is NaN.
        total = jnp.sum(weight, axis=-1, keepdims=True)
        safe_total = jnp.where(total > 0, total, jnp.ones_like(total))
        weight = jnp.where(kept, top_gates / safe_total, jnp.zeros_like(top_gates))
    slot = jnp.where(kept, slot, capacity).astype(jnp.int32)
    return Assignment(expert=top_experts, slot=slot, weight=weight)


def expert_choice_routing(gates: Array, capacity: int) -> ExpertChoice:
    """Expert choice (Zhou et al. 2022): each expert takes the C = ``capacity`` tokens (1 <= C <= S) with the
    largest of ``gates[..., S, E]`` for it, descending (ties to the lower token), weighted by those gates."""
    _check_gates(gates)
    check_int("capacity", capacity)
    num_tokens = gates.shape[-2]
    if capacity > num_tokens:
        raise ValueError(
            f"capacity={capacity} exceeds the {num_tokens} tokens per group (dim -2 of gates); "
            "expert choice needs capacity <= S"
        )
    weight, token = jax.lax.top_k(jnp.swapaxes(gates, -1, -2), capacity)  # [..., E, C]
    return ExpertChoice(token=token.astype(jnp.int32), weight=weight)


# ---------------------------------------------------------------------------------------- dispatch/combine
def _over_groups(fn: Callable, num_group_dims: int) -> Callable:
    """``fn`` written for one group, mapped over ``num_group_dims`` leading dims of every argument."""
    for _ in range(num_group_dims):
        fn = jax.vmap(fn)
    return fn


def _check_routing(routing, num_experts: int, capacity: int) -> None:
    check_int("num_experts", num_experts)
    check_int("capacity", capacity)
    if isinstance(routing, ExpertChoice):
        if routing.token.shape[-2:] != (num_experts, capacity):
            raise ValueError(
                f"routing.token has shape {routing.token.shape}, expected [..., E={num_experts}, "
                f"C={capacity}]; pass the num_experts and capacity the routing was made with"
            )
    elif not isinstance(routing, Assignment):
        raise TypeError(f"routing must be an Assignment or an ExpertChoice, got {type(routing).__name__}")


def _assignment_tensor(assignment: Assignment, num_experts: int, capacity: int, weighted: bool) -> Array:
    """``[..., S, E, C]``: 1 iff a kept choice of token s holds slot c of expert e (dropped ones, slot == C,
    one-hot to zeros), times that choice's weight when ``weighted`` (the combine tensor)."""
    expert_one_hot = jax.nn.one_hot(assignment.expert, num_experts, dtype=assignment.weight.dtype)
    slot_one_hot = jax.nn.one_hot(assignment.slot, capacity, dtype=assignment.weight.dtype)  # [..., S, K, C]
    if weighted:
        expert_one_hot = assignment.weight[..., None] * expert_one_hot
    return jnp.einsum("...SKE,...SKC->...SEC", expert_one_hot, slot_one_hot, precision=_EXACT)


def _flat_slot_index(assignment: Assignment, capacity: int, num_experts: int) -> Array:
    """Index of each choice ``[..., S, K]`` into the flat ``[E * C]`` buffer; E * C when dropped."""
    kept = assignment.slot < capacity
    return jnp.where(kept, assignment.expert * capacity + assignment.slot, num_experts * capacity)


@jax.custom_vjp
def _gather_rows(table: Array, index: Array, readers: Array) -> Array:
    """``table[index]``, zero rows where ``index`` is out of range; ``readers[R, J]`` lists the (at most J)
    output rows reading each row of ``table``, so the backward pass is a gather and a sum instead of XLA's
    scatter-add, which is slow on CPU."""
    return table.at[index].get(mode="fill", fill_value=0)


def _gather_rows_fwd(table, index, readers):
    return _gather_rows(table, index, readers), readers


def _gather_rows_bwd(readers, grad_out):
    grad = grad_out.at[readers].get(mode="fill", fill_value=0)  # [R, J, D]
    return jnp.sum(grad, axis=1), None, None


_gather_rows.defvjp(_gather_rows_fwd, _gather_rows_bwd)


def _choice_of_row(flat_index: Array, num_buffer_rows: int) -> Array:
    """Which choice (``s * K + k``) fills each buffer row; S * K for empty rows. Dispatch and combine call
    this with the same arguments, so under one jit XLA computes it once."""
    num_choices = flat_index.size
    rows = jnp.full((num_buffer_rows,), num_choices, dtype=jnp.int32)
    return rows.at[flat_index.reshape(-1)].set(jnp.arange(num_choices, dtype=jnp.int32), mode="drop")


def _dispatch_indices_one_group(x: Array, flat_index: Array, num_buffer_rows: int) -> Array:
    """x ``[S, D]`` -> buffer rows ``[E * C, D]``: row ``flat_index[s, k]`` holds token s."""
    num_tokens, num_choices = flat_index.shape
    choice = _choice_of_row(flat_index, num_buffer_rows)
    source = jnp.where(choice < num_tokens * num_choices, choice // num_choices, num_tokens)
    return _gather_rows(x, source, flat_index)


def _combine_indices_one_group(y_flat: Array, flat_index: Array, weight: Array) -> Array:
    """Buffer rows ``[E * C, D]`` -> tokens ``[S, D]``: each token sums its kept choices' rows, weighted."""
    num_tokens, num_choices = flat_index.shape
    reader = _choice_of_row(flat_index, y_flat.shape[0])  # which choice reads each buffer row
    picked = _gather_rows(y_flat, flat_index.reshape(-1), reader[:, None])  # dropped choices read zeros
    picked = picked.reshape(num_tokens, num_choices, -1)
    return jnp.einsum("SK,SKD->SD", weight.astype(picked.dtype), picked, precision=_EXACT)


def dispatch(x: Array, routing, num_experts: int, capacity: int, backend: str | None = None) -> Array:
    """Tokens ``x[..., S, D]`` into expert buffers ``[..., E, C, D]`` (empty slots zero) by ``routing`` (an
    :class:`Assignment` or :class:`ExpertChoice`); ``backend``: "einsum", "indices" or None (platform's)."""
    backend = resolve_default("backend", backend, DEFAULT_BACKEND, BACKENDS)
    _check_routing(routing, num_experts, capacity)
    x = jnp.asarray(x)
    if isinstance(routing, ExpertChoice):
        if backend == "einsum":
            token_one_hot = jax.nn.one_hot(routing.token, x.shape[-2], dtype=x.dtype)  # [..., E, C, S]
            return jnp.einsum("...ECS,...SD->...ECD", token_one_hot, x, precision=_EXACT)
        return _over_groups(lambda xg, tg: xg[tg], x.ndim - 2)(x, routing.token)
    if backend == "einsum":
        dispatch_mask = _assignment_tensor(routing, num_experts, capacity, weighted=False)
        return jnp.einsum("...SEC,...SD->...ECD", dispatch_mask.astype(x.dtype), x, precision=_EXACT)
    flat_index = _flat_slot_index(routing, capacity, num_experts)
    if backend == "pallas":
        row_choice = choice_of_buffer_row(routing, num_experts, capacity)  # [..., E * C]
        buffers = _over_groups(_dispatch_by_row_choice, x.ndim - 2)(x, flat_index, row_choice)
        return buffers.reshape(*x.shape[:-2], num_experts, capacity, x.shape[-1])
    one_group = functools.partial(_dispatch_indices_one_group, num_buffer_rows=num_experts * capacity)
    buffers = _over_groups(one_group, x.ndim - 2)(x, flat_index)
    return buffers.reshape(*x.shape[:-2], num_experts, capacity, x.shape[-1])


def combine(y: Array, routing, backend: str | None = None, *, num_tokens: int | None = None) -> Array:
    """Expert outputs ``y[..., E, C, D]`` back to tokens ``[..., S, D]``, weighted by the routing weights;
    tokens with no kept choice get zeros. An :class:`ExpertChoice` does not record S: pass ``num_tokens``."""
    backend = resolve_default("backend", backend, DEFAULT_BACKEND, BACKENDS)
    y = jnp.asarray(y)
    num_experts, capacity = y.shape[-3], y.shape[-2]
    _check_routing(routing, num_experts, capacity)
    if isinstance(routing, ExpertChoice):
        if num_tokens is None:
            raise ValueError("num_tokens is required to combine an ExpertChoice (S, tokens per group)")
        check_int("num_tokens", num_tokens)
        weighted = routing.weight[..., None].astype(y.dtype) * y  # [..., E, C, D]
        if backend == "einsum":
            token_one_hot = jax.nn.one_hot(routing.token, num_tokens, dtype=y.dtype)  # [..., E, C, S]
            return jnp.einsum("...ECS,...ECD->...SD", token_one_hot, weighted, precision=_EXACT)

        def one_group(weighted_g: Array, token_g: Array) -> Array:
            out = jnp.zeros((num_tokens, y.shape[-1]), y.dtype)
            return out.at[token_g.reshape(-1)].add(weighted_g.reshape(-1, y.shape[-1]))

        return _over_groups(one_group, y.ndim - 3)(weighted, routing.token)
    if num_tokens is not None and num_tokens != routing.expert.shape[-2]:
        raise ValueError(
            f"num_tokens={num_tokens} does not match routing.expert.shape[-2]={routing.expert.shape[-2]}"
        )
    if backend == "einsum":
        combine_weights = _assignment_tensor(routing, num_experts, capacity, weighted=True)
        return jnp.einsum("...SEC,...ECD->...SD", combine_weights.astype(y.dtype), y, precision=_EXACT)
    flat_index = _flat_slot_index(routing, capacity, num_experts)
    y_flat = y.reshape(*y.shape[:-3], num_experts * capacity, y.shape[-1])
    if backend == "pallas":
        row_choice = choice_of_buffer_row(routing, num_experts, capacity)  # [..., E * C]
        combine_group = _combine_by_row_choice
        return _over_groups(combine_group, y.ndim - 3)(y_flat, flat_index, routing.weight, row_choice)
    return _over_groups(_combine_indices_one_group, y.ndim - 3)(y_flat, flat_index, routing.weight)


# ------------------------------------------------------------------------------------------ fused routing
# The "pallas" backend: the XLA routing above is ~10 small kernels (top-k as a sort, one-hots, the slot
# cumsum, scatters), and on a GPU their launches and the gaps between them cost more than their arithmetic
# (benchmarks/README.md). Here top-k and the slots (vanilla or BPR) are one Pallas kernel, and the slot ->
# choice map (which choice fills each buffer row) a second; both count instead of sorting or scattering:
# a choice's slot is the number of choices for the same expert served before it (every choice of an earlier
# level, and the same level's choices of tokens ahead: earlier position, or with BPR a larger top-1 gate),
# counted over blocks of T tokens, and a buffer row finds its choice by comparing against every choice.
# O(S^2 K^2) compares per group, T x T at a time in registers. On CPU they run in Pallas interpret mode.
_TRITON = pl_triton.CompilerParams(num_warps=4, num_stages=1)
_ROW_BLOCK = 128  # tokens (and buffer rows) per kernel program and per step of its loops


def _padded(size: int) -> int:
    """``size`` rounded up to a power of 2 (Triton's arrays must be), or above ``_ROW_BLOCK`` to a multiple
    of it; the kernels' wrappers pad tokens, experts and buffer rows to this and slice the padding off."""
    return 1 << (size - 1).bit_length() if size <= _ROW_BLOCK else -(-size // _ROW_BLOCK) * _ROW_BLOCK


def _run_kernel(make_call: Callable, interpret: bool | None, *args: Array):
    """``make_call(interpret)(*args)``; for ``interpret=None`` interpreted on CPU (which has no Pallas
    compiler) and compiled elsewhere, chosen when the program is lowered for its platform (so a CPU machine
    can lower the compiled kernel for a GPU: ``.lower(lowering_platforms=("cuda",))``)."""
    if interpret is not None:
        return make_call(check_bool("interpret", interpret))(*args)
    return jax.lax.platform_dependent(*args, cpu=make_call(True), default=make_call(False))


def _top_k_of_rows(gates: Array, k: int) -> tuple[list[Array], list[Array]]:
    """K largest of ``gates[T, E]`` per row, descending, ties to the lower expert (as ``lax.top_k``):
    K expert arrays ``[T]`` (int32) and K gate arrays ``[T]``, by K rounds of max and argmin-of-ties."""
    expert_ids = jax.lax.broadcasted_iota(jnp.int32, gates.shape, 1)
    taken = jnp.zeros(gates.shape, jnp.bool_)
    experts, values = [], []
    for _ in range(k):
        candidates = jnp.where(taken, -jnp.inf, gates)
        best = jnp.max(candidates, axis=1)
        tied = (candidates == best[:, None]) & ~taken
        chosen = jnp.min(jnp.where(tied, expert_ids, gates.shape[1]), axis=1)
        taken = taken | (expert_ids == chosen[:, None])
        experts.append(chosen)
        values.append(best)
    return experts, values


def _route_kernel(
    gates_ref, expert_ref, slot_ref, weight_ref, *, k, capacity, batch_priority, renormalize, num_tokens
):
    """One program: the choices of a block of B tokens of one group. ``gates_ref[S', E']`` (the whole group,
    padded: tokens from ``num_tokens`` on are padding and take no slot; padded experts have gate -inf);
    ``expert_ref``, ``slot_ref``, ``weight_ref`` ``[K, B]`` (level-major)."""
    block = expert_ref.shape[-1]
    padded_tokens = gates_ref.shape[0]
    start = pl.program_id(1) * block
    my_experts, my_gates = _top_k_of_rows(gates_ref[pl.ds(start, block), :], k)
    my_position = start + jax.lax.broadcasted_iota(jnp.int32, (block, 1), 0)  # [B, 1]
    my_priority = my_gates[0][:, None]  # [B, 1] BPR: the top-1 gate

    def count_block(step, counts):
        their_start = step * block
        their_experts, their_gates = _top_k_of_rows(gates_ref[pl.ds(their_start, block), :], k)
        their_position = their_start + jax.lax.broadcasted_iota(jnp.int32, (1, block), 1)  # [1, T]
        ahead = their_position < my_position  # [B, T]
        if batch_priority:
            their_priority = their_gates[0][None, :]
            ahead = (their_priority > my_priority) | ((their_priority == my_priority) & ahead)
        real = their_position < num_tokens  # [1, T] padding tokens are never served
        new_counts = []
        for level in range(k):
            mine = my_experts[level][:, None]
            served_before = (their_experts[level][None, :] == mine) & ahead
            for earlier in range(level):
                served_before = served_before | (their_experts[earlier][None, :] == mine)
            served_before = served_before & real
            new_counts.append(counts[level] + jnp.sum(served_before.astype(jnp.int32), axis=1))
        return tuple(new_counts)

    zeros = tuple(jnp.zeros((block,), jnp.int32) for _ in range(k))
    slots = jax.lax.fori_loop(0, padded_tokens // block, count_block, zeros)
    kept = [slot < capacity for slot in slots]
    weights = [jnp.where(keep, gate, 0.0) for keep, gate in zip(kept, my_gates, strict=True)]
    if renormalize:
        total = functools.reduce(jnp.add, weights)
        safe_total = jnp.where(total > 0, total, 1.0)
        weights = [jnp.where(keep, gate / safe_total, 0.0) for keep, gate in zip(kept, my_gates, strict=True)]
    for level in range(k):
        expert_ref[level, :] = my_experts[level]
        slot_ref[level, :] = jnp.where(kept[level], slots[level], capacity)
        weight_ref[level, :] = weights[level].astype(weight_ref.dtype)


def _route_call(
    gates: Array, k: int, capacity: int, batch_priority: bool, renormalize: bool, interpret: bool | None
):
    """``gates[G, S, E]`` -> expert, slot, weight ``[G, S, K]`` by :func:`_route_kernel`."""
    num_groups, num_tokens, num_experts = gates.shape
    padded_tokens, padded_experts = _padded(num_tokens), _padded(num_experts)
    block = min(padded_tokens, _ROW_BLOCK)
    padding = ((0, 0), (0, padded_tokens - num_tokens), (0, padded_experts - num_experts))
    gates = jnp.pad(gates, padding, constant_values=-jnp.inf)
    out_spec = pl.BlockSpec((None, k, block), lambda g, r: (g, 0, r))
    kernel = functools.partial(
        _route_kernel, k=k, capacity=capacity, batch_priority=batch_priority, renormalize=renormalize,
        num_tokens=num_tokens,
    )  # fmt: skip
    make_call = functools.partial(
        pl.pallas_call,
        kernel,
        grid=(num_groups, padded_tokens // block),
        in_specs=[pl.BlockSpec((None, padded_tokens, padded_experts), lambda g, r: (g, 0, 0))],
        out_specs=[out_spec, out_spec, out_spec],
        out_shape=[
            jax.ShapeDtypeStruct((num_groups, k, padded_tokens), jnp.int32),
            jax.ShapeDtypeStruct((num_groups, k, padded_tokens), jnp.int32),
            jax.ShapeDtypeStruct((num_groups, k, padded_tokens), gates.dtype),
        ],
        compiler_params=_TRITON,
        name="fused_top_k_routing",
    )
    expert, slot, weight = _run_kernel(lambda interp: make_call(interpret=interp), interpret, gates)
    return tuple(jnp.swapaxes(a[..., :num_tokens], -1, -2) for a in (expert, slot, weight))


def _weights_of(gates: Array, expert: Array, slot: Array, capacity: int, renormalize: bool) -> Array:
    """The routing weights ``[..., S, K]`` as a function of ``gates`` for a fixed expert and slot: the same
    formulas as :func:`top_k_routing`'s, so its gradient is theirs."""
    chosen = jax.nn.one_hot(expert, gates.shape[-1], dtype=gates.dtype)  # [..., S, K, E]
    top_gates = jnp.sum(gates[..., None, :] * chosen, axis=-1)
    kept = slot < capacity
    if not renormalize:
        return jnp.where(kept, top_gates, jnp.zeros_like(top_gates))
    total = jnp.sum(jnp.where(kept, top_gates, 0.0), axis=-1, keepdims=True)
    safe_total = jnp.where(total > 0, total, jnp.ones_like(total))
    return jnp.where(kept, top_gates / safe_total, jnp.zeros_like(top_gates))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5))
def _fused_route(
    gates: Array, k: int, capacity: int, batch_priority: bool, renormalize: bool, interpret: bool | None
):
    lead, (num_tokens, num_experts) = gates.shape[:-2], gates.shape[-2:]
    flat = gates.reshape(-1, num_tokens, num_experts)
    outputs = _route_call(flat, k, capacity, batch_priority, renormalize, interpret)
    return tuple(a.reshape(*lead, num_tokens, k) for a in outputs)


def _fused_route_fwd(gates, k, capacity, batch_priority, renormalize, interpret):
    expert, slot, weight = _fused_route(gates, k, capacity, batch_priority, renormalize, interpret)
    return (expert, slot, weight), (gates, expert, slot)


def _fused_route_bwd(k, capacity, batch_priority, renormalize, interpret, residuals, cotangents):
    gates, expert, slot = residuals
    _, pullback = jax.vjp(lambda g: _weights_of(g, expert, slot, capacity, renormalize), gates)
    return pullback(cotangents[2])


_fused_route.defvjp(_fused_route_fwd, _fused_route_bwd)


def fused_top_k_routing(
    gates: Array,
    k: int,
    capacity: int,
    batch_priority: bool = False,
    renormalize: bool = False,
    *,
    interpret: bool | None = None,
) -> Assignment:
    """:func:`top_k_routing` of ``gates[..., S, E]`` computed by one Pallas kernel (``backend="pallas"``):
    the same assignment, and the same gradient with respect to the gates (a custom VJP through the
    weights' formula). ``interpret``: Pallas interpret mode (None: on CPU only, by :func:`_run_kernel`)."""
    _check_gates(gates)
    check_choices(k, gates.shape[-1])
    check_int("capacity", capacity)
    check_bool("batch_priority", batch_priority)
    check_bool("renormalize", renormalize)
    route = _fused_route(jnp.asarray(gates), k, capacity, bool(batch_priority), renormalize, interpret)
    expert, slot, weight = route
    return Assignment(expert=expert, slot=slot, weight=weight)


def _row_choice_kernel(expert_ref, slot_ref, row_choice_ref, *, capacity, num_tokens):
    """One program: which choice fills each of a block of R buffer rows of one group. ``expert_ref`` and
    ``slot_ref`` ``[K, S']`` (padded with dropped choices); ``row_choice_ref[R]``: ``s * K + k``, or S * K
    (``num_tokens`` x K) for an empty row."""
    num_choices, padded_tokens = expert_ref.shape
    rows = row_choice_ref.shape[0]
    row = pl.program_id(1) * rows + jax.lax.broadcasted_iota(jnp.int32, (rows, 1), 0)  # [R, 1]
    block = min(padded_tokens, _ROW_BLOCK)

    def match_block(step, found):
        start = step * block
        token = start + jax.lax.broadcasted_iota(jnp.int32, (1, block), 1)  # [1, T]
        for level in range(num_choices):
            expert, slot = expert_ref[level, pl.ds(start, block)], slot_ref[level, pl.ds(start, block)]  # [T]
            flat = jnp.where(slot < capacity, expert * capacity + slot, -1)[None, :]
            hit = flat == row  # [R, T]: at most one kept choice holds a row
            found = jnp.minimum(
                found, jnp.min(jnp.where(hit, token * num_choices + level, found[:, None]), 1)
            )
        return found

    empty = jnp.full((rows,), num_tokens * num_choices, jnp.int32)
    row_choice_ref[:] = jax.lax.fori_loop(0, padded_tokens // block, match_block, empty)


def choice_of_buffer_row(
    assignment: Assignment, num_experts: int, capacity: int, *, interpret: bool | None = None
) -> Array:
    """Which choice (``s * K + k``) fills each row ``e * C + c`` of the flat buffer, ``[..., E * C]``
    (int32; S * K for empty rows), by a Pallas kernel: the map the "pallas" dispatch and combine gather by
    (the "indices" backend scatters it). ``interpret``: Pallas interpret mode (None: on CPU only)."""
    lead, (num_tokens, k) = assignment.expert.shape[:-2], assignment.expert.shape[-2:]
    padding = ((0, 0), (0, 0), (0, _padded(num_tokens) - num_tokens))  # padded tokens: dropped choices
    expert = jnp.pad(
        jnp.swapaxes(assignment.expert.reshape(-1, num_tokens, k), -1, -2), padding
    )  # [G, K, S']
    slot = jnp.swapaxes(assignment.slot.reshape(-1, num_tokens, k), -1, -2)
    slot = jnp.pad(slot, padding, constant_values=capacity)
    num_rows = num_experts * capacity
    padded_rows = _padded(num_rows)
    rows = min(padded_rows, _ROW_BLOCK)
    in_spec = pl.BlockSpec((None, k, expert.shape[-1]), lambda g, r: (g, 0, 0))
    make_call = functools.partial(
        pl.pallas_call,
        functools.partial(_row_choice_kernel, capacity=capacity, num_tokens=num_tokens),
        grid=(expert.shape[0], padded_rows // rows),
        in_specs=[in_spec, in_spec],
        out_specs=pl.BlockSpec((None, rows), lambda g, r: (g, r)),
        out_shape=jax.ShapeDtypeStruct((expert.shape[0], padded_rows), jnp.int32),
        compiler_params=_TRITON,
        name="choice_of_buffer_row",
    )
    row_choice = _run_kernel(lambda interp: make_call(interpret=interp), interpret, expert, slot)
    return row_choice[:, :num_rows].reshape(*lead, num_rows)


def _dispatch_by_row_choice(x: Array, flat_index: Array, row_choice: Array) -> Array:
    """x ``[S, D]`` -> buffer rows ``[E * C, D]`` given the map of :func:`choice_of_buffer_row`."""
    num_tokens, num_choices = flat_index.shape
    source = jnp.where(row_choice < num_tokens * num_choices, row_choice // num_choices, num_tokens)
    return _gather_rows(x, source, flat_index)


def _combine_by_row_choice(y_flat: Array, flat_index: Array, weight: Array, row_choice: Array) -> Array:
    """Buffer rows ``[E * C, D]`` -> tokens ``[S, D]`` given the map of :func:`choice_of_buffer_row`."""
    num_tokens, num_choices = flat_index.shape
    picked = _gather_rows(y_flat, flat_index.reshape(-1), row_choice[:, None])
    picked = picked.reshape(num_tokens, num_choices, -1)
    return jnp.einsum("SK,SKD->SD", weight.astype(picked.dtype), picked, precision=_EXACT)


# ------------------------------------------------------------------------------------------------ dropless
class DroplessRouting(NamedTuple):
    """Token choice without capacity: every choice is served. ``expert[..., S, K]`` (int32) and
    ``weight[..., S, K]`` as in :class:`Assignment`; with R = G x S x K choice rows, ``order[R]`` (int32) the
    flat token-major choice indices (``t * K + k``) sorted stably by expert, and ``group_sizes[E]`` (int32)
    the rows per expert (``jax.lax.ragged_dot``'s ``group_sizes``)."""

    expert: Array
    weight: Array
    order: Array
    group_sizes: Array


def dropless_routing(gates: Array, k: int) -> DroplessRouting:
    """Top-k routing of ``gates[..., S, E]`` with no capacity and no drops (K largest gates, ties to the lower
    expert, raw gate weights), choices sorted by expert. :func:`dropless_dispatch`, then any per-expert
    function on the rows (e.g. ``jax.lax.ragged_dot``), then :func:`dropless_combine` equals the capacity path
    whenever its capacity drops nothing."""
    _check_gates(gates)
    num_experts = gates.shape[-1]  # E: the last dim of gates
    check_choices(k, num_experts)
    weight, expert = jax.lax.top_k(gates, k)  # [..., S, K]
    expert = expert.astype(jnp.int32)
    flat_expert = expert.reshape(-1)  # [R]
    order = jnp.argsort(flat_expert, stable=True).astype(jnp.int32)
    group_sizes = jnp.bincount(flat_expert, length=num_experts).astype(jnp.int32)
    return DroplessRouting(expert=expert, weight=weight, order=order, group_sizes=group_sizes)


def dropless_dispatch(x: Array, routing: DroplessRouting) -> Array:
    """Tokens ``x[..., S, D]`` to rows ``[R, D]`` sorted by expert (R = G x S x K): one row per choice."""
    x = jnp.asarray(x)
    if x.shape[:-1] != routing.expert.shape[:-1]:
        raise ValueError(
            f"x has shape {x.shape}, expected [..., S, D] with [..., S] = {routing.expert.shape[:-1]}"
        )
    num_choices = routing.expert.shape[-1]
    tokens = x.reshape(-1, x.shape[-1])  # [T, D]
    return tokens[routing.order // num_choices]


def dropless_combine(rows: Array, routing: DroplessRouting) -> Array:
    """Expert outputs ``rows[R, D]`` (in the sorted order of :func:`dropless_dispatch`) back to tokens
    ``[..., S, D]``, each token the gate-weighted sum of its K choices."""
    rows = jnp.asarray(rows)
    unsorted = jnp.zeros_like(rows).at[routing.order].set(rows, unique_indices=True)  # [R, D] token-major
    per_choice = unsorted.reshape(*routing.expert.shape, rows.shape[-1])  # [..., S, K, D]
    return jnp.einsum("...SK,...SKD->...SD", routing.weight.astype(rows.dtype), per_choice, precision=_EXACT)


# ------------------------------------------------------------------------------------------ auxiliary losses
def _cv_squared(values: Array) -> Array:
    """Squared coefficient of variation, ``[..., E] -> [...]``: var / mean**2 (the variance, not the square
    of a std, so the gradient is finite when all values are equal; a std has a NaN gradient there)."""
    mean = jnp.mean(values, axis=-1)
    return jnp.var(values, axis=-1) / mean**2


def importance_loss(gates: Array) -> Array:
    """V-MoE importance loss: squared coefficient of variation over experts of the per-expert sum of
    ``gates[..., S, E]`` over a group's S tokens, averaged over groups; 0 when the totals are equal."""
    _check_gates(gates)
    importance = jnp.sum(gates, axis=-2)  # [..., E]
    return jnp.mean(_cv_squared(importance))


def load_loss(clean_logits: Array, noisy_logits: Array, noise_std, k: int) -> Array:
    """V-MoE load loss: how evenly experts would be *selected* under re-sampled router noise.

    Per token and expert, ``Phi((clean - threshold) / noise_std)``, the chance that the clean logit plus fresh
    noise beats the token's k-th largest noisy logit; then the squared coefficient of variation over experts
    of its mean over tokens, averaged over groups. ``clean_logits`` and ``noisy_logits`` are ``[..., S, E]``;
    ``noise_std`` is the std actually added (V-MoE's ``noise_std / E``); with 0 the probability is the hard
    indicator ``clean >= threshold`` (zero gradient).
    """
    _check_gates(clean_logits, "clean_logits")
    _check_gates(noisy_logits, "noisy_logits")
    if clean_logits.shape != noisy_logits.shape:
        raise ValueError(f"clean_logits {clean_logits.shape} and noisy_logits {noisy_logits.shape} differ")
    check_choices(k, clean_logits.shape[-1])  # E: the last dim of the logits
    if _is_concrete(noise_std) and not np.all(np.asarray(noise_std) >= 0):  # may be traced, or an array
        fail("noise_std", noise_std, "numbers >= 0 (0: no noise was added)")
    threshold = jax.lax.top_k(noisy_logits, k)[0][..., -1:]  # [..., S, 1] k-th largest noisy logit
    margin = clean_logits - threshold  # [..., S, E]
    has_noise = noise_std > 0
    safe_std = jnp.where(has_noise, noise_std, 1.0)
    p_selected = jnp.where(has_noise, ndtr(margin / safe_std), (margin >= 0).astype(margin.dtype))
    return jnp.mean(_cv_squared(jnp.mean(p_selected, axis=-2)))


def switch_load_balancing_loss(gates: Array, experts) -> Array:
    """Switch/GShard load-balancing loss ``E * sum_e f_e * P_e`` averaged over groups: ``f_e`` the fraction
    of choices asking for expert e (before drops), ``P_e`` the mean of ``gates[..., S, E]`` for e; 1 when
    uniform. ``experts``: an :class:`Assignment`, or expert indices ``[..., S]`` or ``[..., S, K]``."""
    _check_gates(gates)
    expert_index = experts.expert if isinstance(experts, Assignment) else jnp.asarray(experts)
    if expert_index.ndim == gates.ndim - 1:
        expert_index = expert_index[..., None]
    if expert_index.shape[:-1] != gates.shape[:-1]:
        raise ValueError(
            f"experts has shape {expert_index.shape}, expected [..., S] or [..., S, K] for gates "
            f"{gates.shape}"
        )
    num_experts = gates.shape[-1]
    counts = jnp.sum(jax.nn.one_hot(expert_index, num_experts, dtype=gates.dtype), axis=(-3, -2))  # [..., E]
    fraction = counts / (expert_index.shape[-2] * expert_index.shape[-1])
    mean_gate = jnp.mean(gates, axis=-2)  # [..., E]
    return jnp.mean(num_experts * jnp.sum(fraction * mean_gate, axis=-1))


def router_entropy(gates: Array) -> Array:
    """Entropy in nats of each router distribution ``gates[..., E]`` -> ``[...]`` (0 log 0 counts as 0)."""
    gates = jnp.asarray(gates, jnp.float32)
    return jnp.sum(jax.scipy.special.entr(gates), axis=-1)


def router_z_loss(logits: Array) -> Array:
    """ST-MoE router z-loss: mean over tokens (and groups) of ``logsumexp(logits[..., S, E])**2``; keeps
    router logits small."""
    _check_gates(logits, "logits")
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) ** 2)


# -------------------------------------------------------------------------------------------- router noise
def noisy_router_logits(
    logits: Array, rng: Array | None, noise_std: float = 1.0, *, deterministic: bool = False
) -> tuple[Array, float]:
    """V-MoE router noise: ``(logits[..., S, E] + N(0, (noise_std / E)**2), std_added)``, the std being what
    :func:`load_loss` takes. With ``deterministic`` or ``noise_std=0``: the logits unchanged, 0 (``rng`` may
    be None)."""
    _check_gates(logits, "logits")
    check_noise_std(noise_std)
    if deterministic or noise_std == 0:
        return logits, 0.0
    if rng is None:
        raise ValueError("rng is required for router noise (or pass deterministic=True at evaluation)")
    std_added = noise_std / logits.shape[-1]
    noise = std_added * jax.random.normal(rng, logits.shape, dtype=logits.dtype)
    return logits + noise, std_added


# ------------------------------------------------------------------------------------------------ MoE layer
MOE_ROUTERS = ("top_k", "expert_choice", "soft")


def layer_capacity(router: str, num_tokens: int, num_experts: int, k: int, capacity_factor: float) -> int:
    """Slots per expert C of an MoE layer with S = ``num_tokens`` per group (per image for "soft"):
    :func:`capacity` with k for "top_k", k=1 otherwise (for expert choice the factor is Zhou et al.'s mean
    experts per token); at most S except for "soft" (a token's choices are distinct experts)."""
    check_one_of("router", router, MOE_ROUTERS)
    slots = capacity(num_tokens, num_experts, k if router == "top_k" else 1, capacity_factor)
    return slots if router == "soft" else min(slots, num_tokens)

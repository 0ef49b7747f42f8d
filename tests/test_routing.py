"""Routing primitives: hand-computed 3 tokens x 3 experts cases, a loop reference checked by hypothesis,
backend agreement (values and gradients), jit/vmap, aux-loss gradients and input validation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparse_experts import routing

# Three tokens (rows) x three experts (columns). Token 1 ties experts 1 and 2 at 0.1 (the lower index wins).
# Top choices: token 0 -> (e0 .6, e1 .3), token 1 -> (e0 .8, e1 .1), token 2 -> (e1 .5, e2 .3).
# Top-1 gates .6, .8, .5, so BPR serves tokens in the order 1, 0, 2.
GATES = np.array([[0.6, 0.3, 0.1], [0.8, 0.1, 0.1], [0.2, 0.5, 0.3]], np.float32)


def _assert_assignment(assignment, expert, slot, weight):
    np.testing.assert_array_equal(np.asarray(assignment.expert), expert)
    np.testing.assert_array_equal(np.asarray(assignment.slot), slot)
    np.testing.assert_allclose(np.asarray(assignment.weight), np.asarray(weight, np.float32), rtol=1e-6)
    assert assignment.expert.dtype == jnp.int32 and assignment.slot.dtype == jnp.int32


# ------------------------------------------------------------------------------------ hand-computed cases


def test_capacity():
    assert routing.capacity(1024, 8, 2, 1.25) == 320
    assert routing.capacity(3, 3, 1, 1.0) == 1
    assert routing.capacity(3, 3, 2, 1.0) == 2
    assert routing.capacity(10, 4, 1, 1.0) == 3  # ceil(2.5)
    assert routing.capacity(10, 4, 1, 1.0, multiple_of=4) == 4
    assert routing.capacity(16, 4, 1, 1.0, multiple_of=4) == 4
    assert routing.capacity(1, 8, 1, 0.5) == 1  # ceil(1/16)
    assert routing.capacity(100, 10, 1, 1.1) == 11  # not 12: 100 * 1.1 / 10 is 11.000000000000002 in floats


def test_top1_vanilla():
    # Served 0, 1, 2: token 0 takes e0 slot 0; token 1 finds e0 full (dropped: slot 1 == C, weight 0);
    # token 2 takes e1 slot 0.
    got = routing.top_k_routing(GATES, k=1, capacity=1)
    _assert_assignment(got, expert=[[0], [0], [1]], slot=[[0], [1], [0]], weight=[[0.6], [0.0], [0.5]])


@pytest.mark.parametrize("bpr_method", routing.BPR_METHODS)
def test_top1_batch_priority(bpr_method):
    # Served 1, 0, 2: token 1 (top-1 gate .8) now takes e0 and token 0 is dropped.
    got = routing.top_k_routing(GATES, k=1, capacity=1, batch_priority=True, bpr_method=bpr_method)
    _assert_assignment(got, expert=[[0], [0], [1]], slot=[[1], [0], [0]], weight=[[0.0], [0.8], [0.5]])


def test_top2_vanilla():
    # First choices: t0 -> e0 s0, t1 -> e0 s1, t2 -> e1 s0. Second choices: t0 -> e1 s1, t1 -> e1 full
    # (dropped, slot 2 == C), t2 -> e2 s0.
    got = routing.top_k_routing(GATES, k=2, capacity=2)
    _assert_assignment(
        got,
        expert=[[0, 1], [0, 1], [1, 2]],
        slot=[[0, 1], [1, 2], [0, 0]],
        weight=[[0.6, 0.3], [0.8, 0.0], [0.5, 0.3]],
    )


@pytest.mark.parametrize("bpr_method", routing.BPR_METHODS)
def test_top2_batch_priority(bpr_method):
    # Served 1, 0, 2 at both levels. First: t1 -> e0 s0, t0 -> e0 s1, t2 -> e1 s0. Second: t1 -> e1 s1,
    # t0 -> e1 full (dropped), t2 -> e2 s0.
    got = routing.top_k_routing(GATES, k=2, capacity=2, batch_priority=True, bpr_method=bpr_method)
    _assert_assignment(
        got,
        expert=[[0, 1], [0, 1], [1, 2]],
        slot=[[1, 2], [0, 1], [0, 0]],
        weight=[[0.6, 0.0], [0.8, 0.1], [0.5, 0.3]],
    )


def test_top2_renormalized():
    # As test_top2_vanilla (same slots, token 1's second choice dropped), each token's kept weights divided by
    # their sum: t0 (.6, .3) / .9, t1 (.8, dropped) / .8, t2 (.5, .3) / .8.
    got = routing.top_k_routing(GATES, k=2, capacity=2, renormalize=True)
    _assert_assignment(
        got,
        expert=[[0, 1], [0, 1], [1, 2]],
        slot=[[0, 1], [1, 2], [0, 0]],
        weight=[[2 / 3, 1 / 3], [1.0, 0.0], [0.625, 0.375]],
    )
    jitted = jax.jit(functools.partial(routing.top_k_routing, k=2, capacity=2, renormalize=True))(GATES)
    for field in range(3):
        np.testing.assert_allclose(np.asarray(jitted[field]), np.asarray(got[field]), rtol=1e-6)
    # Off by default: the raw gates.
    np.testing.assert_allclose(
        np.asarray(routing.top_k_routing(GATES, k=2, capacity=2).weight), [[0.6, 0.3], [0.8, 0.0], [0.5, 0.3]]
    )


def test_renormalized_gradient_finite_when_a_token_keeps_nothing():
    # k=2, capacity 1. First choices: all three tokens ask for e0; t0 takes it, t1 and t2 are dropped. Second
    # choices: t0 takes e1, t1 takes e2, t2 asks for e1 (full): dropped. t2 keeps nothing: weights 0, not NaN.
    logits = jnp.float32([[2.0, 1.0, 0.0], [1.5, 0.0, 1.0], [1.0, 0.5, 0.0]])

    def weights(logits):
        return routing.top_k_routing(jax.nn.softmax(logits), k=2, capacity=1, renormalize=True).weight

    gates = np.asarray(jax.nn.softmax(logits))
    got = np.asarray(jax.jit(weights)(logits))
    t0 = gates[0, :2] / gates[0, :2].sum()
    np.testing.assert_allclose(got, [t0, [0.0, 1.0], [0.0, 0.0]], rtol=1e-6)
    probe = jnp.float32([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    grad = np.asarray(jax.jit(jax.grad(lambda z: jnp.sum(weights(z) * probe)))(logits))
    assert np.isfinite(grad).all()
    # t1's single kept choice has weight 1 whatever the logits, and t2 has no weight at all: zero gradient;
    # t0's two kept weights move with its logits.
    np.testing.assert_allclose(grad[1:], 0.0, atol=1e-6)
    assert np.abs(grad[0]).sum() > 0


def test_expert_choice():
    # Columns of GATES: e0 (.6, .8, .2) takes tokens 1, 0; e1 (.3, .1, .5) takes 2, 0; e2 (.1, .1, .3)
    # takes 2, then 0 (tied with 1 at .1; the lower token index wins).
    got = routing.expert_choice_routing(GATES, capacity=2)
    np.testing.assert_array_equal(np.asarray(got.token), [[1, 0], [2, 0], [2, 0]])
    np.testing.assert_allclose(np.asarray(got.weight), np.float32([[0.8, 0.6], [0.5, 0.3], [0.3, 0.1]]))


@pytest.mark.parametrize("backend", routing.BACKENDS)
def test_dispatch_combine_by_hand(backend):
    x = np.float32([[1.0], [10.0], [100.0]])  # [S=3, D=1]: token t has value 10**t
    top2 = routing.top_k_routing(GATES, k=2, capacity=2)
    buffers = routing.dispatch(x, top2, num_experts=3, capacity=2, backend=backend)
    # e0 holds (t0, t1); e1 holds (t2, t0); e2 holds (t2, empty).
    np.testing.assert_array_equal(np.asarray(buffers)[..., 0], [[1, 10], [100, 1], [100, 0]])
    # Identity experts: t0 = .6*1 + .3*1, t1 = .8*10 (second choice dropped), t2 = .5*100 + .3*100.
    out = routing.combine(buffers, top2, backend=backend)
    np.testing.assert_allclose(np.asarray(out)[:, 0], [0.9, 8.0, 80.0], rtol=1e-6)

    chosen = routing.expert_choice_routing(GATES, capacity=2)
    buffers = routing.dispatch(x, chosen, num_experts=3, capacity=2, backend=backend)
    np.testing.assert_array_equal(np.asarray(buffers)[..., 0], [[10, 1], [100, 1], [100, 1]])
    # t0 = (.6 + .3 + .1) * 1, t1 = .8 * 10, t2 = (.5 + .3) * 100.
    out = routing.combine(buffers, chosen, backend=backend, num_tokens=3)
    np.testing.assert_allclose(np.asarray(out)[:, 0], [1.0, 8.0, 80.0], rtol=1e-6)


# -------------------------------------------------------------------------------- reference and properties


def _reference_top_k(gates: np.ndarray, k: int, capacity: int, batch_priority: bool):
    """Loop-by-loop V-MoE routing of one group gates[S, E], written from the specification."""
    num_tokens, num_experts = gates.shape
    choices = [
        sorted(range(num_experts), key=lambda e, s=s: (-gates[s, e], e))[:k] for s in range(num_tokens)
    ]
    order = list(range(num_tokens))
    if batch_priority:
        order.sort(
            key=lambda s: -gates[s, choices[s][0]]
        )  # Python's sort is stable: ties keep position order
    expert = np.array(choices, np.int32)
    slot = np.full((num_tokens, k), capacity, np.int32)
    weight = np.zeros((num_tokens, k), np.float32)
    used = [0] * num_experts
    for level in range(k):
        for s in order:
            e = choices[s][level]
            if used[e] < capacity:
                slot[s, level], weight[s, level] = used[e], gates[s, e]
                used[e] += 1
    return expert, slot, weight


@functools.cache
def _jit_top_k(k: int, capacity: int, batch_priority: bool, bpr_method: str | None = None):
    return jax.jit(
        functools.partial(
            routing.top_k_routing,
            k=k,
            capacity=capacity,
            batch_priority=batch_priority,
            bpr_method=bpr_method,
        )
    )


def _random_gates(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Softmax of logits rounded to one decimal, so equal gates (ties) are common."""
    logits = np.round(np.random.default_rng(seed).normal(size=shape), 1).astype(np.float32)
    return np.asarray(jax.nn.softmax(logits, axis=-1))


# Bucketed shapes: each (S, E, K, capacity factor) is one compiled program per routing flavour, so CI compiles
# a bounded number of programs however many examples hypothesis draws. The data varies with the seed.
SHAPE_BUCKETS = [
    # (num_tokens S, num_experts E, k K, capacity_factor)
    (4, 2, 1, 0.5),
    (4, 4, 2, 1.0),
    (8, 2, 2, 1.0),
    (8, 4, 1, 1.0),
    (8, 4, 2, 0.5),
    (8, 4, 2, 2.0),
]
routing_cases = st.fixed_dictionaries(
    {
        "shape": st.sampled_from(SHAPE_BUCKETS),
        "batch_priority": st.booleans(),
        "seed": st.integers(0, 2**31 - 1),
    }
)
GROUPS = 2  # every property case routes two groups at once: leading dims are routed independently


@given(routing_cases)
def test_top_k_properties(case):
    num_tokens, num_experts, k, capacity_factor = case["shape"]
    cap = routing.capacity(num_tokens, num_experts, k, capacity_factor)
    gates = _random_gates(case["seed"], (GROUPS, num_tokens, num_experts))
    got = _jit_top_k(k, cap, case["batch_priority"])(gates)
    expert, slot, weight = (np.asarray(a) for a in got)
    for g in range(GROUPS):
        want = _reference_top_k(gates[g], k, cap, case["batch_priority"])
        np.testing.assert_array_equal(expert[g], want[0])
        np.testing.assert_array_equal(slot[g], want[1])
        np.testing.assert_array_equal(weight[g], want[2])

        kept = slot[g] < cap
        assert np.all(slot[g] <= cap) and np.all(slot[g] >= 0)
        # K distinct experts per token, in descending gate order.
        assert all(len(set(row)) == k for row in expert[g])
        chosen_gates = np.take_along_axis(gates[g], expert[g], axis=-1)
        assert np.all(np.diff(chosen_gates, axis=-1) <= 0)
        # Weights are the raw gates where kept, 0 where dropped.
        np.testing.assert_array_equal(weight[g], np.where(kept, chosen_gates, 0))
        # Among kept choices each (expert, slot) is used once, so no expert is over capacity.
        pairs = list(zip(expert[g][kept], slot[g][kept], strict=True))
        assert len(pairs) == len(set(pairs))
        assert np.all(np.bincount(expert[g][kept], minlength=num_experts) <= cap)
        if case["batch_priority"]:
            # First choice level: no dropped token has a higher top-1 gate than a kept token of its expert.
            for e in range(num_experts):
                mine = expert[g][:, 0] == e
                kept_gates = chosen_gates[mine & kept[:, 0], 0]
                dropped_gates = chosen_gates[mine & ~kept[:, 0], 0]
                if kept_gates.size and dropped_gates.size:
                    assert dropped_gates.max() <= kept_gates.min()
    if case["batch_priority"]:
        # Both ways of computing BPR slots (sorting; counting higher-priority choices pairwise) agree with
        # the reference exactly, ties in the top-1 gate included (the gates are rounded to make them common).
        for method in routing.BPR_METHODS:
            other = [np.asarray(a) for a in _jit_top_k(k, cap, True, method)(gates)]
            for g in range(GROUPS):
                want = _reference_top_k(gates[g], k, cap, True)
                for got_part, want_part in zip(other, want, strict=True):
                    np.testing.assert_array_equal(got_part[g], want_part, err_msg=f"bpr_method={method}")


@given(routing_cases)
def test_expert_choice_properties(case):
    num_tokens, num_experts, _, capacity_factor = case["shape"]
    cap = min(routing.capacity(num_tokens, num_experts, 1, capacity_factor), num_tokens)
    gates = _random_gates(case["seed"], (GROUPS, num_tokens, num_experts))
    got = jax.jit(routing.expert_choice_routing, static_argnums=1)(gates, cap)
    token, weight = np.asarray(got.token), np.asarray(got.weight)
    for g in range(GROUPS):
        for e in range(num_experts):
            want = sorted(range(num_tokens), key=lambda s, e=e, g=g: (-gates[g, s, e], s))[:cap]
            np.testing.assert_array_equal(token[g, e], want)
            np.testing.assert_array_equal(weight[g, e], gates[g, want, e])


def _moe_loss(x, gates, expert_weights, probe, kind, cap, batch_priority, backend):
    """route -> dispatch -> a tanh-linear expert each -> combine, reduced to a scalar for gradients."""
    num_experts = gates.shape[-1]
    if kind == "expert_choice":
        record = routing.expert_choice_routing(gates, cap)
    else:
        record = routing.top_k_routing(gates, kind, cap, batch_priority=batch_priority)
    buffers = routing.dispatch(x, record, num_experts, cap, backend=backend)  # [G, E, C, D]
    y = jnp.tanh(jnp.einsum("GECD,EDF->GECF", buffers, expert_weights))
    out = routing.combine(y, record, backend=backend, num_tokens=x.shape[-2])  # [G, S, D]
    return jnp.sum(out * probe), out


@functools.cache
def _jit_all_backends(kind, cap: int, batch_priority: bool):
    """One compiled program giving (loss, out) and gradients for every backend (one compile per bucket)."""

    def all_backends(*args):
        return {
            backend: jax.value_and_grad(
                functools.partial(
                    _moe_loss, kind=kind, cap=cap, batch_priority=batch_priority, backend=backend
                ),
                argnums=(0, 1, 2),
                has_aux=True,
            )(*args)
            for backend in routing.BACKENDS
        }

    return jax.jit(all_backends)


# Backends only consume the routing record: three buckets (with and without drops) bound the compiles.
BACKEND_BUCKETS = [(4, 2, 1, 0.5), (8, 4, 2, 0.5), (8, 4, 2, 2.0)]


@given(st.sampled_from(BACKEND_BUCKETS), st.booleans(), st.integers(0, 2**31 - 1))
def test_backends_agree_values_and_gradients(shape, expert_choice, seed):
    num_tokens, num_experts, k, capacity_factor = shape
    width = 4
    cap = routing.capacity(num_tokens, num_experts, 1 if expert_choice else k, capacity_factor)
    if expert_choice:
        cap = min(cap, num_tokens)
    rng = np.random.default_rng(seed)
    gates = jnp.asarray(_random_gates(seed, (GROUPS, num_tokens, num_experts)))
    x = jnp.asarray(rng.normal(size=(GROUPS, num_tokens, width)), jnp.float32)
    expert_weights = jnp.asarray(rng.normal(size=(num_experts, width, width)), jnp.float32)
    probe = jnp.asarray(rng.normal(size=(GROUPS, num_tokens, width)), jnp.float32)
    kind = "expert_choice" if expert_choice else k
    results = _jit_all_backends(kind, cap, batch_priority=not expert_choice)(x, gates, expert_weights, probe)
    (_, out_ref), grads_ref = results["einsum"]
    for backend in routing.BACKENDS[1:]:
        (_, out), grads = results[backend]
        np.testing.assert_allclose(out, out_ref, atol=1e-5, rtol=1e-5, err_msg=backend)
        for got, want, name in zip(grads, grads_ref, ["x", "gates", "expert_weights"], strict=True):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=f"{backend} d/d{name}")


def test_dropped_choices_read_and_write_nothing():
    # Every token asks for expert 0 with capacity 1: tokens 1 and 2 are dropped. A NaN in another slot's
    # output must not reach them (a clamped gather would read the last slot).
    gates = np.float32([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    top1 = routing.top_k_routing(gates, k=1, capacity=1)
    x = np.float32([[1.0], [2.0], [3.0]])
    y = np.float32([[[5.0]], [[np.nan]]])  # [E=2, C=1, D=1]; expert 1's only slot is empty, holds NaN
    for backend in ["indices"]:
        buffers = routing.dispatch(x, top1, 2, 1, backend=backend)
        np.testing.assert_array_equal(np.asarray(buffers)[..., 0], [[1.0], [0.0]])
        np.testing.assert_allclose(np.asarray(routing.combine(y, top1, backend=backend))[:, 0], [4.5, 0, 0])


def test_default_backend_runs():
    top1 = routing.top_k_routing(GATES, k=1, capacity=1)
    buffers = routing.dispatch(np.eye(3, dtype=np.float32), top1, 3, 1)
    assert buffers.shape == (3, 1, 3)
    assert routing.combine(buffers, top1).shape == (3, 3)


def test_jit_and_vmap_over_groups():
    gates = _random_gates(0, (3, 2, 8, 4))  # two leading group dims
    route = functools.partial(routing.top_k_routing, k=2, capacity=3, batch_priority=True)
    one_group = jax.jit(route)
    per_group = [one_group(gates[i, j]) for i in range(3) for j in range(2)]
    batched = jax.jit(route)(gates)
    vmapped = jax.jit(jax.vmap(jax.vmap(route)))(gates)
    for field in range(3):
        stacked = np.stack([np.asarray(a[field]) for a in per_group]).reshape(batched[field].shape)
        for other in (batched, vmapped):
            np.testing.assert_array_equal(np.asarray(other[field]), stacked)

    choose = functools.partial(routing.expert_choice_routing, capacity=3)
    np.testing.assert_array_equal(jax.jit(jax.vmap(choose))(gates).token, jax.jit(choose)(gates).token)

    x = np.ones((3, 2, 8, 5), np.float32)
    assignment = batched
    for backend in routing.BACKENDS:
        dispatch = functools.partial(routing.dispatch, num_experts=4, capacity=3, backend=backend)
        buffers = jax.jit(jax.vmap(dispatch))(x, assignment)
        assert buffers.shape == (3, 2, 4, 3, 5)
        np.testing.assert_array_equal(buffers, jax.jit(dispatch)(x, assignment))


# ------------------------------------------------------------------------------------------------ dropless


def test_dropless_by_hand():
    # k=2 choices, token-major flat index t*K + k: experts (0, 1), (0, 1), (1, 2). Sorted by expert (stable):
    # e0 gets choices 0, 2 (tokens 0, 1); e1 gets 1, 3, 4 (tokens 0, 1, 2); e2 gets 5 (token 2).
    got = routing.dropless_routing(GATES, k=2)
    np.testing.assert_array_equal(np.asarray(got.order), [0, 2, 1, 3, 4, 5])
    np.testing.assert_array_equal(np.asarray(got.group_sizes), [2, 3, 1])
    x = np.float32([[1.0], [10.0], [100.0]])
    rows = routing.dropless_dispatch(x, got)
    np.testing.assert_array_equal(np.asarray(rows)[:, 0], [1, 10, 1, 10, 100, 100])
    # Identity experts, nothing dropped: t0 = (.6 + .3) * 1, t1 = (.8 + .1) * 10, t2 = (.5 + .3) * 100.
    np.testing.assert_allclose(
        np.asarray(routing.dropless_combine(rows, got))[:, 0], [0.9, 9.0, 80.0], rtol=1e-6
    )


def _dropless_vs_capacity_loss(x, gates, expert_weights, probe, k):
    """The same MoE two ways: dropless with ragged_dot, and the capacity path with C = S (nothing dropped).
    Both expert matmuls run in full float32, so the comparison is about routing and not about which kernel
    (and which rounding: TF32 on recent GPUs) each path's matmul gets."""
    num_tokens, num_experts = gates.shape[-2:]
    plan = routing.dropless_routing(gates, k)
    rows = routing.dropless_dispatch(x, plan)  # [R, D]
    hidden = jax.lax.ragged_dot(rows, expert_weights, plan.group_sizes, precision=jax.lax.Precision.HIGHEST)
    dropless = routing.dropless_combine(jnp.tanh(hidden), plan)
    assignment = routing.top_k_routing(gates, k, num_tokens)
    buffers = routing.dispatch(x, assignment, num_experts, num_tokens)
    y = jnp.tanh(jnp.einsum("GECD,EDF->GECF", buffers, expert_weights, precision=jax.lax.Precision.HIGHEST))
    capacity_path = routing.combine(y, assignment)
    return jnp.sum(dropless * probe), jnp.sum(capacity_path * probe)


@functools.cache
def _jit_dropless_vs_capacity(k: int):
    def both(*args):
        grads = [
            jax.grad(lambda *a, i=i: _dropless_vs_capacity_loss(*a, k)[i], argnums=(0, 1, 2))(*args)
            for i in (0, 1)
        ]
        return _dropless_vs_capacity_loss(*args, k), grads

    return jax.jit(both)


@given(st.sampled_from(BACKEND_BUCKETS), st.integers(0, 2**31 - 1))
def test_dropless_equals_capacity_path_without_drops(shape, seed):
    num_tokens, num_experts, k, _ = shape
    width = 4
    rng = np.random.default_rng(seed)
    gates = jnp.asarray(_random_gates(seed, (GROUPS, num_tokens, num_experts)))
    x = jnp.asarray(rng.normal(size=(GROUPS, num_tokens, width)), jnp.float32)
    expert_weights = jnp.asarray(rng.normal(size=(num_experts, width, width)), jnp.float32)
    probe = jnp.asarray(rng.normal(size=(GROUPS, num_tokens, width)), jnp.float32)
    (dropless, capacity_path), (grads_dropless, grads_capacity) = _jit_dropless_vs_capacity(k)(
        x, gates, expert_weights, probe
    )
    np.testing.assert_allclose(dropless, capacity_path, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads_dropless, grads_capacity, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------------------------------------- router noise


def test_router_noise():
    logits = jnp.zeros((4096, 8), jnp.float32)
    noisy, std_added = routing.noisy_router_logits(logits, jax.random.key(0), noise_std=1.0)
    assert std_added == 1.0 / 8
    assert float(jnp.std(noisy)) == pytest.approx(1.0 / 8, rel=0.03)
    same, zero = routing.noisy_router_logits(logits, None, noise_std=1.0, deterministic=True)
    assert same is logits and zero == 0.0
    same, zero = routing.noisy_router_logits(logits, None, noise_std=0.0)
    assert same is logits and zero == 0.0


# ------------------------------------------------------------------------------------------ auxiliary losses


def test_aux_losses_by_hand():
    uniform = np.full((2, 4, 4), 0.25, np.float32)  # [G, S, E]
    one_sided = np.float32([[1.0, 0.0], [1.0, 0.0]])  # both tokens put all their gate on expert 0
    logits = np.float32([[2.0, 1.0], [1.0, 2.0]])

    @jax.jit
    def losses():
        top1 = routing.top_k_routing(uniform, 1, 4)  # ties: every token asks for expert 0
        return {
            "importance_uniform": routing.importance_loss(uniform),
            # Importance per expert [2, 0]: var 1 / mean**2 1.
            "importance_one_sided": routing.importance_loss(one_sided),
            # f = (1, 0, 0, 0), P = (1/4, ...): 4 * 1/4 = 1.
            "switch_all_to_one": routing.switch_load_balancing_loss(uniform, top1),
            # f = P = (1/4, ...): 4 * 4 * 1/16 = 1.
            "switch_spread": routing.switch_load_balancing_loss(uniform, np.arange(4)[None].repeat(2, 0)),
            "z": routing.router_z_loss(np.zeros((3, 4), np.float32)),
            # No noise: the hard top-1 selects each expert for one of the two tokens -> balanced, 0.
            "load_no_noise": routing.load_loss(logits, logits, 0.0, 1),
            "load_noise": routing.load_loss(logits, logits, 0.5, 1),
        }

    got = {name: float(value) for name, value in losses().items()}
    want = {
        "importance_uniform": 0.0,
        "importance_one_sided": 1.0,
        "switch_all_to_one": 1.0,
        "switch_spread": 1.0,
        "z": float(np.log(4.0) ** 2),
        "load_no_noise": 0.0,
        "load_noise": 0.0,
    }
    assert got == pytest.approx(want, abs=1e-6)


def test_aux_loss_gradients_finite_at_balanced_routing():
    logits = jnp.zeros((2, 4, 4), jnp.float32)  # [G, S, E]: uniform gates, perfectly balanced
    losses = {
        "importance": lambda z, s: routing.importance_loss(jax.nn.softmax(z)),
        "load": lambda z, s: routing.load_loss(z, z, s, 2),
        "switch": lambda z, s: routing.switch_load_balancing_loss(
            jax.nn.softmax(z), routing.top_k_routing(jax.nn.softmax(z), 1, 4)
        ),
        "z": lambda z, s: routing.router_z_loss(z),
    }

    @jax.jit
    def values_and_grads(z, noise_std):  # noise_std traced: 0 (no noise) must work too
        return {name: jax.value_and_grad(loss)(z, noise_std) for name, loss in losses.items()}

    for noise_std in (0.0, 0.25):
        for name, (value, grad) in values_and_grads(logits, noise_std).items():
            assert np.isfinite(value), name
            assert np.all(np.isfinite(grad)), name


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: routing.top_k_routing(GATES, k=0, capacity=1), "k"),
        (lambda: routing.top_k_routing(GATES, k=4, capacity=1), "k=4 exceeds num_experts=3"),
        (lambda: routing.top_k_routing(GATES, k=1, capacity=0), "capacity"),
        (lambda: routing.top_k_routing(GATES, k=1, capacity=1, renormalize="yes"), "renormalize"),
        (
            lambda: routing.top_k_routing(GATES, 1, 1, batch_priority=True, bpr_method="heap"),
            "bpr_method='heap'",
        ),
        (lambda: routing.top_k_routing(GATES[0], k=1, capacity=1), "gates"),
        (lambda: routing.top_k_routing(np.where(GATES > 0.7, np.nan, GATES), 1, 1), "gates contain NaN"),
        (lambda: routing.expert_choice_routing(GATES, capacity=4), "capacity=4 exceeds"),
        (lambda: routing.expert_choice_routing(GATES, capacity=0), "capacity"),
        (lambda: routing.capacity(8, 4, 1, 0.0), "capacity_factor"),
        (lambda: routing.capacity(8, 4, 1, -1.0), "capacity_factor"),
        (lambda: routing.capacity(8, 4, 0, 1.0), "k"),
        (lambda: routing.capacity(0, 4, 1, 1.0), "at least 1 slot"),
        (
            lambda: routing.dispatch(np.ones((3, 2)), routing.top_k_routing(GATES, 1, 1), 3, 1, "magic"),
            "backend",
        ),
        (lambda: routing.combine(np.ones((3, 1, 2)), routing.top_k_routing(GATES, 1, 1), "magic"), "backend"),
        (lambda: routing.combine(np.ones((3, 2, 2)), routing.expert_choice_routing(GATES, 2)), "num_tokens"),
        (
            lambda: routing.dispatch(np.ones((3, 2)), routing.expert_choice_routing(GATES, 2), 3, 1),
            "routing.token",
        ),
        (lambda: routing.importance_loss(np.ones(3)), "gates"),
        (lambda: routing.load_loss(GATES, GATES, -1.0, 1), "noise_std"),
        (lambda: routing.dropless_routing(GATES, k=4), "k=4 exceeds num_experts=3"),
        (lambda: routing.dropless_routing(GATES[0], k=1), "gates"),
        (lambda: routing.noisy_router_logits(GATES, None, noise_std=-1.0), "noise_std"),
        (lambda: routing.noisy_router_logits(GATES, None, noise_std=1.0), "rng"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises((ValueError, TypeError), match=name):
        call()


def test_one_helper_per_check_names_parameter_value_and_what_is_valid():
    assert routing.check_choices(np.int64(2), 3) == 2 and routing.check_int("num_classes", 0, minimum=0) == 0
    with pytest.raises(ValueError, match=r"^k=3 exceeds num_experts=2; use k <= num_experts$"):
        routing.check_choices(3, 2)
    with pytest.raises(ValueError, match=r"^MoeConfig.k=3 exceeds num_experts=2"):
        routing.check_choices(3, 2, name="MoeConfig.k")
    with pytest.raises(TypeError, match=r"^k=True is not allowed; expected an integer >= 1$"):
        routing.check_choices(True, 2)
    with pytest.raises(ValueError, match=r"^group_size=0 is not allowed; expected an integer >= 1$"):
        routing.check_int("group_size", 0)
    assert routing.check_capacity_factor(np.float32(1.5)) == 1.5 and routing.check_noise_std(0) == 0.0
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(
            ValueError, match=r"capacity_factor=.* is not allowed; expected a number > 0 \(1.0"
        ):
            routing.check_capacity_factor(bad)
    with pytest.raises(TypeError, match="noise_std='1' is not allowed; expected a number >= 0"):
        routing.check_noise_std("1")
    with pytest.raises(ValueError, match="noise_std=-0.5 is not allowed; expected a number >= 0"):
        routing.check_noise_std(-0.5)
    with pytest.raises(TypeError, match="renormalize=1 is not allowed; expected True or False"):
        routing.check_bool("renormalize", 1)
    with pytest.raises(ValueError, match="router='dense' is not allowed; expected one of 'top_k', 'soft'"):
        routing.check_one_of("router", "dense", ("top_k", "soft"))

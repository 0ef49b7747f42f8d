"""Routing benchmark: forward+backward time of a whole MoE layer against the expert MLP alone.

For each shape (S, E, K, D, H) at one capacity factor, this times the gradient (with respect to the tokens,
the router weights and both expert weights) of a scalar loss of::

    router logits -> softmax -> top_k_routing (vanilla or BPR) -> dispatch -> expert MLP -> combine

for every dispatch backend in ``routing.BACKENDS``, next to a lower bound measured in the same run: the
expert MLP alone (fwd+bwd) on ``[E, C, D]`` buffers of the same size. The runs are interleaved round-robin
(the order rotates each round) after a warm-up call of every compiled program, so machine noise hits all
variants alike. Reported per variant: median and interquartile range (seconds), the ratio of its median to
the bound's median (and the median of per-round ratios, robust to load drifting during the run), and
the memory of its compiled program (temp + argument + output bytes).

    .venv/bin/python benchmarks/routing.py                      # the issue's three shapes, 10 repeats
    .venv/bin/python benchmarks/routing.py --shapes 1024,8,2,256,1024 --repeats 20
    .venv/bin/python benchmarks/routing.py --quick --repeats 2   # a tiny smoke shape

The JSON (default ``outputs/benchmarks/routing.json``) holds the provenance, the shapes, per-variant stats
and ratios, and the fastest backend per platform and shape, from which ``routing.DEFAULT_BACKEND`` is filled
in by hand (nothing picks a backend by timing at run time).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared _timing module
from _timing import calls_per_sample, summarize, time_interleaved, write_record  # noqa: E402

from sparse_experts import paths, routing

DEFAULT_SHAPES = ((1024, 8, 2, 256, 1024), (4096, 8, 2, 256, 1024), (4096, 32, 2, 256, 1024))
QUICK_SHAPE = (64, 4, 2, 16, 32)
CAPACITY_FACTOR = 1.25
BOUND = "bound"  # name of the lower-bound variant: the expert MLP alone


def target_ratio(num_tokens: int) -> float:
    """The issue's target for the default backend: <= 1.15x the bound at S=4096, <= 1.3x at S=1024."""
    return 1.15 if num_tokens >= 4096 else 1.3


def parse_shape(text: str) -> tuple[int, int, int, int, int]:
    """``"S,E,K,D,H"`` (or ``SxExKxDxH``) -> a tuple of five ints."""
    parts = text.replace("x", ",").split(",")
    if len(parts) != 5:
        raise argparse.ArgumentTypeError(f"shape {text!r} must be five integers S,E,K,D,H")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"shape {text!r} must be five integers S,E,K,D,H") from e
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r} must be positive")
    return shape  # type: ignore[return-value]


def shape_name(shape: Sequence[int]) -> str:
    s, e, k, d, h = shape
    return f"S={s} E={e} K={k} D={d} H={h}"


# --------------------------------------------------------------------------------------------- the programs


def expert_mlp(buffers: jax.Array, w_in: jax.Array, w_out: jax.Array) -> jax.Array:
    """E expert MLPs on their buffers ``[E, C, D]`` with stacked weights ``[E, D, H]``, ``[E, H, D]``."""
    hidden = jax.nn.gelu(jnp.einsum("ECD,EDH->ECH", buffers, w_in))
    return jnp.einsum("ECH,EHD->ECD", hidden, w_out)


def bound_loss(buffers, w_in, w_out):
    return jnp.mean(expert_mlp(buffers, w_in, w_out) ** 2)


def make_layer_loss(
    num_experts: int, k: int, cap: int, batch_priority: bool, backend: str, bpr_method: str | None = None
) -> Callable:
    """Scalar loss of one MoE layer on one group of tokens ``x[S, D]``."""

    def loss(x, w_router, w_in, w_out):
        gates = jax.nn.softmax(x @ w_router, axis=-1)  # [S, E]
        assignment = routing.top_k_routing(
            gates, k, cap, batch_priority=batch_priority, bpr_method=bpr_method, backend=backend
        )
        buffers = routing.dispatch(x, assignment, num_experts, cap, backend=backend)  # [E, C, D]
        out = routing.combine(expert_mlp(buffers, w_in, w_out), assignment, backend=backend)  # [S, D]
        return jnp.mean(out**2)

    return loss


def memory_bytes(compiled) -> dict[str, int | None]:
    """temp + argument + output bytes of a compiled program (None where the backend does not say)."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # some backends raise instead of returning None
        stats = None
    if stats is None:
        return {"temp": None, "argument": None, "output": None, "total": None}
    fields = {
        "temp": getattr(stats, "temp_size_in_bytes", None),
        "argument": getattr(stats, "argument_size_in_bytes", None),
        "output": getattr(stats, "output_size_in_bytes", None),
    }
    known = [v for v in fields.values() if v is not None]
    fields["total"] = int(sum(known)) if known else None
    return fields


def make_route_only(k: int, cap: int, batch_priority: bool) -> Callable:
    """Breakdown: the router alone, forward (logits -> softmax -> top_k_routing), returning the Assignment."""

    def route(x, w_router):
        return routing.top_k_routing(
            jax.nn.softmax(x @ w_router, axis=-1), k, cap, batch_priority=batch_priority
        )

    return route


def make_move_loss(num_experts: int, cap: int, backend: str) -> Callable:
    """Breakdown: dispatch -> expert MLP -> combine under a fixed, precomputed assignment (no router)."""

    def loss(x, w_in, w_out, assignment):
        buffers = routing.dispatch(x, assignment, num_experts, cap, backend=backend)
        return jnp.mean(routing.combine(expert_mlp(buffers, w_in, w_out), assignment, backend=backend) ** 2)

    return loss


def build_programs(
    shape: Sequence[int],
    capacity_factor: float,
    backends: Sequence[str],
    seed: int = 0,
    breakdown: bool = False,
):
    """Compiled fwd+bwd programs and their arguments: the bound, then each (backend, vanilla/BPR). With
    ``breakdown``, also ``indices/bpr_{sort,pairwise}`` (the BPR layer with each ``bpr_method``),
    ``route/{vanilla,bpr}`` (the router's forward alone) and ``{backend}/move`` (fwd+bwd of dispatch -> MLP
    -> combine under a fixed vanilla assignment): where a layer's time goes."""
    s, e, k, d, h = shape
    cap = routing.capacity(s, e, k, capacity_factor)
    keys = jax.random.split(jax.random.key(seed), 5)
    x = jax.random.normal(keys[0], (s, d), jnp.float32)
    w_router = jax.random.normal(keys[1], (d, e), jnp.float32) / np.sqrt(d)
    w_in = jax.random.normal(keys[2], (e, d, h), jnp.float32) / np.sqrt(d)
    w_out = jax.random.normal(keys[3], (e, h, d), jnp.float32) / np.sqrt(h)
    buffers = jax.random.normal(keys[4], (e, cap, d), jnp.float32)

    programs: dict[str, tuple[Any, tuple]] = {}
    bound_args = (buffers, w_in, w_out)
    bound_fn = jax.jit(jax.grad(bound_loss, argnums=(0, 1, 2)))
    programs[BOUND] = (bound_fn.lower(*bound_args).compile(), bound_args)
    layer_args = (x, w_router, w_in, w_out)
    for backend in backends:
        for bpr in (False, True):
            loss = make_layer_loss(e, k, cap, bpr, backend)
            fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
            name = f"{backend}/{'bpr' if bpr else 'vanilla'}"
            programs[name] = (fn.lower(*layer_args).compile(), layer_args)
    if breakdown:
        for method in routing.BPR_METHODS:  # the layer with each way of computing BPR slots
            fn = jax.jit(jax.grad(make_layer_loss(e, k, cap, True, "indices", method), argnums=(0, 1, 2, 3)))
            programs[f"indices/bpr_{method}"] = (fn.lower(*layer_args).compile(), layer_args)
        for bpr in (False, True):
            fn = jax.jit(make_route_only(k, cap, bpr))
            programs[f"route/{'bpr' if bpr else 'vanilla'}"] = (
                fn.lower(x, w_router).compile(),
                (x, w_router),
            )
        assignment = jax.jit(make_route_only(k, cap, False))(x, w_router)
        move_args = (x, w_in, w_out, assignment)
        for backend in backends:
            fn = jax.jit(jax.grad(make_move_loss(e, cap, backend), argnums=(0, 1, 2)))
            programs[f"{backend}/move"] = (fn.lower(*move_args).compile(), move_args)
    return cap, programs


# ---------------------------------------------------------------------------------------------- measuring


def bench_shape(
    shape,
    capacity_factor: float,
    backends: Sequence[str],
    repeats: int,
    min_sample_s: float = 0.0,
    breakdown: bool = False,
    hlo_dir: Path | None = None,
    profile_dir: Path | None = None,
    profile_calls: int = 20,
) -> dict[str, Any]:
    s, e, k, d, h = shape
    cap, programs = build_programs(shape, capacity_factor, backends, breakdown=breakdown)
    if hlo_dir is not None:  # the optimised programs, to read kernel counts and fusions offline
        hlo_dir.mkdir(parents=True, exist_ok=True)
        for name, (compiled, _) in programs.items():
            stem = f"S{s}_E{e}_K{k}_D{d}_H{h}__{name.replace('/', '_')}"
            (hlo_dir / f"{stem}.hlo.txt").write_text(compiled.as_text())
    callables = {name: functools.partial(c, *args) for name, (c, args) in programs.items()}
    calls = calls_per_sample(callables, min_sample_s)
    times = time_interleaved(callables, repeats, calls)
    bound_median = float(np.median(times[BOUND]))
    # The backends must compute the same gradients (values to float tolerance) at the timed shape too.
    agreement = {}
    for variant in ("vanilla", "bpr"):
        grads = {b: jax.device_get(callables[f"{b}/{variant}"]()) for b in backends}
        reference = grads[backends[0]]
        for b in backends[1:]:
            agreement[f"{b}_vs_{backends[0]}/{variant}"] = max(
                float(np.max(np.abs(g - r)) / max(float(np.max(np.abs(r))), 1e-30))
                for g, r in zip(grads[b], reference, strict=True)
            )
    variants = {}
    for name, samples in times.items():
        stats = summarize(samples)
        stats["ratio_to_bound"] = stats["median_s"] / bound_median
        # Each round's time over the bound's time in the same round: robust to load that drifts during a run.
        paired = np.asarray(samples) / np.asarray(times[BOUND])
        q25, q50, q75 = np.percentile(paired, [25, 50, 75])
        stats["paired_ratio_median"] = float(q50)
        stats["paired_ratio_iqr"] = float(q75 - q25)
        stats["memory_bytes"] = memory_bytes(programs[name][0])
        stats["samples_s"] = [float(t) for t in samples]
        stats["calls_per_sample"] = calls[name]
        if name != BOUND:
            backend, variant = name.split("/")
            if variant in ("vanilla", "bpr") and backend in backends:
                stats.update(backend=backend, batch_priority=variant == "bpr")
            else:
                stats.update(breakdown=True)
        variants[name] = stats

    fastest = {}
    for variant in ("vanilla", "bpr"):
        candidates = {b: variants[f"{b}/{variant}"]["median_s"] for b in backends}
        fastest[variant] = min(candidates, key=candidates.get)
    # Overall: the backend with the lowest geometric-mean ratio over the two routing variants.
    overall = {
        b: float(np.sqrt(variants[f"{b}/vanilla"]["ratio_to_bound"] * variants[f"{b}/bpr"]["ratio_to_bound"]))
        for b in backends
    }
    kernels = None
    if profile_dir is not None:
        profiled = [n for n in programs if not n.startswith("einsum/")]  # einsum: reference only, slow
        kernels = profile_programs(callables, profiled, profile_calls, profile_dir / f"S{s}_E{e}_K{k}")
    return {
        "shape": {"S": s, "E": e, "K": k, "D": d, "H": h, "C": cap, "capacity_factor": capacity_factor},
        "kernels": kernels,
        "name": shape_name(shape),
        "target_ratio": target_ratio(s),
        "variants": variants,
        "fastest_backend": {**fastest, "overall": min(overall, key=overall.get)},
        "geomean_ratio_by_backend": overall,
        "max_relative_grad_difference": agreement,
    }


# ---------------------------------------------------------------------------------------------- profiling


def _line_summary(events, calls: int) -> dict[str, Any] | None:
    """Events per call, busy time per call and the 20 costliest event names of one trace line (None if
    the line is empty)."""
    per_name: dict[str, list[float]] = {}
    for event in events:
        entry = per_name.setdefault(event.name, [0, 0.0])
        entry[0] += 1
        entry[1] += float(event.duration_ns)
    if not per_name:
        return None
    top = sorted(per_name.items(), key=lambda item: -item[1][1])[:20]
    return {
        "events_per_call": sum(c for c, _ in per_name.values()) / calls,
        "busy_us_per_call": sum(t for _, t in per_name.values()) / calls / 1e3,
        "top": [{"name": n, "per_call": c / calls, "us_per_call": t / calls / 1e3} for n, (c, t) in top],
    }


def _trace_device_lines(program: Callable[[], object], calls: int, trace_dir: Path) -> dict[str, Any]:
    """Trace ``calls`` back-to-back calls and summarise every non-empty line of the device planes."""
    with jax.profiler.trace(str(trace_dir)):
        out = None
        for _ in range(calls):
            out = program()
        jax.block_until_ready(out)
    files = sorted(trace_dir.rglob("*.xplane.pb"))
    if not files:
        raise FileNotFoundError(f"no .xplane.pb under {trace_dir}")
    data = jax.profiler.ProfileData.from_file(str(files[-1]))
    lines = {}
    for plane in (p for p in data.planes if p.name.startswith("/device:")):
        for line in plane.lines:
            summary = _line_summary(line.events, calls)
            if summary is not None:
                lines[f"{plane.name} | {line.name}"] = summary
    return lines


def profile_programs(
    callables: dict[str, Callable[[], object]], names: Sequence[str], calls: int, trace_root: Path
) -> dict[str, Any]:
    """Device time per kernel, from a ``jax.profiler`` trace of ``calls`` back-to-back calls of each program.

    Per program and per trace line of the device planes (on a GPU, one line per stream holds its kernels):
    events per call, their total duration per call, and the 20 costliest event names (kernel or fusion names,
    which match the HLO that ``--dump-hlo`` writes). Next to the wall time per call, this separates time in
    kernels from gaps between them (launches, host). A failure to trace is recorded, not raised."""
    summary: dict[str, Any] = {}
    for name in names:
        program = callables[name]
        jax.block_until_ready(program())
        try:
            lines = _trace_device_lines(program, calls, trace_root / name.replace("/", "_"))
            summary[name] = {"calls": calls, "lines": lines}
        except Exception as error:  # noqa: BLE001 - a profiler that does not work here is a finding, not a crash
            summary[name] = {"calls": calls, "error": f"{type(error).__name__}: {error}"}
    return summary


# ---------------------------------------------------------------------------------------------- reporting


def format_table(results: Sequence[dict[str, Any]], default_backend: str) -> str:
    header = (
        f"{'shape':<32} {'C':>5} {'variant':<20} {'median ms':>10} {'IQR ms':>8} "
        f"{'x bound':>8} {'paired':>7} {'target':>7} {'mem MiB':>8}"
    )
    lines = [header, "-" * len(header)]
    for result in results:
        cap = result["shape"]["C"]
        for name, stats in result["variants"].items():
            mem = stats["memory_bytes"]["total"]
            mem_text = f"{mem / 2**20:8.1f}" if mem is not None else f"{'n/a':>8}"
            if name == BOUND or stats.get("breakdown"):
                target = ""
            else:
                is_default = stats["backend"] == default_backend
                ok = stats["ratio_to_bound"] <= result["target_ratio"]
                target = f"{'ok' if ok else 'MISS'}{'*' if is_default else ''}"
            lines.append(
                f"{result['name']:<32} {cap:>5} {name:<20} {stats['median_s'] * 1e3:>10.2f} "
                f"{stats['iqr_s'] * 1e3:>8.2f} {stats['ratio_to_bound']:>8.3f} "
                f"{stats['paired_ratio_median']:>7.3f} {target:>7} {mem_text}"
            )
        fastest = result["fastest_backend"]
        lines.append(
            f"{'':<32} fastest: vanilla={fastest['vanilla']} bpr={fastest['bpr']} "
            f"overall={fastest['overall']} (target <= {result['target_ratio']}x the bound)"
        )
        for pair, diff in result.get("max_relative_grad_difference", {}).items():
            lines.append(f"{'':<32} gradients {pair}: max |diff| / max |ref| = {diff:.1e}")
        lines.append("")
    lines.append(
        f"* = the platform's current default backend ({default_backend}); ok/MISS: 'x bound' (ratio of "
        "medians) against the target"
    )
    lines.append("paired = median over rounds of (variant time / bound time in the same round)")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=parse_shape,
        default=None,
        metavar="S,E,K,D,H",
        help="shapes to run (default: the issue's three: "
        + " ".join(",".join(map(str, s)) for s in DEFAULT_SHAPES)
        + ")",
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds after the warm-up (default 10)")
    parser.add_argument(
        "--min-sample-ms",
        type=float,
        default=None,
        help="a timed sample repeats a program back to back until it lasts this long (default: 0, one call, "
        "on CPU; 5 ms on an accelerator, where one call is short next to the host's dispatch cost)",
    )
    parser.add_argument("--capacity-factor", type=float, default=CAPACITY_FACTOR)
    parser.add_argument(
        "--backends", nargs="+", default=list(routing.BACKENDS), choices=list(routing.BACKENDS)
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=paths.outputs_root() / "benchmarks" / "routing.json",
        help="JSON output (default outputs/benchmarks/routing.json)",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also time the router alone (route/vanilla, route/bpr: forward) and dispatch -> MLP -> combine "
        "under a fixed assignment ({backend}/move: fwd+bwd)",
    )
    parser.add_argument(
        "--dump-hlo",
        type=Path,
        default=None,
        metavar="DIR",
        help="write each optimised program's HLO text here",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="trace 20 calls of every non-einsum program with jax.profiler (traces under DIR) and save "
        "device time per kernel in the JSON",
    )
    parser.add_argument(
        "--matmul-precision",
        default=None,
        help="set jax_default_matmul_precision for the whole run (e.g. 'highest': full float32 matmuls on "
        "GPU, where the default is TF32); recorded in the JSON",
    )
    parser.add_argument("--quick", action="store_true", help=f"one tiny smoke shape {QUICK_SHAPE}")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.min_sample_ms is not None and args.min_sample_ms < 0:
        parser.error(f"--min-sample-ms must be >= 0, got {args.min_sample_ms}")
    if args.shapes is None:
        args.shapes = [QUICK_SHAPE] if args.quick else list(DEFAULT_SHAPES)
    elif args.quick:
        parser.error("--quick and --shapes are exclusive")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.matmul_precision is not None:
        jax.config.update("jax_default_matmul_precision", args.matmul_precision)
    platform = jax.default_backend()
    default_backend = routing.DEFAULT_BACKEND.get(platform, "indices")
    min_sample_ms = args.min_sample_ms
    if min_sample_ms is None:
        min_sample_ms = 0.0 if platform == "cpu" else 5.0
    started = time.perf_counter()
    results = [
        bench_shape(
            shape,
            args.capacity_factor,
            args.backends,
            args.repeats,
            min_sample_ms / 1e3,
            breakdown=args.breakdown,
            hlo_dir=args.dump_hlo,
            profile_dir=args.profile,
        )
        for shape in args.shapes
    ]
    table = format_table(results, default_backend)
    print(
        f"platform={platform} device={jax.devices()[0].device_kind} repeats={args.repeats} "
        f"min_sample_ms={min_sample_ms}"
    )
    print(table)

    record = {
        "benchmark": "routing",
        "description": "fwd+bwd of router -> top_k_routing -> dispatch -> expert MLP -> combine vs the "
        "expert MLP alone on [E, C, D] buffers (the bound); interleaved runs; times in seconds",
        "platform": platform,
        "repeats": args.repeats,
        "device_kind": jax.devices()[0].device_kind,
        "min_sample_ms": min_sample_ms,
        "matmul_precision": args.matmul_precision,
        "capacity_factor": args.capacity_factor,
        "backends": list(args.backends),
        "current_default_backend": default_backend,
        "shapes": [r["shape"] for r in results],
        "results": results,
        "fastest_backend": {platform: {r["name"]: r["fastest_backend"] for r in results}},
        "targets": {
            r["name"]: {
                "target_ratio": r["target_ratio"],
                "default_backend_ratios": {
                    v: r["variants"][f"{default_backend}/{v}"]["ratio_to_bound"]
                    for v in ("vanilla", "bpr")
                    if f"{default_backend}/{v}" in r["variants"]
                },
            }
            for r in results
        },
        "table": table,
    }
    return write_record(args.out, record, started)


if __name__ == "__main__":
    main()

"""Shared by the benchmark scripts: interleaved timing rounds, their summary statistics, the JSON record."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np


def calls_per_sample(programs: Mapping[str, Callable[[], object]], min_sample_s: float) -> dict[str, int]:
    """How many back-to-back calls of each program one timed sample holds, so that a sample lasts at least
    ``min_sample_s`` (1 when that is 0). On an accelerator a call of a few hundred microseconds is comparable
    to the host's dispatch and synchronisation cost; several calls per sample, blocked once at the end, let
    the device run them back to back, so that cost is paid once per sample instead of once per call.
    Programs are warmed up (compiled and run once) here."""
    calls = {}
    for name, program in programs.items():
        jax.block_until_ready(program())
        if min_sample_s <= 0:
            calls[name] = 1
            continue
        single = []
        for _ in range(3):
            start = time.perf_counter()
            jax.block_until_ready(program())
            single.append(time.perf_counter() - start)
        calls[name] = max(1, int(np.ceil(min_sample_s / max(min(single), 1e-7))))
    return calls


def time_interleaved(
    programs: Mapping[str, Callable[[], object]], repeats: int, calls: Mapping[str, int] | None = None
) -> dict[str, list[float]]:
    """Warm up every program once, then ``repeats`` round-robin rounds (rotating the order each round, so no
    program always runs first or right after the same neighbour). A sample of program p is ``calls[p]``
    back-to-back calls (default 1) blocked once at the end. Returns seconds per call, per program."""
    names = list(programs)
    calls = {name: 1 for name in names} if calls is None else dict(calls)
    for name in names:
        jax.block_until_ready(programs[name]())
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            program, n = programs[name], calls[name]
            start = time.perf_counter()
            out = None
            for _ in range(n):
                out = program()
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - start) / n)
    return times


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, IQR, min and mean of timing samples (seconds)."""
    q25, q50, q75 = np.percentile(np.asarray(samples, dtype=np.float64), [25, 50, 75])
    return {
        "median_s": float(q50),
        "q25_s": float(q25),
        "q75_s": float(q75),
        "iqr_s": float(q75 - q25),
        "min_s": float(min(samples)),
        "mean_s": float(statistics.fmean(samples)),
    }


def write_record(out: str | Path, record: dict[str, Any], started: float) -> dict[str, Any]:
    """Add the wall time since ``started`` (``time.perf_counter()``) and the provenance to ``record``, write
    it atomically as JSON to ``out``, say so, and return it."""
    from sparse_experts.atomic import write_json_atomic
    from sparse_experts.workbook import session

    record["wall_time_s"] = round(time.perf_counter() - started, 3)
    record["provenance"] = session.provenance()
    write_json_atomic(Path(out), record)
    print(f"wrote {out}")
    return record

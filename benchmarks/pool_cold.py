"""Notebook 05's pool trained from an empty artifact cache: how long it takes, per member and in total.

Point ``SPARSE_EXPERTS_DATA_DIR`` at a folder whose ``cache/`` is empty (link ``tfds/`` to the generated
data so that only training is timed), then:

    SPARSE_EXPERTS_DATA_DIR=/tmp/pooldata .venv/bin/python benchmarks/pool_cold.py            # cpu, ~25 min
    SPARSE_EXPERTS_DATA_DIR=/tmp/pooldata .venv/bin/python benchmarks/pool_cold.py --preset smoke

Members that differ only in their seed train side by side (``workbook.pool.train_pool``). The JSON (default
``benchmarks/results/pool_cold_<preset>.json``) holds the total wall time and, per member, its upstream test
accuracy, its training seconds and whether it was trained now (a member found in the cache is not timed).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared _timing module
from _timing import write_record  # noqa: E402

from sparse_experts import paths
from sparse_experts.workbook import cache, pool, presets, zoo


def _row(member: pool.Member, trained: cache.Trained) -> dict[str, Any]:
    metrics = trained.metrics
    return {"kind": member.kind, "test_accuracy": metrics["test"]["accuracy"],
            "train_seconds": metrics["train_seconds"], "trained_now": trained.trained_now}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu", choices=presets.PRESET_NAMES, help="preset (default cpu)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    out = args.out or paths.repo_root() / "benchmarks" / "results" / f"pool_cold_{args.preset}.json"
    started = time.perf_counter()
    params = zoo.models_of_run(Path("/nonexistent"), args.preset, 0).params  # the preset's 02 recipe
    members = pool.members(presets.resolve("05_ensembles", args.preset).members, params)
    trained = pool.train_pool(members, progress=False)
    record = {
        "benchmark": "pool_cold",
        "preset": args.preset,
        "cache": str(cache.cache_dir()),
        "members": {m.name: _row(m, trained[m.name]) for m in members},
        "trained_now": sum(t.trained_now for t in trained.values()),
    }
    return write_record(out, record, started)


if __name__ == "__main__":
    main()

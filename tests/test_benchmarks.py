"""Smoke test of the benchmark scripts: they run on a tiny shape and write well-formed JSON.

No wall-clock assertions: timings on shared machines are noise; only their presence and sign are checked.
"""

from __future__ import annotations

import importlib.util
import json

from sparse_experts import paths, routing


def _load_routing_benchmark():
    path = paths.repo_root() / "benchmarks" / "routing.py"
    spec = importlib.util.spec_from_file_location("routing_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_routing_benchmark_quick(tmp_path, capsys):
    bench = _load_routing_benchmark()
    out = tmp_path / "bench" / "routing.json"
    returned = bench.main(["--quick", "--repeats", "2", "--out", str(out)])

    assert "x bound" in capsys.readouterr().out  # the table was printed
    record = json.loads(out.read_text())
    assert record["repeats"] == 2 and record["results"] == json.loads(json.dumps(returned["results"]))
    for key in ("platform", "shapes", "results", "fastest_backend", "targets", "table", "provenance"):
        assert key in record
    assert {"packages", "git", "devices"} <= set(record["provenance"])

    (result,) = record["results"]
    s, e, k, d, h = bench.QUICK_SHAPE
    assert result["shape"] == {
        "S": s,
        "E": e,
        "K": k,
        "D": d,
        "H": h,
        "C": routing.capacity(s, e, k, bench.CAPACITY_FACTOR),
        "capacity_factor": bench.CAPACITY_FACTOR,
    }
    expected = {bench.BOUND} | {f"{b}/{v}" for b in routing.BACKENDS for v in ("vanilla", "bpr")}
    assert set(result["variants"]) == expected
    for stats in result["variants"].values():
        assert len(stats["samples_s"]) == 2 and all(t > 0 for t in stats["samples_s"])
        assert stats["median_s"] > 0 and stats["iqr_s"] >= 0 and stats["ratio_to_bound"] > 0
        assert stats["paired_ratio_median"] > 0 and stats["paired_ratio_iqr"] >= 0
        assert set(stats["memory_bytes"]) == {"temp", "argument", "output", "total"}
    assert result["variants"][bench.BOUND]["ratio_to_bound"] == 1.0
    fastest = record["fastest_backend"][record["platform"]][result["name"]]
    assert set(fastest) == {"vanilla", "bpr", "overall"} and set(fastest.values()) <= set(routing.BACKENDS)

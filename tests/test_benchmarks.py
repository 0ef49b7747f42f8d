"""Smoke test of the benchmark scripts: they run on a tiny shape and write well-formed JSON.

No wall-clock assertions: timings on shared machines are noise; only their presence and sign are checked.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from sparse_experts import paths, routing


def _load_benchmark(name: str):
    """Import ``benchmarks/<name>.py`` as a module (the scripts are not a package)."""
    path = paths.repo_root() / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_routing_benchmark_quick(tmp_path, capsys):
    bench = _load_benchmark("routing")
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


def test_train_step_benchmark_quick(tmp_path, capsys):
    bench = _load_benchmark("train_step")
    out = tmp_path / "bench" / "train_step.json"
    returned = bench.main(["--quick", "--repeats", "2", "--out", str(out)])

    assert "MFU" in capsys.readouterr().out  # the table was printed
    record = json.loads(out.read_text())
    assert record["repeats"] == 2 and record["results"] == json.loads(json.dumps(returned["results"]))
    for key in ("platform", "results", "targets", "table", "provenance"):
        assert key in record
    assert {"packages", "git", "devices"} <= set(record["provenance"])

    (result,) = record["results"]
    assert set(result["variants"]) == {"dense/step", "moe_k1/step", "moe_k2/step", bench.PEAK}
    assert set(result["models"]) == {"dense", "moe_k1", "moe_k2"}
    assert result["models"]["dense"]["capacity_per_group"] is None
    capacities = [result["models"][v]["capacity_per_group"] for v in ("moe_k1", "moe_k2")]
    assert 0 < capacities[0] < capacities[1]
    assert result["peak_flops_per_s"] > 0
    for name, stats in result["variants"].items():
        assert len(stats["samples_s"]) == 2 and all(t > 0 for t in stats["samples_s"])
        assert stats["median_s"] > 0 and stats["iqr_s"] >= 0 and stats["flops"] > 0
        if name != bench.PEAK:
            assert stats["mfu"] > 0 and stats["ratio_to_dense_step"] > 0 and stats["paired_ratio_iqr"] >= 0
    assert result["variants"]["dense/step"]["ratio_to_dense_step"] == 1.0
    # k=2 fills about twice the expert slots of k=1; the dense model has none.
    flops = {v: m["step_flops"] for v, m in result["models"].items()}
    assert flops["dense"] < flops["moe_k1"] < flops["moe_k2"]
    assert set(result["targets"]) == {"moe_k1_ratio"}
    assert isinstance(result["targets"]["moe_k1_ratio"]["met"], bool)


def test_recipe_seeds_benchmark_on_smoke(tmp_path, capsys):
    """benchmarks/recipe_seeds.py on the smoke preset with two seeds: the preset and a changed model field,
    each trained into a cache folder of its own, with per-seed accuracies, their spread and the paired gap;
    bad recipes fail before anything trains."""
    bench = _load_benchmark("recipe_seeds")
    assert bench.parse_recipe("learning_rate=0.002,adam_b2=0.95,model.posemb=sincos2d,dataset=digits") == (
        {"learning_rate": 0.002, "adam_b2": 0.95, "dataset": "digits"},
        {"posemb": "sincos2d"},
    )
    out, root = tmp_path / "recipes.json", tmp_path / "cache"
    recipes = ["seeds=2", "seeds=2,model.posemb=sincos2d"]
    argv = ["--preset", "smoke", "--cache", str(root), "--workers", "1", "--out", str(out)]
    bench.main([*argv, *(x for r in recipes for x in ("--recipe", r))])
    assert "2 SE of the gap" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert [r["recipe"] for r in record["records"]] == recipes and "provenance" in record
    plain, sincos = record["records"]
    for r in (plain, sincos):
        for name in ("dense", "vmoe_every2_k2"):
            assert r[name]["seeds"] == [0, 1] and len(r[name]["validation_curves"]) == 2
            assert np.isclose(r[name]["mean"], np.mean(r[name]["test_accuracy"]))
        assert r["gap"]["gap_two_se"] > 0
    assert plain["dense"]["test_accuracy"] != sincos["dense"]["test_accuracy"]  # another model was trained
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 8  # 2 recipes x 2 models x 2 seeds
    for bad, message in (("widht=3", "widht"), ("model.posemb=polar", "posemb")):
        with pytest.raises((ValueError, TypeError), match=message):
            bench.main([*argv, "--recipe", bad])

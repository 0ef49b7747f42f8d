""".ci/gpu (the GPU CI) checked on the CPU: its steps, its stop at the first failure, its exit codes. The
real thing needs a GPU; here GPU_CI_REQUIRE_GPU=0 and a smoke run of one notebook stand in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sparse_experts import paths

SCRIPT = paths.repo_root() / ".ci" / "gpu"


def run_ci(tmp_path, **settings) -> subprocess.CompletedProcess:
    env = {**os.environ, "PY": sys.executable, "GPU_CI_OUT": str(tmp_path / "ci"), **settings}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)


def test_dry_run_lists_the_gpu_tests_then_notebooks_00_to_04_under_gpu_embedded(tmp_path):
    done = run_ci(tmp_path, GPU_CI_DRY="1")
    assert done.returncode == 0, done.stderr
    steps = [line for line in done.stdout.splitlines() if line.startswith("== gpu-ci: ")]
    assert [s.split(":")[1].strip() for s in steps] == ["environment", "tests", "notebooks"]
    for name in (
        "test_routing.py",
        "test_routing_pallas.py",
        "test_moe.py",
        "test_trainer.py",
        "test_sharding.py",
    ):
        assert name in steps[1]
    assert "-m sparse_experts.workbook run --preset gpu_embedded" in steps[2]
    assert "--only 00 --only 01 --only 02 --only 03 --only 04" in steps[2]
    assert done.stdout.splitlines()[-1] == "gpu-ci: dry run (GPU_CI_DRY=1): nothing ran"
    assert not (tmp_path / "ci").exists()
    for skipped, kept in (("GPU_CI_TESTS", "notebooks"), ("GPU_CI_NOTEBOOKS", "tests")):  # two shorter calls
        done = run_ci(tmp_path, GPU_CI_DRY="1", **{skipped: "none"})
        steps = [
            line.split(":")[1].strip() for line in done.stdout.splitlines() if line.startswith("== gpu-ci")
        ]
        assert done.returncode == 0 and steps == ["environment", kept], (skipped, steps)


def test_refuses_a_machine_without_gpu_unless_told(tmp_path):
    done = run_ci(tmp_path, GPU_CI_TESTS="tests/test_gpu_wheels.py")
    assert done.returncode == 1
    assert "no GPU: jax default backend is cpu" in done.stdout
    assert "FAILED at environment" in done.stdout and "== gpu-ci: tests" not in done.stdout


def test_a_failing_test_stops_before_the_notebooks(tmp_path):
    failing = tmp_path / "test_fails.py"
    failing.write_text("def test_fails():\n    assert 1 == 2\n")
    done = run_ci(tmp_path, GPU_CI_REQUIRE_GPU="0", GPU_CI_TESTS=str(failing))
    assert done.returncode == 1
    assert "gpu-ci: FAILED at tests" in done.stdout and "== gpu-ci: notebooks" not in done.stdout
    assert "1 failed" in (tmp_path / "ci" / "tests.log").read_text()


@pytest.mark.notebooks
def test_runs_tests_then_notebooks_and_exits_zero(tmp_path):
    """The whole path on the CPU: one fast test file, then notebook 00 under smoke through the runner."""
    done = run_ci(
        tmp_path,
        GPU_CI_REQUIRE_GPU="0",
        GPU_CI_TESTS="tests/test_gpu_wheels.py",
        GPU_CI_PRESET="smoke",
        GPU_CI_NOTEBOOKS="00",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.splitlines()[-1].startswith("gpu-ci: passed: tests (tests/test_gpu_wheels.py)")
    out = tmp_path / "ci" / "smoke"
    assert (
        (out / "00_tour.ipynb").exists() and (out / "00_tour.json").exists() and (out / "index.html").exists()
    )
    assert "4 passed" in (tmp_path / "ci" / "tests.log").read_text()

"""The same V-MoE training on several processes (sparse_experts.workbook.scale_out, started by
sparse_experts.parallel.launch): 2 processes x 4 devices equals 1 process x 8 devices; the lowered step holds
the all_to_all over the expert axis, across processes; checkpoints written by 2 processes restore on 1 and
the reverse; a killed worker and a killed coordinator make the other process exit within 60 s, the launcher
names the dead one, and a restart resumes from the last complete checkpoint (never a half-written one) and
ends where the uninterrupted run ends.

Six launches, shared by every test through one module fixture (about 2.5 minutes on 2 cores): every process
they start has ended when the fixture returns (the launcher's wait kills what is left).
Run (experts E=8 over mesh {"expert": 8}, batch B=32, 6 steps, checkpoints every 3):

- ``one``: 1 process x 8 devices, checkpoints at 3 and 6: the reference;
- ``two``: 2 processes x 4 devices from scratch;
- ``worker_killed``: 2 x 4, process 1 killed (SIGKILL) once it reached step 4 (after checkpoint 3); then two
  half-written checkpoints are planted (orbax's temporary folder of step 6, a folder 5 with part of a state
  and no metadata) and ``two_to_one`` restarts on 1 x 8;
- ``coordinator_killed``: 2 x 4 starting from ``one``'s checkpoint 3 (written by 1 process), process 0
  killed at step 4; ``one_to_two`` restarts on 2 x 4.
"""

from __future__ import annotations

import dataclasses
import re
import shutil

import pytest

from sparse_experts import models, train
from sparse_experts.workbook import scale_out

LOSS_TOLERANCE = 1e-5  # per-step losses (about 1.1 here)
# Parameters (largest about 1.0): measured differences 2e-5 here, 7e-5 on digits (notebook 07 under smoke).
# Adam's normalised updates magnify the last-bit differences of gradients summed in another order, so the
# bound is a sixth of one step's largest update (learning rate 3e-3), far below any real divergence.
PARAM_TOLERANCE = 5e-4
FAULT_SECONDS = 60


CACHE = {}  # the launches' environment: one persistent compilation cache for the module


def _run(spec, processes, devices):
    result = scale_out.launch_run(spec, processes, devices, output=None, env=CACHE, timeout=600)
    assert result.ok, result.report() + "\n" + "\n".join(result.output[0][-30:])
    return scale_out.load_result(spec.out_dir)


def _killed(spec, processes, devices, victim):
    job = scale_out.launch_run(spec, processes, devices, output=None, env=CACHE, start_only=True)
    try:
        job.wait_for_line(r"^step 4$", process=victim, timeout=400)
        job.kill(victim)
    finally:
        result = job.wait(timeout=600, grace_seconds=FAULT_SECONDS + 30)
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale_out")
    CACHE.update(
        JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"
    )
    base = scale_out.RunSpec(out_dir="", steps=6, checkpoint_every=3)

    def spec(name):
        return dataclasses.replace(base, out_dir=str(root / name), checkpoint_dir=str(root / name / "ck"))

    out = {"one": _run(spec("one"), 1, 8), "two": _run(spec("two"), 2, 4)}
    out["worker_killed"] = _killed(spec("worker"), 2, 4, victim=1)
    ck = root / "worker" / "ck"
    out["steps_after_worker_killed"] = train.Checkpoints(ck).all_steps()
    (ck / "6.orbax-checkpoint-tmp-1764460000000000").mkdir()  # a save cut short: orbax's temporary folder
    (ck / "6.orbax-checkpoint-tmp-1764460000000000" / "_CHECKPOINT_METADATA").write_text("{")
    (ck / "5" / "state").mkdir(parents=True)  # a step folder cut short (no metadata, no history)
    (ck / "5" / "state" / "d").write_text("partial")
    out["steps_listed_with_partial_folders"] = train.Checkpoints(ck).all_steps()
    out["two_to_one"] = _run(dataclasses.replace(spec("worker"), out_dir=str(root / "two_to_one")), 1, 8)
    shutil.copytree(root / "one" / "ck" / "3", root / "coordinator" / "ck" / "3")
    out["coordinator_killed"] = _killed(spec("coordinator"), 2, 4, victim=0)
    out["one_to_two"] = _run(dataclasses.replace(spec("coordinator"), out_dir=str(root / "one_to_two")), 2, 4)
    return out


def test_two_processes_train_as_one(runs):
    one, two = runs["one"], runs["two"]
    assert (one[0]["processes"], one[0]["local_devices"]) == (1, 8)
    assert (two[0]["processes"], two[0]["local_devices"], two[0]["devices"]) == (2, 4, 8)
    gap = scale_out.compare(one, two)
    assert gap["steps"] == 6 and gap["loss"] < LOSS_TOLERANCE and gap["params"] < PARAM_TOLERANCE, gap
    assert gap["param_scale"] > 0.1  # real parameters, not zeros
    loss = [m["loss"] for m in one[0]["history"]["metrics"]]
    assert loss[-1] < loss[0] - 0.03  # it learns


def test_experts_and_batch_rows_are_split_over_processes(runs):
    result = runs["two"][0]
    assert [(r["expert"], r["process"]) for r in result["expert_map"]] == [(e, e // 4) for e in range(8)]
    assert len({r["device"] for r in result["expert_map"]}) == 8
    rows = {(r["process"], r["start"], r["stop"]) for r in result["batch_map"]}
    assert {(p, start // 16) for p, start, _ in rows} == {
        (0, 0),
        (1, 1),
    }  # process p holds rows [16p, 16p+16)


def test_lowered_step_sends_tokens_with_all_to_all_across_processes(runs):
    two, one = runs["two"][0]["all_to_all"], runs["one"][0]["all_to_all"]
    # one MoE layer: there and back in the forward pass, and both again in the backward pass
    assert two["count"] == 4 and all(op["group_size"] == 8 for op in two["ops"])
    assert two["bytes_between_processes"] > 0 and one["bytes_between_processes"] == 0
    # each device keeps 1/8 of what it sends; half of its 7 peers live in the other process
    per_device = sum(op["bytes_per_device"] for op in two["ops"])
    assert two["bytes_between_devices"] == pytest.approx(8 * per_device * 7 / 8)
    assert two["bytes_between_processes"] == pytest.approx(8 * per_device * 4 / 8)
    tokens = runs["two"][0]["tokens"]
    for layer in tokens.values():
        parts = layer["same_device"] + layer["other_device_same_process"] + layer["other_process"]
        assert parts == layer["routed"] > 0 and layer["other_process"] > 0
    assert all(layer["other_process"] == 0 for layer in runs["one"][0]["tokens"].values())


def test_checkpoint_of_two_processes_resumes_on_one(runs):
    result, _ = runs["two_to_one"]
    assert (result["processes"], result["start_step"], result["final_step"]) == (1, 3, 6)
    gap = scale_out.compare(runs["one"], runs["two_to_one"])
    assert gap["loss"] < LOSS_TOLERANCE and gap["params"] < PARAM_TOLERANCE, gap


def test_checkpoint_of_one_process_resumes_on_two(runs):
    result, _ = runs["one_to_two"]
    assert (result["processes"], result["start_step"], result["final_step"]) == (2, 3, 6)
    gap = scale_out.compare(runs["one"], runs["one_to_two"])
    assert gap["loss"] < LOSS_TOLERANCE and gap["params"] < PARAM_TOLERANCE, gap


@pytest.mark.parametrize("case, victim", [("worker_killed", 1), ("coordinator_killed", 0)])
def test_a_killed_process_ends_the_run_within_a_minute(runs, case, victim):
    result = runs[case]
    other = 1 - victim
    print(f"{case}:\n{result.report()}")  # the timings, shown with pytest -s
    assert result.first_failure == victim and result.returncodes[victim] == -9, result.report()
    assert result.returncodes[other] != 0 and other not in result.ended_by_launcher, result.report()
    assert result.seconds_after_first_failure()[other] < FAULT_SECONDS, result.report()
    report = result.report()
    assert report.startswith(f"process {victim} failed first: killed by SIGKILL"), report
    # JAX's own error: the coordination service saw the peer die, or the collective's connection broke
    error = result.error_line(other) or ""
    assert re.search(r"JAX distributed service detected fatal errors|Gloo \w+ failed", error), (error, report)


def test_half_written_checkpoint_is_never_used(runs):
    assert runs["steps_after_worker_killed"] == [3]  # the kill came after checkpoint 3, before 6
    assert runs["steps_listed_with_partial_folders"] == [3]  # not the temporary 6, not the partial 5
    # the planted temporary folder of step 6 was ignored: the restart began at 3 and reached the reference
    assert runs["two_to_one"][0]["start_step"] == 3


def test_all_to_all_on_paper_equals_the_lowered_program(runs):
    """scale_out.all_to_all_bytes (the paper-scale estimate) against what the lowered step sends."""
    config = scale_out.RunSpec(out_dir="").vit_config()
    estimate = scale_out.all_to_all_bytes(config, 32, experts_axis=8)
    measured = runs["two"][0]["all_to_all"]
    assert estimate["ops"] == measured["count"]
    assert estimate["bytes_sent_per_device"] * 8 == pytest.approx(measured["bytes_between_devices"])


def test_notebook_tables_and_closing_note_from_the_runs(runs):
    """Notebook 07's tables and computed note (scale_out's functions) on this module's runs."""
    named = {"1x8": runs["one"], "2x4": runs["two"]}
    (equal,) = scale_out.equality_rows(named, "1x8")
    assert equal["run"] == "2x4" and equal["params"] < PARAM_TOLERANCE
    traffic = {row["run"]: row for row in scale_out.traffic_rows(named)}
    assert traffic["2x4"]["bytes_between_processes"] > 0 == traffic["1x8"]["bytes_between_processes"]
    assert all(row["median_step_seconds"] > 0 for row in scale_out.timing_rows(named))
    killed = runs["worker_killed"]
    fault = scale_out.fault_summary(
        {"killed_process": 1, "killed_at_step": 4, "returncodes": killed.returncodes,
         "report": killed.report(),
         "seconds_to_exit_after_kill": killed.seconds_after_first_failure(), "checkpoints_left": [3],
         "restart": runs["two_to_one"]},
        runs["one"],
    )  # fmt: skip
    assert fault["restart_resumed_from"] == 3 and fault["exits"][1] == "killed by SIGKILL"
    note = scale_out.closing_note(named, "1x8", "2x4", fault)
    moved = runs["two"][0]["all_to_all"]["bytes_between_processes"]
    assert "Run 2x4 (2 processes) against 1x8 after 6 steps" in note and f"{moved:,.0f} of them" in note
    assert "resumed from step 3" in note


def test_paper_scale_memory_of_vmoe_15b():
    """Notebook 07's paper-scale table on its default pod (1024 devices, batch 4096): V-MoE-15B's memory
    per device, its experts' share by hand, the assumptions that fit a TPUv3 core; ViT-22B unchanged."""
    paper = {row["model"]: row for row in scale_out.paper_rows(4096, 1024)}
    vmoe = paper["V-MoE-15B"]
    D, H, E, layers = 1664, 8192, 32, 16  # ViT-G width and MLP; 32 experts in every third of 48 layers
    expert = 2 * D * H + H + D  # wi, wo and their biases
    assert vmoe["mesh"] == "data=32 x expert=32" and vmoe["batch_size"] == 4096
    assert vmoe["expert_weights_gib_per_device"] * 2**30 == layers * expert * 4  # one of each layer, float32
    dense = vmoe["parameters"] - layers * E * expert  # replicated on every device
    # float32 weights + gradients + Adam's two moments: 16 bytes per parameter held, plus the activations
    plan = models.memory_plan(
        scale_out.paper_config("V-MoE-15B"), {"data": 32, "expert": 32}, 4096, remat=True
    )
    assert plan.params == 4 * (dense + layers * expert) and plan.total == 4 * plan.params + plan.activations
    assert vmoe["memory_gib_per_device"] == plan.total / 2**30
    # It does not fit a TPUv3 core, and the replicated dense weights alone (1.41B parameters) explain why.
    replicated_gib = 16 * dense / 2**30
    assert vmoe["memory_gib_per_device"] > replicated_gib > scale_out.TPU_V3_CORE_GIB
    assert paper["ViT-22B"]["memory_gib_per_device"] == 6_961_235_360 / 2**30  # as before MoE sizing
    options = {row["assumption"]: row for row in scale_out.vmoe_memory_rows(4096, 1024)}
    assert options["float32, Adam, remat (the table's)"]["total"] == vmoe["memory_gib_per_device"]
    fitting = [name for name, row in options.items() if row["fits 16 GiB"]]
    assert fitting == [
        "bfloat16 parameters, moments and compute",
        "dense weights split over 'data' too (FSDP)",
    ]
    note = scale_out.paper_note(list(paper.values()), list(options.values()))
    assert f"needs {vmoe['memory_gib_per_device']:.1f} GiB per device" in note and "more than" in note
    labels = scale_out.headline_labels("1x8", "2x4", 6, list(paper.values()))
    assert "data=32 x expert=32, batch 4096, float32, Adam, remat" in labels["vmoe15b_memory_gib_per_device"]

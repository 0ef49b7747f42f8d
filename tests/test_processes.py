"""Multi-process start-up (sparse_experts.parallel.processes), the one-machine launcher
(sparse_experts.parallel.launch), a process's share of a batch, and the loader's rows= share.

These run in seconds: the launcher is checked on tiny scripts that do not import JAX. The real
multi-process trainings (2 processes x 4 devices) are in tests/test_scale_out.py.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest

from sparse_experts import datasets, parallel
from sparse_experts.parallel import launch, processes
from sparse_experts.workbook import scale_out

ENV = {processes.COORDINATOR_ENV: "10.0.0.1:8476", processes.NUM_PROCESSES_ENV: "4",
       processes.PROCESS_ID_ENV: "2"}  # fmt: skip


def test_settings_come_from_arguments_then_environment():
    assert processes.settings(environ={}) is None  # a single process
    assert processes.settings(environ=ENV) == ("10.0.0.1:8476", 4, 2)
    assert processes.settings(process_id=3, environ=ENV) == ("10.0.0.1:8476", 4, 3)
    assert processes.settings("127.0.0.1:1234", 2, 0, environ={}) == ("127.0.0.1:1234", 2, 0)


@pytest.mark.parametrize(
    "kwargs, env, message",
    [
        ({}, {processes.NUM_PROCESSES_ENV: "2"}, "JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID not given"),
        (
            {},
            {**ENV, processes.PROCESS_ID_ENV: "4"},
            r"JAX_PROCESS_ID=4 is not allowed with JAX_NUM_PROCESSES=4",
        ),
        ({}, {**ENV, processes.COORDINATOR_ENV: "nohost"}, "'nohost' is not an address; expected host:port"),
        ({}, {**ENV, processes.NUM_PROCESSES_ENV: "two"}, "JAX_NUM_PROCESSES='two' is not an integer"),
        ({"num_processes": 0}, ENV, "JAX_NUM_PROCESSES=0 is not allowed; expected an integer >= 1"),
    ],
)
def test_bad_settings_are_named(kwargs, env, message):
    with pytest.raises(ValueError, match=message):
        processes.settings(**kwargs, environ=env)


def test_initialize_without_settings_is_one_process(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    info = parallel.initialize()
    assert (info.process_id, info.num_processes) == (0, 1) and info.devices >= 1
    with pytest.raises(ValueError, match="heartbeat_timeout_seconds=0"):
        parallel.initialize(heartbeat_timeout_seconds=0)


def test_plan_is_checked_before_anything_starts():
    assert launch.check_plan(2, 4, {"data": 2, "expert": 4}, 32) == {"data": 2, "expert": 4, "model": 1}
    assert launch.check_plan(2, 4, {"expert": -1}, 16)["expert"] == 8
    with pytest.raises(ValueError, match="has 6 devices but there are 8"):
        launch.check_plan(2, 4, {"data": 2, "expert": 3})
    with pytest.raises(ValueError, match="batch_size=33 is not divisible by processes=2"):
        launch.check_plan(2, 4, {"expert": 8}, 33)
    with pytest.raises(ValueError, match="batch_size=12 is not divisible by the 8 data shards"):
        launch.check_plan(2, 4, {"expert": 8}, 12)
    with pytest.raises(ValueError, match="processes=0 is not allowed"):
        launch.check_plan(0, 4)


def test_command_line_refuses_a_bad_plan_without_starting(capsys):
    code = launch.main(["--processes", "2", "--devices-per-process", "4", "--mesh", "data=3", "--",
                        "no.such.module"])  # fmt: skip
    assert code == 2
    assert "mesh shape {'data': 3} has 3 devices but there are 8" in capsys.readouterr().err


SCRIPT = """
import os, sys, time
i = int(os.environ["JAX_PROCESS_ID"])
print("process", i, "of", os.environ["JAX_NUM_PROCESSES"], "at", os.environ["JAX_COORDINATOR_ADDRESS"],
      os.environ["XLA_FLAGS"].count("--xla_force_host_platform_device_count=3"), flush=True)
if sys.argv[1] == "fail" and i == 1:
    print("RuntimeError: process 1 gives up", flush=True)
    sys.exit(3)
time.sleep(float(sys.argv[2]))
"""


def test_launcher_streams_prefixed_output_and_returns_each_exit_code(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(SCRIPT)
    lines = []
    result = launch.launch(str(script), ["ok", "0"], processes=2, devices_per_process=3, output=lines.append,
                           env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})  # fmt: skip
    assert result.ok and result.returncodes == [0, 0]
    assert any(line.startswith("[p1] process 1 of 2 at 127.0.0.1:") and line.endswith(" 1") for line in lines)
    assert result.output[0][0].startswith("process 0 of 2")


def test_a_failed_process_is_named_and_a_lingering_one_ended(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(SCRIPT)
    result = launch.launch(str(script), ["fail", "60"], processes=2, devices_per_process=1, output=None,
                           grace_seconds=1)  # fmt: skip
    assert result.returncodes[1] == 3 and result.first_failure == 1
    assert result.ended_by_launcher == [0] and result.returncodes[0] == -9
    report = result.report()
    assert report.splitlines()[0].startswith("process 1 failed first: exit 3")
    assert "RuntimeError: process 1 gives up" in report and "ended by the launcher" in report
    assert result.seconds_after_first_failure()[0] < 30


def test_the_telling_error_line_is_quoted():
    output = ["F1129 client.h:80] Terminating process because the JAX distributed service detected errors.",
              "Additional GRPC error information from remote target while calling /PollForError:",
              "    @     0x7f86f06ecd5b  (unknown)"]  # fmt: skip
    result = launch.LaunchResult([-6, -9], [3.0, 1.0], [output, ["ValueError: bad", "x error: y"]], 1)
    assert result.error_line(0).startswith("F1129 client.h:80] Terminating process because")
    assert result.error_line(1) == "ValueError: bad"


def test_process_rows_and_batch_on_one_process():
    mesh = parallel.make_mesh()
    assert parallel.process_rows(mesh, 12) == (0, 12)
    placed = parallel.shard_batch({"label": np.arange(4)}, mesh)
    np.testing.assert_array_equal(parallel.to_host(placed)["label"], np.arange(4))
    with pytest.raises(ValueError, match="batch_size=0 must be a positive integer"):
        parallel.process_rows(mesh, 0)


def test_a_process_share_is_those_rows_of_the_global_batch(tmp_path):
    datasets.prepare("digits", data_dir=tmp_path)
    whole = datasets.batch_at("digits", "train", 32, seed=3, step=5, augment=True, data_dir=tmp_path)
    share = datasets.batch_at("digits", "train", 32, seed=3, step=5, augment=True, data_dir=tmp_path,
                              rows=(8, 24))  # fmt: skip
    for name in whole:
        np.testing.assert_array_equal(share[name], whole[name][8:24])
    with pytest.raises(ValueError, match=r"rows=\(8, 40\) must be \(start, stop\)"):
        datasets.batch_at("digits", "train", 32, data_dir=tmp_path, rows=(8, 40))
    toy = scale_out.toy_batch(1, 2, 16)
    np.testing.assert_array_equal(scale_out.toy_batch(1, 2, 16, rows=(4, 12))["image"], toy["image"][4:12])


def test_all_to_all_volume_by_hand():
    """Two all_to_all groups of 4 devices; devices 0, 1, 4, 5 in process 0 and 2, 3, 6, 7 in process 1. A
    [1, 8, 3, 16] float32 tensor is 1,536 bytes per device, cut in 4 chunks of 384: each device sends 3
    chunks (1,152 bytes), 2 of them (768) to the other process: 8 x 1,152 = 9,216 and 8 x 768 = 6,144."""
    text = ('%1 = "stablehlo.all_to_all"(%arg2) <{channel_handle = #stablehlo.channel_handle<handle = 1, '
            'type = 1>, concat_dimension = 0 : i64, replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : '
            'tensor<2x4xi64>, split_count = 4 : i64, split_dimension = 1 : i64}> : (tensor<1x8x3x16xf32>) '
            '-> tensor<4x2x3x16xf32>')  # fmt: skip
    devices = [SimpleNamespace(process_index=p) for p in (0, 0, 1, 1, 0, 0, 1, 1)]
    mesh = SimpleNamespace(devices=np.array(devices, dtype=object))
    volume = scale_out.all_to_all_volume(text, mesh)
    assert volume["count"] == 1 and volume["ops"][0]["bytes_per_device"] == 1536
    assert volume["bytes_between_devices"] == 9216 and volume["bytes_between_processes"] == 6144


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

"""Start N processes of one program on this machine, each with its own fake CPU devices, joined into one
multi-process JAX run over 127.0.0.1 (:mod:`.processes` reads the settings each one gets).

Command line::

    python -m sparse_experts.parallel.launch --processes 2 --devices-per-process 4 \\
        [--mesh expert=8] [--batch-size 32] -- <module or script.py> <its arguments>

From Python (a notebook): :func:`launch` runs to the end and returns a :class:`LaunchResult`; :func:`start`
returns the running :class:`Launch` (tests use it to kill a process mid-run). Each process gets
``XLA_FLAGS=--xla_force_host_platform_device_count=<devices per process>``, ``JAX_PLATFORMS=cpu`` and the
three settings of :mod:`.processes` (coordinator ``127.0.0.1:<a free port>``). Their output (stdout and
stderr) is streamed line by line with a ``[p<i>]`` prefix and kept. The plan (a mesh that does not fill the
devices, a batch the processes or data shards do not divide) is checked before anything starts.

When a process fails, the others are expected to fail on their own within JAX's heartbeat time-out (they
do: :mod:`.processes`); one still running ``grace_seconds`` later is killed by the launcher, and the report
says so. The result names the process that failed first and how.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sparse_experts.parallel.mesh import _mesh_sizes, num_data_shards
from sparse_experts.parallel.processes import COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV

GRACE_SECONDS = 60  # after a process fails, how long the others get to end before the launcher kills them
_DEVICE_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S+")
# Lines worth quoting from a failed process's output, best first: JAX's fatal error, a Python exception,
# anything else that reads like an error.
_ERROR_LINES = (
    re.compile(r"Terminating process because"),
    re.compile(r"^[\w.]*(Error|Exception): "),
    re.compile(r"unhealthy|Error:|Exception:|error:|Killed"),
)


def check_plan(
    processes: int,
    devices_per_process: int,
    mesh: Mapping[str, int] | None = None,
    batch_size: int | None = None,
) -> dict[str, int] | None:
    """Check a launch before anything starts: ``processes`` x ``devices_per_process`` devices, a ``mesh``
    shape ({axis: size}, one size may be -1) that fills them exactly, a global ``batch_size`` divisible by
    the processes and by the mesh's data shards. Returns the mesh's full sizes (None without a mesh)."""
    for name, value in (("processes", processes), ("devices_per_process", devices_per_process)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is not allowed; expected a positive integer")
    devices = processes * devices_per_process
    sizes = None if mesh is None else _mesh_sizes(mesh, devices)
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is not allowed; expected a positive integer")
        if batch_size % processes:
            raise ValueError(
                f"batch_size={batch_size} is not divisible by processes={processes}: each process reads an "
                f"equal share of every batch; use a multiple of {processes}"
            )
        shards = 1 if sizes is None else num_data_shards(sizes)
        if batch_size % shards:
            raise ValueError(f"batch_size={batch_size} is not divisible by the {shards} data shards of mesh "
                             f"{sizes}; use a multiple of {math.lcm(shards, processes)}")  # fmt: skip
    return sizes


def parse_mesh(text: str) -> dict[str, int]:
    """``"data=2,expert=4"`` -> {"data": 2, "expert": 4} (the command line's ``--mesh``)."""
    shape = {}
    for part in filter(None, text.split(",")):
        name, _, size = part.partition("=")
        if not re.fullmatch(r"-?\d+", size.strip()):
            raise ValueError(f"--mesh {text!r}: {part!r} is not axis=size (e.g. data=2,expert=4)")
        shape[name.strip()] = int(size)
    return shape


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def describe_exit(code: int | None) -> str:
    """0 -> "exit 0"; -9 -> "killed by SIGKILL"; None -> "still running"."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


@dataclass
class LaunchResult:
    """How a launch ended: per process its exit code (negative: the signal), seconds from the start to its
    end, and its output lines; ``first_failure``: the process that failed first (None: all exited 0);
    ``ended_by_launcher``: processes the launcher had to kill."""

    returncodes: list[int]
    exit_seconds: list[float]
    output: list[list[str]]
    first_failure: int | None = None
    ended_by_launcher: list[int] = field(default_factory=list)
    killed_on_request: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(code == 0 for code in self.returncodes)

    def error_line(self, process: int) -> str | None:
        """The line of ``process``'s output that says best why it failed: the last of JAX's fatal errors, else
        the last Python exception, else the last line that reads like an error."""
        for pattern in _ERROR_LINES:
            lines = [line for line in self.output[process] if pattern.search(line)]
            if lines:
                return lines[-1].strip()[:400]
        return None

    def seconds_after_first_failure(self) -> dict[int, float]:
        """How long after the first failed process ended each other process ended."""
        if self.first_failure is None:
            return {}
        t0 = self.exit_seconds[self.first_failure]
        return {i: t - t0 for i, t in enumerate(self.exit_seconds) if i != self.first_failure}

    def report(self) -> str:
        """One line per process, the first failure first."""
        if self.ok:
            return "; ".join(f"process {i}: exit 0 after {t:.1f} s" for i, t in enumerate(self.exit_seconds))
        order = [self.first_failure] + [i for i in range(len(self.returncodes)) if i != self.first_failure]
        lines = []
        for i in order:
            how = describe_exit(self.returncodes[i])
            t = self.exit_seconds[i]
            if i == self.first_failure:
                why = " (killed on request)" if i in self.killed_on_request else ""
                lines.append(f"process {i} failed first: {how} at {t:.1f} s{why}")
            else:
                after = t - self.exit_seconds[self.first_failure]
                by = ", ended by the launcher" if i in self.ended_by_launcher else ""
                lines.append(f"process {i}: {how} {after:.1f} s later{by}")
            if self.returncodes[i] != 0 and (error := self.error_line(i)):
                lines[-1] += f": {error}"
        return "\n".join(lines)


class Launch:
    """Running processes of one launch (see :func:`start`). Use as a context manager, or call :meth:`wait`:
    either way no process outlives it."""

    def __init__(
        self,
        command: Sequence[str],
        processes: int,
        devices_per_process: int,
        *,
        env: Mapping[str, str] | None = None,
        output: Callable[[str], Any] | None = print,
        cwd: str | None = None,
    ):
        self.num_processes = processes
        self.output: list[list[str]] = [[] for _ in range(processes)]
        self.exit_seconds: list[float | None] = [None] * processes
        self.killed_on_request: list[int] = []
        self._first_failure: int | None = None
        self._lock = threading.Condition()
        self._emit = output
        port = free_port()
        base = {**os.environ, **(env or {})}
        flags = _DEVICE_FLAG.sub("", base.get("XLA_FLAGS", "")).strip()
        base["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices_per_process}".strip()
        base.update({"JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", COORDINATOR_ENV: f"127.0.0.1:{port}",
                     NUM_PROCESSES_ENV: str(processes)})  # fmt: skip
        self.started = time.perf_counter()
        self.procs: list[subprocess.Popen] = []
        self._threads: list[threading.Thread] = []
        try:
            for i in range(processes):
                proc = subprocess.Popen(
                    list(command), env={**base, PROCESS_ID_ENV: str(i)}, cwd=cwd, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                )  # fmt: skip
                self.procs.append(proc)
                thread = threading.Thread(target=self._follow, args=(i, proc), daemon=True)
                thread.start()
                self._threads.append(thread)
        except BaseException:
            self.end_all()
            raise

    def _follow(self, i: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            line = line.rstrip("\n")
            with self._lock:
                self.output[i].append(line)
                self._lock.notify_all()
            if self._emit is not None:
                self._emit(f"[p{i}] {line}")
        code = proc.wait()
        with self._lock:
            self.exit_seconds[i] = time.perf_counter() - self.started
            if code != 0 and self._first_failure is None:
                self._first_failure = i
            self._lock.notify_all()

    def wait_for_line(self, pattern: str, process: int, timeout: float = 300) -> str:
        """Block until a line of ``process``'s output matches the regex ``pattern``; return it. Raises
        TimeoutError (or RuntimeError when the process ended first)."""
        regex = re.compile(pattern)
        deadline = time.perf_counter() + timeout
        seen = 0
        with self._lock:
            while True:
                for line in self.output[process][seen:]:
                    if regex.search(line):
                        return line
                seen = len(self.output[process])
                if self.exit_seconds[process] is not None:
                    how = describe_exit(self.procs[process].returncode)
                    raise RuntimeError(f"process {process} ended ({how}) before printing a line matching "
                                       f"{pattern!r}")  # fmt: skip
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise TimeoutError(
                        f"process {process} printed no line matching {pattern!r} in {timeout} s"
                    )
                self._lock.wait(min(left, 1.0))

    def kill(self, process: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default SIGKILL: no clean-up, as a crashed host) to ``process``."""
        self.killed_on_request.append(process)
        self.procs[process].send_signal(sig)

    def end_all(self) -> list[int]:
        """Kill every process still running; return their ids."""
        ended = []
        for i, proc in enumerate(self.procs):
            if proc.poll() is None:
                proc.kill()
                ended.append(i)
        for proc in self.procs:
            proc.wait()
        for thread in self._threads:
            thread.join(timeout=5)
        return ended

    def wait(self, timeout: float | None = None, grace_seconds: float = GRACE_SECONDS) -> LaunchResult:
        """Wait for every process to end (killing those still running ``grace_seconds`` after the first
        failure, or when ``timeout`` seconds have passed since the start); return a :class:`LaunchResult`."""
        ended: list[int] = []
        try:
            with self._lock:
                while any(t is None for t in self.exit_seconds):
                    now = time.perf_counter() - self.started
                    failed = self._first_failure
                    late = failed is not None and now > self.exit_seconds[failed] + grace_seconds
                    if late or (timeout is not None and now > timeout):
                        break
                    self._lock.wait(0.2)
        finally:
            ended = self.end_all()
        with self._lock:
            codes = [proc.returncode for proc in self.procs]
            first = self._first_failure
            if first is None and any(codes):
                first = next(i for i, code in enumerate(codes) if code)
            seconds = [t if t is not None else time.perf_counter() - self.started for t in self.exit_seconds]
            return LaunchResult(codes, seconds, [list(lines) for lines in self.output], first, ended,
                                list(self.killed_on_request))  # fmt: skip

    def __enter__(self) -> Launch:
        return self

    def __exit__(self, *exc) -> None:
        self.end_all()


def command_for(target: str, args: Sequence[str] = ()) -> list[str]:
    """``python -u -m <module> args`` or, for a path ending in .py, ``python -u <script> args``."""
    if target.endswith(".py"):
        return [sys.executable, "-u", target, *args]
    return [sys.executable, "-u", "-m", target, *args]


def start(
    target: str,
    args: Sequence[str] = (),
    *,
    processes: int = 2,
    devices_per_process: int = 4,
    mesh: Mapping[str, int] | None = None,
    batch_size: int | None = None,
    env: Mapping[str, str] | None = None,
    output: Callable[[str], Any] | None = print,
    cwd: str | None = None,
) -> Launch:
    """Check the plan (:func:`check_plan`), then start ``processes`` copies of ``target`` (a module, or a
    script ending in .py) with ``args``; return the running :class:`Launch`. ``output`` receives every line
    with its ``[p<i>]`` prefix (None: keep them only)."""
    check_plan(processes, devices_per_process, mesh, batch_size)
    return Launch(command_for(target, args), processes, devices_per_process, env=env, output=output, cwd=cwd)


def launch(
    target: str,
    args: Sequence[str] = (),
    *,
    processes: int = 2,
    devices_per_process: int = 4,
    mesh: Mapping[str, int] | None = None,
    batch_size: int | None = None,
    env: Mapping[str, str] | None = None,
    output: Callable[[str], Any] | None = print,
    timeout: float | None = None,
    grace_seconds: float = GRACE_SECONDS,
    cwd: str | None = None,
) -> LaunchResult:
    """:func:`start`, then wait for the end (:meth:`Launch.wait`)."""
    job = start(target, args, processes=processes, devices_per_process=devices_per_process, mesh=mesh,
                batch_size=batch_size, env=env, output=output, cwd=cwd)  # fmt: skip
    return job.wait(timeout=timeout, grace_seconds=grace_seconds)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        sys.exit("usage: python -m sparse_experts.parallel.launch --processes N --devices-per-process D "
                 "[--mesh data=2,expert=4] [--batch-size B] -- <module or script.py> [args...]")  # fmt: skip
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m sparse_experts.parallel.launch")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--devices-per-process", type=int, default=4)
    parser.add_argument("--mesh", type=parse_mesh, default=None, help="axis=size,... e.g. data=2,expert=4")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size, checked up front")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before every process is killed")
    parser.add_argument("--grace-seconds", type=float, default=GRACE_SECONDS)
    options = parser.parse_args(argv[:split])
    if split + 1 >= len(argv):
        parser.error("nothing to run after --")
    try:
        result = launch(argv[split + 1], argv[split + 2 :], processes=options.processes,
                        devices_per_process=options.devices_per_process, mesh=options.mesh,
                        batch_size=options.batch_size, timeout=options.timeout,
                        grace_seconds=options.grace_seconds)  # fmt: skip
    except ValueError as err:
        print(f"launch: {err}", file=sys.stderr)
        return 2
    print(result.report(), file=sys.stderr)
    if result.ok:
        return 0
    code = result.returncodes[result.first_failure]
    return code if code > 0 else 128 + (-code)


if __name__ == "__main__":
    sys.exit(main())

"""Several processes (hosts), one global mesh: start-up with JAX's own multi-process runtime.

Every process calls :func:`initialize` before any other JAX call. It wraps ``jax.distributed.initialize``
(the runtime TPU pods and multi-node GPU clusters use; on CPU the collectives run over gloo) and takes its
settings from arguments, else from the environment:

- ``JAX_COORDINATOR_ADDRESS``: ``host:port`` of process 0, reachable from every process (JAX reads it too);
- ``JAX_NUM_PROCESSES``: how many processes take part;
- ``JAX_PROCESS_ID``: this process, 0 .. num_processes - 1.

With none of them set (and no ``auto``), it is a single process and nothing is started. ``auto=True`` lets
JAX detect a managed cluster (Cloud TPU, Slurm, Open MPI) and fill all three.

Faults: JAX's coordination service watches every process by heartbeats. A process that stops sending them
for ``heartbeat_timeout_seconds`` is declared dead and every other process is terminated (SIGABRT, with the
message "Terminating process because the JAX distributed service detected fatal errors"); when the
coordinator (process 0) dies, the others fail at their next contact with it. JAX's defaults (100 s
heartbeat, 300 s shutdown) would leave survivors waiting for minutes; :func:`initialize` uses
:data:`HEARTBEAT_SECONDS` and :data:`SHUTDOWN_SECONDS`, so a dead peer ends a run within about 20 s here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import jax

COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"
HEARTBEAT_SECONDS = 15  # a process silent this long is declared dead (JAX's default: 100)
SHUTDOWN_SECONDS = 30  # how long a finishing process waits for the others at shutdown (JAX's default: 300)
INITIALIZATION_SECONDS = 120  # how long a process waits for all others to join (JAX's default: 300)
_ADDRESS = re.compile(r"^\[?[A-Za-z0-9_.:-]+\]?:\d{1,5}$")


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands: its id, how many there are, its local and all devices' counts."""

    process_id: int
    num_processes: int
    local_devices: int
    devices: int
    coordinator_address: str | None

    def describe(self) -> str:
        return (f"process {self.process_id} of {self.num_processes}: {self.local_devices} local devices of "
                f"{self.devices}")  # fmt: skip


def _int_setting(name: str, value: object, minimum: int) -> int:
    if isinstance(value, str):
        if not re.fullmatch(r"\s*\d+\s*", value):
            raise ValueError(f"{name}={value!r} is not an integer; expected an integer >= {minimum}")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed; expected an integer >= {minimum}")
    return value


def settings(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[str, int, int] | None:
    """(coordinator address, number of processes, process id) from the arguments, each missing one from the
    environment (module docstring); None when neither gives any (a single process). Checked: a partial
    setting, a malformed address or an id outside [0, num_processes) raises ValueError naming it."""
    environ = os.environ if environ is None else environ
    given = {
        COORDINATOR_ENV: coordinator_address
        if coordinator_address is not None
        else environ.get(COORDINATOR_ENV),
        NUM_PROCESSES_ENV: num_processes if num_processes is not None else environ.get(NUM_PROCESSES_ENV),
        PROCESS_ID_ENV: process_id if process_id is not None else environ.get(PROCESS_ID_ENV),
    }
    if all(v is None or v == "" for v in given.values()):
        return None
    missing = [name for name, v in given.items() if v is None or v == ""]
    if missing:
        raise ValueError(
            f"multi-process settings are incomplete: {', '.join(missing)} not given (have "
            f"{ {k: v for k, v in given.items() if k not in missing} }); give all three of "
            f"{COORDINATOR_ENV}, {NUM_PROCESSES_ENV} and {PROCESS_ID_ENV} (as arguments or environment "
            f"variables), or none for one process"
        )
    address = str(given[COORDINATOR_ENV])
    if not _ADDRESS.match(address):
        raise ValueError(f"{COORDINATOR_ENV}={address!r} is not an address; expected host:port, e.g. "
                         f"10.0.0.1:8476 (process 0's host, reachable from every process)")  # fmt: skip
    count = _int_setting(NUM_PROCESSES_ENV, given[NUM_PROCESSES_ENV], 1)
    index = _int_setting(PROCESS_ID_ENV, given[PROCESS_ID_ENV], 0)
    if index >= count:
        raise ValueError(f"{PROCESS_ID_ENV}={index} is not allowed with {NUM_PROCESSES_ENV}={count}; "
                         f"expected an id in [0, {count - 1}]")  # fmt: skip
    return address, count, index


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    heartbeat_timeout_seconds: int = HEARTBEAT_SECONDS,
    shutdown_timeout_seconds: int = SHUTDOWN_SECONDS,
    initialization_timeout: int = INITIALIZATION_SECONDS,
) -> ProcessInfo:
    """Join the multi-process run described by the arguments or the environment (module docstring), or do
    nothing for a single process; return this process's :class:`ProcessInfo`. Call it first, before any
    other JAX call; calling it again with the same settings is harmless."""
    for name, value in (("heartbeat_timeout_seconds", heartbeat_timeout_seconds),
                        ("shutdown_timeout_seconds", shutdown_timeout_seconds),
                        ("initialization_timeout", initialization_timeout)):  # fmt: skip
        _int_setting(name, value, 1)
    resolved = settings(coordinator_address, num_processes, process_id)
    timeouts = dict(
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        shutdown_timeout_seconds=shutdown_timeout_seconds,
        initialization_timeout=initialization_timeout,
    )
    if jax.distributed.is_initialized():
        info = current()
        if resolved is not None and (resolved[1], resolved[2]) != (info.num_processes, info.process_id):
            raise RuntimeError(f"this process already joined as {info.describe()}; it cannot join again as "
                               f"process {resolved[2]} of {resolved[1]}")  # fmt: skip
        return info
    if resolved is None and auto:
        jax.distributed.initialize(**timeouts)
    elif resolved is not None and resolved[1] > 1:
        address, count, index = resolved
        jax.distributed.initialize(address, num_processes=count, process_id=index, **timeouts)
    return current(None if resolved is None else resolved[0])


def current(coordinator_address: str | None = None) -> ProcessInfo:
    """This process's :class:`ProcessInfo` (after :func:`initialize`, or a single process)."""
    return ProcessInfo(
        process_id=jax.process_index(),
        num_processes=jax.process_count(),
        local_devices=jax.local_device_count(),
        devices=jax.device_count(),
        coordinator_address=coordinator_address or os.environ.get(COORDINATOR_ENV),
    )

"""An offline guard: every socket connection to a non-loopback address fails at once.

Tests and CI must never download anything. With ``SPARSE_EXPERTS_OFFLINE=1`` in the environment and
:func:`site_dir` on ``PYTHONPATH``, every Python process started from there (pytest, papermill's Jupyter
kernels, subprocesses) installs the guard at start-up through a ``sitecustomize`` module. Loopback
(127.0.0.0/8, ::1, localhost) and Unix sockets keep working: Jupyter kernels and ``jax.distributed`` talk
over them.

The guard refuses before any packet leaves: ``connect``, ``connect_ex`` and ``sendto`` check the address
first and raise :class:`OfflineError`.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

ENV_VAR = "SPARSE_EXPERTS_OFFLINE"
_MARK = "_sparse_experts_offline_guard"


class OfflineError(ConnectionRefusedError):
    """A connection to a non-loopback address was attempted while the offline guard is on."""


def site_dir() -> Path:
    """The folder holding the ``sitecustomize.py`` that installs the guard in new processes."""
    return Path(__file__).resolve().parent / "_offline_site"


def is_loopback(host: object) -> bool:
    """True for 127.0.0.0/8, ::1, ``localhost`` and empty hosts (bind-any is not a connection)."""
    if not isinstance(host, str):
        return False
    if host in ("", "localhost", "localhost.localdomain"):
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False  # a hostname other than localhost would need a lookup: refuse it
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _allowed(sock: socket.socket, address: object) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return True  # Unix sockets, netlink, ...: not the network
    host = address[0] if isinstance(address, tuple) and address else address
    return is_loopback(host)


def _refuse(address: object) -> OfflineError:
    return OfflineError(
        f"network access to {address!r} blocked: {ENV_VAR}=1 allows loopback only "
        "(nothing may download in tests or CI; use the embedded datasets)"
    )


def install() -> None:
    """Install the guard in this process (idempotent)."""
    if is_installed():
        return
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    original_sendto = socket.socket.sendto

    def connect(self, address):
        if not _allowed(self, address):
            raise _refuse(address)
        return original_connect(self, address)

    def connect_ex(self, address):
        if not _allowed(self, address):
            raise _refuse(address)
        return original_connect_ex(self, address)

    def sendto(self, data, *args):
        address = args[-1]
        if not _allowed(self, address):
            raise _refuse(address)
        return original_sendto(self, data, *args)

    for fn in (connect, connect_ex, sendto):
        setattr(fn, _MARK, True)
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.socket.sendto = sendto


def is_installed() -> bool:
    return getattr(socket.socket.connect, _MARK, False)


def enable_for_subprocesses(env: dict[str, str] | None = None) -> dict[str, str]:
    """Set the variables that make new Python processes install the guard; returns the environment."""
    env = os.environ if env is None else env
    env[ENV_VAR] = "1"
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(site_dir()) not in parts:
        env["PYTHONPATH"] = os.pathsep.join([str(site_dir()), *parts])
    return env  # type: ignore[return-value]


def requested() -> bool:
    return os.environ.get(ENV_VAR, "") not in ("", "0")

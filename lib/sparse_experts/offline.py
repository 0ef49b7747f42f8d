"""An offline guard: every socket connection to a non-loopback address fails at once.

Tests and CI must never download anything. With ``SPARSE_EXPERTS_OFFLINE=1`` in the environment and
:func:`site_dir` on ``PYTHONPATH``, every Python process started from there (pytest, papermill's Jupyter
kernels, subprocesses) installs the guard at start-up through a ``sitecustomize`` module. Loopback
(127.0.0.0/8, ::1, localhost) and Unix sockets keep working: Jupyter kernels and ``jax.distributed`` talk
over them. ``connect``, ``connect_ex`` and ``sendto`` check the address before any packet leaves.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
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


def _guarded(original: Callable) -> Callable:
    """The socket method ``original`` (its last argument is the address), refusing non-loopback addresses."""

    def method(self: socket.socket, *args):
        address = args[-1]
        host = address[0] if isinstance(address, tuple) and address else address
        # Only IP sockets reach the network (Unix sockets, netlink, ... pass).
        if self.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(host):
            raise OfflineError(
                f"network access to {address!r} blocked: {ENV_VAR}=1 allows loopback only "
                "(nothing may download in tests or CI; use the embedded datasets)"
            )
        return original(self, *args)

    setattr(method, _MARK, True)
    return method


def install() -> None:
    """Install the guard in this process (idempotent)."""
    if not is_installed():
        for name in ("connect", "connect_ex", "sendto"):
            setattr(socket.socket, name, _guarded(getattr(socket.socket, name)))


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

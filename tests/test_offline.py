"""The offline guard: non-loopback connections fail in the test process and in papermill kernels."""

from __future__ import annotations

import socket
import subprocess
import sys

import nbformat
import papermill
import pytest

from sparse_experts import offline

# An address reserved for documentation (RFC 5737): never a real host. We only ever call connect() on it
# after checking that the guard is installed, so no packet can leave even if the guard were broken.
DOCUMENTATION_ADDRESS = ("192.0.2.1", 80)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.5.6.7", "::1", "::ffff:127.0.0.1", "localhost", ""])
def test_loopback_hosts(host):
    assert offline.is_loopback(host) is True


@pytest.mark.parametrize("host", ["192.0.2.1", "10.0.0.1", "8.8.8.8", "2001:db8::1", "pypi.org", None])
def test_other_hosts_are_not_loopback(host):
    assert offline.is_loopback(host) is False


def test_guard_blocks_in_test_process():
    assert offline.is_installed(), "conftest must install the guard"
    with socket.socket() as s, pytest.raises(offline.OfflineError, match="192.0.2.1"):
        s.connect(DOCUMENTATION_ADDRESS)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(offline.OfflineError):
        s.sendto(b"x", DOCUMENTATION_ADDRESS)


def test_loopback_still_works():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5) as client:
            conn, _ = server.accept()
            client.sendall(b"ping")
            assert conn.recv(4) == b"ping"
            conn.close()


_PROBE = """
import socket
from sparse_experts import offline
assert offline.is_installed(), "guard missing in this process"
s = socket.socket()
try:
    s.connect(("192.0.2.1", 80))
except offline.OfflineError:
    print("blocked")
"""


def test_guard_in_subprocess():
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "blocked"


def test_guard_in_papermill_kernel(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(_PROBE.replace('print("blocked")', "result = 'blocked'")),
        nbformat.v4.new_code_cell("print(result)"),
    ]
    src, out = tmp_path / "probe.ipynb", tmp_path / "probe-out.ipynb"
    nbformat.write(nb, src)
    papermill.execute_notebook(str(src), str(out), kernel_name="python3", progress_bar=False)
    executed = nbformat.read(out, as_version=4)
    assert executed.cells[1].outputs[0]["text"].strip() == "blocked"

"""One notebook run through the workbook runner, in a worker process of tests/test_notebooks.py's pool.

A worker process runs one notebook at a time, so the runner's changes to the environment (the output folder
for the kernel, XLA flags) never meet another run's."""

from __future__ import annotations

import os
from pathlib import Path

from sparse_experts.workbook import runner


def run(
    name: str, out: Path, preset: str = "smoke", knobs: dict | None = None, env: dict | None = None
) -> dict:
    """``runner.run(preset, only=[name], out=out, params=knobs)`` with ``env`` set meanwhile; its record."""
    before = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    try:
        (record,) = runner.run(preset, only=[name], out=out, params=knobs, log=lambda message: None)
    except runner.NotebookFailed as failed:
        record = failed.record
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return record

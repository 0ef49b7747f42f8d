"""Atomic file writes: write under a temporary name in the same folder, then rename, so a reader (or a run
that was killed half-way) never sees half a file, and a failed write leaves the previous file in place. And
:func:`exclusive`, a file lock for work that two processes must not do at once (training one cache entry,
generating one dataset)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (creating the folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | Path, obj: Any, *, sort_keys: bool = False) -> Path:
    """``obj`` as indented JSON (NaN and infinities refused: they are not JSON), written atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=sort_keys, allow_nan=False) + "\n")


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """An advisory lock (``fcntl.flock``) on the file ``path`` (created, with its folder), held for the block:
    a second process asking for it waits until the first has left the block."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

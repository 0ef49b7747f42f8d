"""Atomic file writes: write under a temporary name in the same folder, then rename, so a reader (or a run
that was killed half-way) never sees half a file, and a failed write leaves the previous file in place."""

from __future__ import annotations

import json
import os
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

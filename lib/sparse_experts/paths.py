"""Where the workbook keeps things: the repository root, generated data and executed outputs.

``SPARSE_EXPERTS_DATA_DIR`` moves the generated data (TFDS ``data_dir`` in ``<root>/tfds``) and the
artifact cache, so a GPU/TPU runtime can point them at a large disk without touching code.
"""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The checkout holding ``lib/sparse_experts`` (an editable install), else the current directory."""
    candidate = Path(__file__).resolve().parents[2]
    if (candidate / "pyproject.toml").exists() and (candidate / "notebooks").is_dir():
        return candidate
    return Path.cwd()


def data_root() -> Path:
    """Root for generated data and caches (git-ignored): ``$SPARSE_EXPERTS_DATA_DIR`` or ``<repo>/data``."""
    env = os.environ.get("SPARSE_EXPERTS_DATA_DIR")
    return Path(env).expanduser().resolve() if env else repo_root() / "data"


def tfds_data_dir() -> Path:
    """The TFDS ``data_dir`` for every builder of the workbook (embedded and catalog)."""
    return data_root() / "tfds"


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def outputs_root() -> Path:
    return repo_root() / "outputs"

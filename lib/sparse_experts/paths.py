"""Where the workbook keeps things: the repository root, generated data and executed outputs.

Every location can be moved with an environment variable, so a GPU/TPU runtime can point the data at a
large disk without touching code:

- ``SPARSE_EXPERTS_DATA_DIR``: root of generated data (TFDS ``data_dir`` lives in ``<root>/tfds``).
- ``SPARSE_EXPERTS_OUTPUT_DIR``: where a notebook saves its figures (set by the runner for each run).
"""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The checkout that holds ``lib/sparse_experts`` (the package is installed editable from there).

    Falls back to the current directory when the package is installed elsewhere (a wheel).
    """
    here = Path(__file__).resolve()
    candidate = here.parents[2]
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

"""A notebook run: validated parameters, a clock, and saving figures as JSON with provenance.

Every notebook's second cell does::

    run = session.start("02_train_vmoe", globals())
    run.params.width       # the value after the preset filled in None
    ...
    run.save({"test_accuracy": 0.81, ...}, headline=["test_accuracy"])

The knobs are declared once, in the notebook's ``parameters`` cell (papermill overrides them there).
``save`` writes ``<output dir>/<notebook>.json`` atomically: the figures and their provenance. The output
directory is ``$SPARSE_EXPERTS_OUTPUT_DIR`` (set by the runner for each notebook), otherwise
``outputs/interactive/<preset>/`` so interactive runs in JupyterLab never overwrite the runner's results.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import subprocess
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

from sparse_experts import paths
from sparse_experts.atomic import write_json_atomic
from sparse_experts.workbook import presets

OUTPUT_DIR_ENV = "SPARSE_EXPERTS_OUTPUT_DIR"
# The packages whose versions the provenance records.
PACKAGES = "sparse_experts jax jaxlib flax optax orbax-checkpoint numpy tensorflow-datasets papermill plotly"


class Run:
    """One execution of one notebook. Create with :func:`start`.

    ``params`` is the notebook's validated config; ``given`` the knobs as passed (``None`` where the preset's
    value was used), kept in the provenance of the saved figures.
    """

    def __init__(self, params: presets.NotebookConfig, given: Mapping[str, Any] | None = None):
        self.params = params
        self.notebook = params.notebook
        self.preset = params.preset
        self.seed = params.seed
        self.given = dict(given if given is not None else params)
        self.started = time.perf_counter()
        self.started_at = _dt.datetime.now(_dt.UTC)

    @property
    def output_dir(self) -> Path:
        env = os.environ.get(OUTPUT_DIR_ENV)
        return Path(env) if env else paths.outputs_root() / "interactive" / self.preset

    def elapsed(self) -> float:
        """Seconds since :func:`start`."""
        return time.perf_counter() - self.started

    def save(self, figures: Mapping[str, Any], headline: Sequence[str] | None = None) -> Path:
        """Write the figures with provenance to ``<output dir>/<notebook>.json``; return the path.

        ``headline`` names the figures the index page shows (default: the top-level scalars, up to 8).
        Values may be numpy or jax scalars and arrays; NaN and infinity are stored as strings.
        """
        figures = _jsonable(dict(figures))
        if headline is None:
            headline = [k for k, v in figures.items() if isinstance(v, int | float | str | bool)][:8]
        missing = [h for h in headline if h not in figures]
        if missing:
            raise KeyError(f"headline figure {missing[0]!r} is not among the saved figures {sorted(figures)}")
        record = {
            "notebook": self.notebook,
            "headline": list(headline),
            "figures": figures,
            "provenance": provenance(self),
        }
        return write_json_atomic(self.output_dir / f"{self.notebook}.json", record)


def start(notebook: str, namespace: Mapping[str, Any] | None = None, **knobs: Any) -> Run:
    """Validate a notebook's parameters (before any compute) and start its clock.

    The parameters are the names of the notebook's config (``preset``, ``seed`` and its knobs) found in
    ``namespace`` (the notebook passes ``globals()``: its parameters cell set them), then ``knobs`` (for
    scripts and tests; an unknown name is an error). ``None`` means the preset's value.
    """
    names = presets.knob_names(notebook)
    given = {name: namespace[name] for name in names if namespace is not None and name in namespace}
    given.update(knobs)
    params = presets.resolve(notebook, **given)
    as_given = {name: given.get(name) for name in names} | {"preset": params.preset, "seed": params.seed}
    return Run(params, given=as_given)


def provenance(run: Run | None = None) -> dict[str, Any]:
    """Where a figure came from: versions, commit, device; and the run's preset, seed, knobs, wall time."""
    devices = jax.devices()
    changes = _git("status", "--porcelain", "--untracked-files=no")  # None outside a git checkout
    record: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES.split()},
        "git": {"commit": _git("rev-parse", "HEAD"), "dirty": None if changes is None else bool(changes)},
        "devices": {
            "platform": devices[0].platform,
            "kind": devices[0].device_kind,
            "count": len(devices),
            "process_count": jax.process_count(),
        },
    }
    if run is not None:
        record.update(
            notebook=run.notebook,
            preset=run.preset,
            seed=run.seed,
            parameters=_jsonable(dict(run.params)),
            parameters_given=_jsonable(run.given),
            started=run.started_at.isoformat(timespec="seconds"),
            wall_time_s=round(run.elapsed(), 3),
        )
    return record


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    """The output of a git command in the checkout (None when git or the checkout is missing)."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=paths.repo_root(), capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _jsonable(value: Any) -> Any:
    """Convert numpy/jax values, tuples and non-finite floats into plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if hasattr(value, "tolist"):  # numpy / jax arrays and scalars
        return _jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot save a value of type {type(value).__name__} as a JSON figure: {value!r}")

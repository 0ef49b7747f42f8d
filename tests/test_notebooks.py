"""Every notebook runs headlessly through the real runner and papermill under the `smoke` preset, and so does
every "try this" prompt of every notebook.

The runs go through ``runner.run`` (what ``make run`` calls) in :data:`JOBS` worker processes: a run is
mostly one kernel compiling and running Python on one core, so two at a time keep CI's two cores busy. The
module's first test starts every run that its selected tests need; each test waits for its own run and
checks it. Notebooks 02 to 06 run one after another in one output folder (03-06 read the models 02 trained
there), as ``make run`` runs them; every other run has a folder of its own. The prompts of 02-06 start once
02 has finished, so that they reuse the models it put in the data cache. Two runs that need the same missing
dataset generate it once: ``datasets.prepare`` holds a file lock while it generates.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _smoke_runs
import nbformat
import pytest

from sparse_experts.workbook import presets, runner

NOTEBOOKS = [nb.name for nb in runner.discover()]
# every "try this" prompt of every notebook: (notebook, its knobs), run under smoke below
PROMPTS = [
    pytest.param(nb.name, knobs, id=f"{nb.name}-prompt{i + 1}")
    for nb in runner.discover()
    for i, knobs in enumerate(runner.prompts(nb))
]
CHAIN = ("02", "03", "04", "05", "06")  # 02, then the notebooks that read its models in its output folder
JOBS = 2
TIMEOUT_S = 1200  # for one run; the slowest smoke run takes about a minute


class Runs:
    """Runs of :func:`_smoke_runs.run` in :data:`JOBS` worker processes (each imports the runner once).

    :meth:`add` queues runs that go one after another; :meth:`get` waits for one and returns its status record
    and its output folder."""

    def __init__(self):
        self._workers = multiprocessing.get_context("spawn").Pool(JOBS)
        self._queue = ThreadPoolExecutor(JOBS, thread_name_prefix="notebook-run")
        self._futures: dict[str, Future] = {}
        self._closing = False

    def add(self, runs: list[tuple[str, dict[str, Any]]], after: str | None = None) -> None:
        """Queue ``runs`` (key, keywords of :func:`_smoke_runs.run`) in turn, once run ``after`` is done."""
        futures = {key: Future() for key, _ in runs}
        self._futures.update(futures)
        waits_for = self._futures.get(after) if after else None

        def work():
            if waits_for is not None:
                with contextlib.suppress(BaseException):
                    waits_for.exception()  # finished, whether it passed or not
            for key, arguments in runs:
                if self._closing or not futures[key].set_running_or_notify_cancel():
                    futures[key].cancel()
                    continue
                try:
                    record = self._workers.apply_async(_smoke_runs.run, kwds=arguments).get(TIMEOUT_S)
                    futures[key].set_result((record, arguments["out"]))
                except BaseException as err:  # reported by the test that asks for this run
                    futures[key].set_exception(err)

        self._queue.submit(work)

    def get(self, key: str) -> tuple[dict[str, Any], Path]:
        return self._futures[key].result()

    def close(self) -> None:
        self._closing = True
        self._workers.terminate()  # nothing runs any more unless a test stopped the session early
        self._queue.shutdown(wait=True, cancel_futures=True)
        self._workers.join()


def prompt_key(name: str, knobs: dict[str, Any]) -> str:
    return f"{name} {json.dumps(knobs, sort_keys=True)}"


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """Starts every run that this module's selected tests need, in the order of the module docstring."""
    selected = [
        (item.originalname, item.callspec.params if hasattr(item, "callspec") else {})
        for item in request.session.items
        if item.module is sys.modules[__name__]
    ]
    chain, alone, after_02 = [], [], []
    shared = tmp_path_factory.mktemp("smoke-outputs")
    for test, params in selected:
        name = params.get("name")
        if test == "test_notebook_runs_under_smoke" and name[:2] in CHAIN:
            chain.append((name, dict(name=name, out=shared)))
        elif test == "test_notebook_runs_under_smoke":
            alone.append((name, dict(name=name, out=tmp_path_factory.mktemp(f"smoke-{name[:2]}"))))
        elif test == "test_try_this_prompt_runs_under_smoke":
            out = tmp_path_factory.mktemp(f"prompt-{name[:2]}")
            run = (prompt_key(name, params["knobs"]), dict(name=name, out=out, knobs=params["knobs"]))
            (after_02 if name[:2] in CHAIN else alone).append(run)
        elif test == "test_tour_runs_under_gpu_preset_without_catalog_data":
            root = tmp_path_factory.mktemp("tour-gpu")
            data = {"SPARSE_EXPERTS_DATA_DIR": str(root / "data")}
            alone.append(("00 gpu", dict(name="00", out=root / "out", preset="gpu", env=data)))
    started = Runs()
    if chain:
        started.add(sorted(chain))
    for key, arguments in alone:
        started.add([(key, arguments)])
    first = sorted(chain)[0][0] if chain and sorted(chain)[0][0].startswith("02_") else None
    for key, arguments in after_02:
        started.add([(key, arguments)], after=first)
    yield started
    started.close()


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_under_smoke(name, runs):
    record, out = runs.get(name)
    assert record["status"] == "ok", record.get("error")
    assert record["expected_s"] == presets.expected_seconds(name, "smoke") and "over_time" in record
    saved = json.loads((out / f"{name}.json").read_text())
    assert saved["provenance"]["preset"] == "smoke"
    assert saved["headline"], f"{name} saved no headline figures"
    executed = nbformat.read(out / f"{name}.ipynb", as_version=4)
    assert "widgets" not in executed.metadata  # no saved widget state (03's once weighed 15 MB)


@pytest.mark.notebooks
@pytest.mark.parametrize(("name", "knobs"), PROMPTS)
def test_try_this_prompt_runs_under_smoke(name, knobs, runs):
    """A lecturer's prompt names a knob and what to expect: the knob must be valid and the notebook run."""
    record, out = runs.get(prompt_key(name, knobs))
    assert record["status"] == "ok", record.get("error")
    given = json.loads((out / f"{name}.json").read_text())["provenance"]["parameters_given"]
    assert {k: given[k] for k in knobs} == knobs


@pytest.mark.notebooks
def test_tour_runs_under_gpu_preset_without_catalog_data(runs):
    """00_tour runs under every preset: offline, catalog datasets that are not prepared are reported."""
    record, out = runs.get("00 gpu")
    assert record["status"] == "ok", record.get("error")
    figures = json.loads((out / "00_tour.json").read_text())["figures"]
    assert figures["upstream"]["name"] == "cifar100"
    assert figures["upstream"]["prepared"] is False
    assert all(task["prepared"] is False for task in figures["downstream"])

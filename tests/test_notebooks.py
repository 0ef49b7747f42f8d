"""Every notebook runs headlessly through the real runner and papermill under the `smoke` preset."""

from __future__ import annotations

import json

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


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("smoke-outputs")


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_under_smoke(name, out):
    (record,) = runner.run("smoke", only=[name], out=out, log=lambda message: None)
    assert record["status"] == "ok", record.get("error")
    assert record["expected_s"] == presets.expected_seconds(name, "smoke") and "over_time" in record
    saved = json.loads((out / f"{name}.json").read_text())
    assert saved["provenance"]["preset"] == "smoke"
    assert saved["headline"], f"{name} saved no headline figures"
    executed = nbformat.read(out / f"{name}.ipynb", as_version=4)
    assert "widgets" not in executed.metadata  # no saved widget state (03's once weighed 15 MB)


@pytest.mark.notebooks
@pytest.mark.parametrize(("name", "knobs"), PROMPTS)
def test_try_this_prompt_runs_under_smoke(name, knobs, tmp_path):
    """A lecturer's prompt names a knob and what to expect: the knob must be valid and the notebook run."""
    (record,) = runner.run("smoke", only=[name], out=tmp_path, params=knobs, log=lambda message: None)
    assert record["status"] == "ok", record.get("error")
    given = json.loads((tmp_path / f"{name}.json").read_text())["provenance"]["parameters_given"]
    assert {k: given[k] for k in knobs} == knobs


@pytest.mark.notebooks
def test_tour_runs_under_gpu_preset_without_catalog_data(tmp_path, monkeypatch):
    """00_tour runs under every preset: offline, catalog datasets that are not prepared are reported."""
    monkeypatch.setenv("SPARSE_EXPERTS_DATA_DIR", str(tmp_path / "data"))
    (record,) = runner.run("gpu", only=["00"], out=tmp_path / "out", log=lambda message: None)
    assert record["status"] == "ok", record.get("error")
    figures = json.loads((tmp_path / "out" / "00_tour.json").read_text())["figures"]
    assert figures["upstream"]["name"] == "cifar100"
    assert figures["upstream"]["prepared"] is False
    assert all(task["prepared"] is False for task in figures["downstream"])

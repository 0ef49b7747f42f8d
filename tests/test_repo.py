"""Repository hygiene: pins agree, notebooks are stripped and parameterised, README states the commands."""

from __future__ import annotations

import nbformat
import pytest

from sparse_experts import paths
from sparse_experts.workbook import presets, runner
from tools import envfile

NOTEBOOKS = [nb.path for nb in runner.discover()]


def test_environment_yml_matches_requirements():
    req, env = envfile.requirement_pins(), envfile.environment_pins()
    assert req, "requirements.txt has no pins"
    missing = sorted(set(req) - set(env))
    extra = sorted(set(env) - set(req))
    differ = sorted(k for k in set(req) & set(env) if req[k] != env[k])
    assert not missing and not extra and not differ, (missing, extra, differ)
    for needed in ("jax", "flax", "optax", "papermill", "tensorflow-datasets", "anywidget", "plotly"):
        assert needed in req


def test_requirements_are_exact_pins(tmp_path):
    bad = tmp_path / "r.txt"
    bad.write_text("jax>=0.4\n")
    with pytest.raises(ValueError, match="not an exact pin"):
        envfile.requirement_pins(bad)


def test_tensorflow_is_not_needed_on_the_embedded_path():
    assert "tensorflow" not in envfile.requirement_pins()
    assert "tensorflow-cpu" not in envfile.requirement_pins()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name} cell {i} has outputs: run `make strip`"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), f"{path.name}: first code cell must be tagged"
    declared = runner.declared_parameters(runner.Notebook(path))
    assert declared[:2] == ["preset", "seed"]
    assert declared == list(presets.knob_names(path.stem))
    namespace: dict = {}
    exec(code[0].source, namespace)
    assert namespace["preset"] == presets.DEFAULT_PRESET and namespace["seed"] == 0
    assert all(namespace[k] is None for k in declared[2:]), "other knobs default to None (the preset's value)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_declares_its_knobs_once(path):
    """The parameters cell declares the knobs; session.start reads them from the namespace, repeating none."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    calls = [c.source for c in code if "session.start(" in c.source]
    assert len(calls) == 1, f"{path.name}: expected one session.start call, found {len(calls)}"
    assert f'run = session.start("{path.stem}", globals())' in calls[0], calls[0]


def test_readme_starts_with_the_two_commands():
    text = (paths.repo_root() / "README.md").read_text()
    head = text[:1500]
    assert "make run" in head and "make test" in head
    assert (paths.repo_root() / ".ci" / "run").read_text().strip().endswith("make test")

"""The headless runner: argument errors before compute, progress, failures, and the no-overwrite rule."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import nbformat
import pytest

from sparse_experts.workbook import presets, runner
from sparse_experts.workbook.configs.base import NotebookConfig, boolean, knob

_SAVE = """
from dataclasses import dataclass
from typing import ClassVar

from sparse_experts.workbook import session
from sparse_experts.workbook.configs.base import NotebookConfig, boolean, knob


@dataclass(frozen=True, kw_only=True)
class Config(NotebookConfig):
    notebook: ClassVar[str] = "{name}"
    fail: bool = knob("fail on purpose", boolean)


run = session.Run(Config(preset=preset, seed=seed, fail=fail))
if fail:
    raise RuntimeError("planned failure for the test")
run.save({{"answer": 42 + seed, "label": "ok"}}, headline=["answer"])
"""


@dataclass(frozen=True, kw_only=True)
class _FailConfig(NotebookConfig):
    fail: bool = knob("fail on purpose", boolean)


def _fake_config_module(name, expected_seconds=None):
    """What presets.NOTEBOOKS holds for a notebook: its Config, PRESETS and EXPECTED_SECONDS."""
    config = type(f"Config{name}", (_FailConfig,), {"notebook": name})
    return SimpleNamespace(
        Config=config,
        PRESETS={p: {"fail": False} for p in presets.PRESET_NAMES},
        EXPECTED_SECONDS={p: expected_seconds for p in presets.PRESET_NAMES},
    )


def _make_notebook(folder, name):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('preset = "cpu"\nseed = 0\nfail = False')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {name}"),
        params,
        nbformat.v4.new_code_cell(_SAVE.format(name=name)),
        nbformat.v4.new_code_cell("import ipywidgets\n\nipywidgets.IntSlider(value=seed)"),  # a live widget
    ]
    nbformat.write(nb, folder / f"{name}.ipynb")


@pytest.fixture
def notebooks(tmp_path, monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name in ("91_first", "92_second"):
        _make_notebook(folder, name)
        monkeypatch.setitem(presets.NOTEBOOKS, name, _fake_config_module(name))
    return folder


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_runs_in_order_and_writes_outputs(notebooks, tmp_path):
    out = tmp_path / "out"
    lines = []
    records = runner.run("smoke", out=out, notebooks_dir=notebooks, params={"seed": 3}, log=lines.append)
    assert [r["notebook"] for r in records] == ["91_first", "92_second"]
    assert all(r["status"] == "ok" for r in records)
    for name in ("91_first", "92_second"):
        saved = json.loads((out / f"{name}.json").read_text())
        assert saved["figures"]["answer"] == 45
        prov = saved["provenance"]
        assert prov["preset"] == "smoke" and prov["seed"] == 3
        assert prov["devices"]["count"] >= 1 and prov["devices"]["platform"] == "cpu"
        assert prov["packages"]["jax"] and prov["wall_time_s"] >= 0
        executed = nbformat.read(out / f"{name}.ipynb", as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
        # the widget is displayed, but its state (megabytes for a FigureWidget) is not saved
        assert "application/vnd.jupyter.widget-view+json" in executed.cells[-1].outputs[0]["data"]
        assert "widgets" not in executed.metadata
    progress = [line for line in lines if line.startswith("[")]
    assert progress[0] == "[1/2] 91_first ..." and progress[1].startswith("[1/2] 91_first ok in ")
    page = (out / "index.html").read_text()
    assert "91_first" in page and "answer: <b>45</b>" in page
    assert not (out / ".staging").exists() or not any((out / ".staging").iterdir())


def test_a_run_over_its_expected_time_is_flagged_not_failed(notebooks, tmp_path, monkeypatch):
    monkeypatch.setitem(presets.NOTEBOOKS, "91_first", _fake_config_module("91_first", expected_seconds=0.01))
    out = tmp_path / "out"
    lines = []
    records = runner.run("smoke", out=out, notebooks_dir=notebooks, log=lines.append)
    first, second = records
    assert first["status"] == "ok" and first["over_time"] and first["expected_s"] == 0.01
    assert second["status"] == "ok" and not second["over_time"] and second["expected_s"] is None
    done = [line for line in lines if " ok in " in line]
    assert "OVER TIME, expected about 0.01 s under smoke" in done[0] and "OVER TIME" not in done[1]
    status = json.loads((out / "status.json").read_text())
    assert status["91_first"]["over_time"] is True and status["92_second"]["over_time"] is False
    page = (out / "index.html").read_text()
    assert page.count("over time: expected about") == 1 and "over time: expected about 0.01 s" in page


def test_over_time_needs_a_success_beyond_the_margin():
    def record(status, seconds):
        return {"status": status, "wall_time_s": seconds}

    limit = runner.OVER_TIME_FACTOR * 40
    assert runner.over_time(record("ok", limit + 0.1), 40) == {"expected_s": 40, "over_time": True}
    assert runner.over_time(record("ok", limit), 40)["over_time"] is False
    assert runner.over_time(record("failed", 10 * limit), 40)["over_time"] is False
    assert runner.over_time(record("ok", 1e6), None) == {"expected_s": None, "over_time": False}


def test_only_selects_by_number_and_name(notebooks):
    found = runner.discover(notebooks)
    assert [nb.name for nb in runner.select(found, ["92"])] == ["92_second"]
    assert [nb.name for nb in runner.select(found, ["92_second,91"])] == ["91_first", "92_second"]
    with pytest.raises(runner.WorkbookError, match="--only '07' matches no notebook; available: 91_first"):
        runner.select(found, ["07"])


def test_failure_keeps_previous_good_output(notebooks, tmp_path):
    out = tmp_path / "out"
    runner.run("smoke", out=out, notebooks_dir=notebooks, only=["91"], log=lambda m: None)
    good = _snapshot(out)
    good_outputs = {k: v for k, v in good.items() if k.name.startswith("91_first.")}
    assert set(k.name for k in good_outputs) == {"91_first.ipynb", "91_first.json"}

    lines = []
    with pytest.raises(runner.NotebookFailed) as failure:
        runner.run("smoke", out=out, notebooks_dir=notebooks, params={"fail": True}, log=lines.append)
    message = str(failure.value)
    assert "91_first failed at cell 2" in message and "RuntimeError: planned failure" in message
    after = _snapshot(out)
    for key, data in good_outputs.items():
        assert after[key] == data, f"{key} was replaced by a failed run"
    assert (out / "91_first.failed.ipynb").exists()
    assert not (out / "92_second.json").exists(), "the run must stop at the first failing notebook"
    status = json.loads((out / "status.json").read_text())
    assert status["91_first"]["status"] == "failed" and status["91_first"]["cell_index"] == 2
    assert "last good output kept" in (out / "index.html").read_text()


def test_unknown_preset_is_rejected_before_touching_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "00_tour.json").write_text('{"keep": true}')
    before = _snapshot(out)
    code = runner.main(["run", "--preset", "nosuch", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "preset='nosuch'" in err and "'smoke', 'cpu', 'gpu', 'tpu'" in err
    assert _snapshot(out) == before


def test_undeclared_parameter_is_an_error(notebooks, tmp_path):
    with pytest.raises(runner.WorkbookError, match="parameter 'learning_rate' is not declared by 91_first"):
        runner.run("smoke", out=tmp_path / "o", notebooks_dir=notebooks, params={"learning_rate": 0.1})
    assert not (tmp_path / "o").exists()


def test_out_of_range_value_is_an_error_before_compute(tmp_path, capsys):
    args = ["run", "--preset", "smoke", "--only", "00", "-p", "images_per_class=99"]
    assert runner.main([*args, "--out", str(tmp_path / "o")]) == 2
    assert "images_per_class=99" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_preset_through_p_is_refused(notebooks, tmp_path):
    with pytest.raises(runner.WorkbookError, match="--preset"):
        runner.run("smoke", out=tmp_path / "o", notebooks_dir=notebooks, params={"preset": "gpu"})


@pytest.mark.parametrize(
    "items, expected",
    [
        (["a=3"], {"a": 3}),
        (["a=0.5", "b=[1, 2]"], {"a": 0.5, "b": [1, 2]}),
        (["name=shapes_novel"], {"name": "shapes_novel"}),
        (["x=None", "flag=True"], {"x": None, "flag": True}),
        (["s=a=b"], {"s": "a=b"}),
    ],
)
def test_parse_assignments(items, expected):
    assert runner.parse_assignments(items) == expected


@pytest.mark.parametrize("bad", ["novalue", "=3", "2x=1"])
def test_parse_assignments_errors(bad):
    with pytest.raises(runner.WorkbookError):
        runner.parse_assignments([bad])


def test_index_labels_headline_figures_and_draws_main_figures(tmp_path):
    """The index page says what each headline number is and draws each notebook's main figure small."""
    import plotly.graph_objects as go

    out = tmp_path / "out"
    out.mkdir()
    figure = go.Figure(go.Scatter(x=[1, 2], y=[0.5, 0.75]), layout=dict(title="accuracy</script>"))
    figures = {
        "accuracy": 0.8712,
        "verdict": "reproduced",
        "gap": 0.016,
        runner.HEADLINE_LABELS: {"accuracy": "test accuracy, mean over 5 seeds, 20,000 images"},
        "noise": 0.0128,
        runner.HEADLINE_UNITS: {"gap": "points", "noise": "noise"},
        runner.MAIN_FIGURE: runner.figure_record(figure),
    }
    saved = {"figures": figures, "headline": ["accuracy", "verdict", "gap", "noise"], "provenance": {}}
    (out / "02_train_vmoe.json").write_text(json.dumps(saved))
    status = {"02_train_vmoe": {"status": "ok", "wall_time_s": 1.0}}
    page = runner.write_index(out, "smoke", status).read_text()
    label = '<span title="accuracy">test accuracy, mean over 5 seeds, 20,000 images</span>: <b>0.8712</b>'
    assert label in page and "verdict: <b>reproduced</b>" in page  # no label: the key
    assert "gap: <b>+1.6 points</b>" in page  # a unit: a difference of fractions in points
    assert "noise: <b>± 1.3 points</b>" in page  # a noise half-width, unsigned
    assert '<div id="figure-0"></div>' in page and "Plotly.newPlot" in page
    assert "accuracy&lt;/script&gt;" in page and "accuracy</script>" not in page  # escaped everywhere
    assert (out / "plotly.min.js").stat().st_size > 1_000_000  # offline: plotly.js next to the page
    assert NOTEBOOK_QUESTION_02 in page


NOTEBOOK_QUESTION_02 = "Does a sparse V-MoE reach dense accuracy at lower inference compute?"


def test_prompts_are_read_from_the_try_this_cell(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_markdown_cell(
        "## Try this\nIntro with `-p ignored=1` outside a bullet.\n\n"
        "- **One.** `-p capacity_factor=0.5` and\n  `-p batch_priority=True` on a second line.\n"
        "- **Two.** `-p 'capacity_factors=[0.05, 0.1]'`, `-p \"models=['dense', 'vmoe']\"`.\n"
        "- No knob here."
    )
    cell.metadata["tags"] = [runner.PROMPT_TAG]
    nb.cells = [nbformat.v4.new_markdown_cell("- `-p untagged=1`"), cell]
    nbformat.write(nb, tmp_path / "93_x.ipynb")
    assert runner.prompts(runner.Notebook(tmp_path / "93_x.ipynb")) == [
        {"capacity_factor": 0.5, "batch_priority": True},
        {"capacity_factors": [0.05, 0.1], "models": ["dense", "vmoe"]},
    ]


def test_every_teaching_notebook_has_two_prompts():
    for nb in runner.discover():
        if nb.name[:2] in {"01", "02", "03", "04"}:
            assert len(runner.prompts(nb)) >= 2, nb.name

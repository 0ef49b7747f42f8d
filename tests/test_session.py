"""Saving figures: JSON with provenance, atomic writes, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparse_experts import atomic
from sparse_experts.workbook import session


def test_save_writes_figures_with_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv(session.OUTPUT_DIR_ENV, str(tmp_path))
    namespace = {"preset": "smoke", "seed": 7, "images_per_class": 3, "classes_shown": None, "other": 1}
    run = session.start("00_tour", namespace)  # as a notebook does: start("00_tour", globals())
    path = run.save(
        {"accuracy": np.float32(0.5), "counts": np.arange(3), "curve": [1.0, float("nan")], "name": "x"},
        headline=["accuracy"],
    )
    assert path == tmp_path / "00_tour.json"
    saved = json.loads(path.read_text())
    assert saved["headline"] == ["accuracy"]
    assert saved["figures"] == {"accuracy": 0.5, "counts": [0, 1, 2], "curve": [1.0, "nan"], "name": "x"}
    prov = saved["provenance"]
    assert prov["notebook"] == "00_tour" and prov["preset"] == "smoke" and prov["seed"] == 7
    assert prov["parameters"]["images_per_class"] == 3
    assert prov["parameters"]["classes_shown"] == 6  # the smoke preset's value
    assert prov["parameters_given"]["classes_shown"] is None
    assert prov["packages"]["jax"] and prov["packages"]["numpy"] == np.__version__
    assert prov["devices"]["platform"] == "cpu" and prov["devices"]["count"] >= 1
    assert len(prov["git"]["commit"] or "") in (0, 40)
    assert prov["wall_time_s"] >= 0
    assert not list(tmp_path.glob(".*tmp*")), "temporary files must not be left behind"


def test_start_reads_the_config_names_from_the_namespace_and_validates_them():
    run = session.start("00_tour", {"preset": "smoke", "seed": 3, "upstream": None, "downstream": ["dtd"]})
    assert run.params.seed == 3 and run.params.downstream == ("dtd",)
    assert run.given["downstream"] == ["dtd"] and run.given["images_per_class"] is None
    assert session.start("00_tour", {"preset": "smoke"}, images_per_class=5).params.images_per_class == 5
    with pytest.raises(session.presets.ParameterError, match="images_per_class=99 is not allowed"):
        session.start("00_tour", {"preset": "smoke", "images_per_class": 99})
    with pytest.raises(session.presets.ParameterError, match="00_tour has no parameter 'lr'"):
        session.start("00_tour", {"preset": "smoke"}, lr=0.1)


def test_default_headline_is_top_level_scalars(tmp_path, monkeypatch):
    monkeypatch.setenv(session.OUTPUT_DIR_ENV, str(tmp_path))
    run = session.start("00_tour", {"preset": "smoke"})
    saved = json.loads(run.save({"a": 1, "table": [1, 2], "b": "text"}).read_text())
    assert saved["headline"] == ["a", "b"]


def test_unknown_headline_and_unserialisable_values(tmp_path, monkeypatch):
    monkeypatch.setenv(session.OUTPUT_DIR_ENV, str(tmp_path))
    run = session.start("00_tour", {"preset": "smoke"})
    with pytest.raises(KeyError, match="headline figure 'nope'"):
        run.save({"a": 1}, headline=["nope"])
    with pytest.raises(TypeError, match="cannot save a value of type object"):
        run.save({"a": object()})
    assert not (tmp_path / "00_tour.json").exists()


def test_interactive_runs_do_not_write_into_runner_outputs(monkeypatch):
    monkeypatch.delenv(session.OUTPUT_DIR_ENV, raising=False)
    run = session.start("00_tour", {"preset": "cpu"})
    assert run.output_dir.parts[-2:] == ("interactive", "cpu")


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "f.json"
    atomic.write_json_atomic(target, {"v": 1})
    with pytest.raises(ValueError):
        atomic.write_json_atomic(target, {"v": float("nan")})  # allow_nan=False
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]

"""End to end through the runner: notebook 04 reads exactly the models that notebook 02 trained in the same
output folder, with a knob the preset does not have (width=48; smoke says 32)."""

from __future__ import annotations

import json

import pytest

from sparse_experts.workbook import runner, zoo


@pytest.mark.notebooks
def test_notebook_04_reads_the_models_of_a_02_run_with_another_width(tmp_path):
    quiet = dict(out=tmp_path, log=lambda message: None)
    (record,) = runner.run("smoke", only=["02"], params={"width": 48}, **quiet)
    assert record["status"] == "ok", record.get("error")
    saved = json.loads((tmp_path / "02_train_vmoe.json").read_text())["figures"][zoo.RECORD_FIGURE]
    assert saved["changed_knobs"] == {"width": 48}
    found = zoo.models_of_run(tmp_path, "smoke", seed=0)
    assert (
        found.params["width"] == 48
        and found.keys[("vmoe_every2_k2", 0)]
        != zoo.spec("vmoe_every2_k2", zoo.models_of_run(tmp_path / "none", "smoke").params, 0).key()
    )  # not the preset's model
    (record,) = runner.run("smoke", only=["04"], **quiet)
    assert record["status"] == "ok", record.get("error")
    figures = json.loads((tmp_path / "04_adaptive_compute.json").read_text())["figures"]
    assert "width=48" in figures["models"]["source"] and str(tmp_path) in figures["models"]["source"]
    recorded = {m["model"]: m["cache_key"] for m in saved["models"]}
    assert figures["models"]["cache_keys"] == {
        name: recorded[name] for name in figures["models"]["cache_keys"]
    }
    assert set(figures["models"]["cache_keys"]) == {"dense", "vmoe_every2_k2", "expert_choice", "soft_moe"}

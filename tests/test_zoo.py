"""Notebook 02's model zoo: configs from the knobs, specs, the summary table and the claim check."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparse_experts import models, train
from sparse_experts.workbook import cache, presets, viz, zoo


def test_zoo_names_match_the_preset_validator():
    models_field = presets.NOTEBOOKS["02_train_vmoe"].Config.__dataclass_fields__["models"]
    assert models_field.metadata["check"].allowed == zoo.MODEL_NAMES


@pytest.mark.parametrize("preset", presets.PRESET_NAMES)
def test_every_model_of_every_preset_builds(preset):
    p = zoo.params_for(preset)
    for name in p["models"]:
        config = zoo.model_config(name, p)
        assert config.pool == "gap" and config.image_size == p["image_size"]
        assert (config.moe is None) == name.startswith("dense")
        spec = zoo.spec(name, p)
        assert spec.preset == preset and spec.num_steps == p["steps"]


@pytest.mark.parametrize("preset", ["gpu", "tpu"])
def test_accelerator_presets_evaluate_on_planned_catalog_splits(preset):
    """Every model of the gpu/tpu presets evaluates its catalog dataset's validation and test splits (as the
    split plan cuts them from the published sizes) in whole routing groups: ``get_or_train``'s first check,
    run here without the data."""
    from sparse_experts.datasets import splits

    p = zoo.params_for(preset)
    sizes = splits.sizes(splits.plan(p["dataset"]), splits.RAW_SIZES[p["dataset"]])
    assert min(sizes.values()) >= 1000, sizes
    for name in p["models"]:
        for split in ("validation", "test"):
            cache.check_eval_split(zoo.spec(name, p), split, num_examples=sizes[split])
    odd = zoo.spec("vmoe_every2_k2", zoo.params_for(preset, eval_batch_size=997 * p["group_size"]))
    if p["group_size"] > 1:  # the check can fail: a last batch of a partial group is refused
        with pytest.raises(ValueError, match="not a multiple of the routing group_size"):
            cache.check_eval_split(odd, "test", num_examples=997 * p["group_size"] + 1)


def test_models_differ_as_documented():
    p = zoo.params_for("cpu")
    cfg = {name: zoo.model_config(name, p) for name in zoo.MODEL_NAMES}
    assert models.moe_layers(cfg["vmoe_every2_k2"]) == (1, 3, 5)
    assert models.moe_layers(cfg["vmoe_last2_k2"]) == (3, 5)
    assert cfg["vmoe_every2_k1"].moe.k == 1 and cfg["vmoe_every2_k2"].moe.k == 2
    assert cfg["expert_choice"].moe.router == "expert_choice" and cfg["soft_moe"].moe.router == "soft"
    flops = {name: models.flops_per_image(c) for name, c in cfg.items()}
    # Expert choice gets the expert slots of top-2; the larger dense model is the costliest.
    assert flops["expert_choice"] == pytest.approx(flops["vmoe_every2_k2"])
    assert max(flops, key=flops.get) == "dense_large"
    assert zoo.seeds_of("dense", p) == (0, 1, 2) and zoo.seeds_of("soft_moe", p) == (0,)


def test_depth_too_small_for_distinct_placements_is_rejected():
    with pytest.raises(presets.ParameterError, match="parameter depth=4 .*every-2 and last-2 both give"):
        zoo.params_for("cpu", depth=4)
    zoo.params_for("cpu", depth=4, models=["dense", "vmoe_every2_k2"])  # fine without last-2


def fake(name, seed, test, gflops):
    p = zoo.params_for("smoke")
    spec = cache.TrainSpec(**{**zoo.spec("dense", p).__dict__, "seed": seed})
    metrics = {"validation": {"accuracy": test}, "test": {"accuracy": test}, "train_seconds": 1.0,
               "params_total": 10, "params_active": 5, "gflops_per_image": gflops}  # fmt: skip
    return (name, seed), cache.Trained(spec, None, train.History(), metrics, Path("."), False)


def rows_of(entries):
    return zoo.summarize(dict(fake(*e) for e in entries))


def test_summary_rows_spread_and_comparison():
    rows = rows_of([("dense", 0, 0.50, 1.0), ("dense", 1, 0.52, 1.0), ("dense", 2, 0.54, 1.0),
                    ("vmoe_every2_k2", 0, 0.60, 1.2), ("vmoe_every2_k2", 1, 0.62, 1.2),
                    ("vmoe_every2_k2", 2, 0.64, 1.2)])  # fmt: skip
    assert [r["model"] for r in rows] == ["dense", "vmoe_every2_k2"]
    dense, vmoe = rows
    assert dense["test_accuracy"] == pytest.approx(0.52) and dense["test_accuracy_std"] == pytest.approx(0.02)
    gap = zoo.compare(vmoe, dense)
    # se = sqrt(0.02^2/3 + 0.02^2/3) = 0.01633; the gap 0.10 is > 2 se.
    assert gap["accuracy_gap"] == pytest.approx(0.10) and gap["standard_error"] == pytest.approx(
        0.016330, 1e-3
    )
    assert gap["resolved"] is True and gap["gflops_ratio"] == pytest.approx(1.2)
    assert zoo.dominated_by(rows, dense) == [] and zoo.dominated_by(rows, vmoe) == []


@pytest.mark.parametrize(
    "large_accuracy, verdict",
    [(0.58, "supported"), (0.625, "within noise"), (0.80, "not supported")],
)
def test_claim_check_verdicts(large_accuracy, verdict):
    """V-MoE 0.61 +- 0.0141 (2 seeds); dense_large (1 seed) borrows the dense spread 0.0141:
    se = sqrt(0.0141^2 / 2 + 0.0141^2 / 1) = 0.0173, so a shortfall below 0.035 is within noise."""
    rows = rows_of([("dense", 0, 0.50, 1.0), ("dense", 1, 0.52, 1.0),
                    ("vmoe_every2_k2", 0, 0.60, 1.2), ("vmoe_every2_k2", 1, 0.62, 1.2),
                    ("dense_large", 0, large_accuracy, 3.0)])  # fmt: skip
    check = zoo.claim_check(rows)
    assert check["verdict"] == verdict, check["sentence"]
    assert "dense_large" in check["sentence"]


def test_claim_untested_without_a_costlier_dense_model():
    rows = rows_of([("dense", 0, 0.5, 1.0), ("vmoe_every2_k2", 0, 0.6, 1.2)])
    assert zoo.claim_check(rows)["verdict"] == "untested"
    assert zoo.claim_check(rows_of([("dense", 0, 0.5, 1.0)]))["verdict"] == "untested"


def test_frontier_and_learning_curve_figures():
    rows = rows_of([("dense", 0, 0.50, 1.0), ("dense", 1, 0.54, 1.0), ("dense_large", 0, 0.53, 3.0),
                    ("vmoe_every2_k2", 0, 0.60, 1.2)])  # fmt: skip
    fig = viz.model_frontier(rows)
    names = [t.name for t in fig.data]
    assert names == ["dense", "dense (each seed)", "dense frontier", "sparse", "sparse (each seed)",
                     "sparse frontier"]  # fmt: skip
    dense = fig.data[0]
    assert list(dense.x) == [1.0, 3.0] and list(dense.y) == pytest.approx([0.52, 0.53])
    assert list(dense.error_y.array) == pytest.approx([0.028284, 0.0], 1e-3)
    assert len(fig.data[1].y) == 3  # every seed shown
    assert list(fig.data[2].x) == [1.0, 3.0]  # dense_large is above dense: both on the frontier
    assert fig.layout.xaxis.type == "log"
    with pytest.raises(ValueError, match="rows is empty"):
        viz.model_frontier([])
    history = train.History(metrics=[{"loss": float(10 - i)} for i in range(10)],
                            evals=[{"step": 5, "accuracy": 0.3}, {"step": 10, "accuracy": 0.4}])  # fmt: skip
    curves = viz.learning_curves({"dense": history}, smooth=5)
    assert list(curves.data[0].y) == pytest.approx([8, 7, 6, 5, 4, 3])  # moving average of 10..1
    assert list(curves.data[1].x) == [5, 10] and list(curves.data[1].y) == [0.3, 0.4]


def test_one_seed_models_borrow_their_familys_spread():
    rows = rows_of([("dense", 0, 0.50, 1.0), ("dense", 1, 0.54, 1.0), ("dense_large", 0, 0.53, 3.0),
                    ("vmoe_every2_k2", 0, 0.60, 1.2)])  # fmt: skip
    spread = zoo.family_spread(rows)
    assert spread == {"dense": pytest.approx(0.028284, 1e-3)}
    by = {r["model"]: r for r in rows}
    gap = zoo.compare(by["vmoe_every2_k2"], by["dense_large"], spread)
    assert gap["borrowed_spread"] == ["dense_large"]  # the sparse row has no family spread to borrow
    assert gap["standard_error"] == pytest.approx(0.028284, 1e-3)
    assert zoo.compare(by["vmoe_every2_k2"], by["dense_large"])["standard_error"] is None

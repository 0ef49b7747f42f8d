"""Notebook 02's model zoo: configs from the knobs, specs, the summary table and the claim check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sparse_experts import analysis, models, train
from sparse_experts.workbook import cache, presets, session, viz, zoo


def test_zoo_names_match_the_preset_validator():
    models_field = presets.NOTEBOOKS["02_train_vmoe"].Config.__dataclass_fields__["models"]
    assert models_field.metadata["check"].allowed == zoo.MODEL_NAMES


@pytest.mark.parametrize("preset", presets.PRESET_NAMES)
def test_every_model_of_every_preset_builds(preset, tmp_path):
    p = zoo.models_of_run(tmp_path, preset).params  # 02 has not run in tmp_path: the preset's models
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

    p = zoo.models_of_run(Path("no-such-folder"), preset).params
    sizes = splits.sizes(splits.plan(p["dataset"]), splits.RAW_SIZES[p["dataset"]])
    assert min(sizes.values()) >= 1000, sizes
    for name in p["models"]:
        for split in ("validation", "test"):
            cache.check_eval_split(zoo.spec(name, p), split, num_examples=sizes[split])
    odd = zoo.spec(
        "vmoe_every2_k2", presets.resolve(zoo.NOTEBOOK, preset, eval_batch_size=997 * p["group_size"])
    )
    if p["group_size"] > 1:  # the check can fail: a last batch of a partial group is refused
        with pytest.raises(ValueError, match="not a multiple of the routing group_size"):
            cache.check_eval_split(odd, "test", num_examples=997 * p["group_size"] + 1)


def test_models_differ_as_documented():
    p = zoo.models_of_run(Path("no-such-folder"), "cpu").params
    assert models.moe_layers(zoo.model_config("vmoe_every2_k2", p)) == (1, 3)  # the cpu preset: depth 4
    assert zoo.seeds_of("dense", p) == (0, 1, 2, 3, 4) and zoo.seeds_of("soft_moe", p) == (0,)
    p = presets.resolve(zoo.NOTEBOOK, "cpu", depth=6, models=list(zoo.MODEL_NAMES))
    cfg = {name: zoo.model_config(name, p) for name in zoo.MODEL_NAMES}
    assert models.moe_layers(cfg["vmoe_every2_k2"]) == (1, 3, 5)
    assert models.moe_layers(cfg["vmoe_last2_k2"]) == (3, 5)
    assert cfg["vmoe_every2_k1"].moe.k == 1 and cfg["vmoe_every2_k2"].moe.k == 2
    assert cfg["expert_choice"].moe.router == "expert_choice" and cfg["soft_moe"].moe.router == "soft"
    flops = {name: models.flops_per_image(c) for name, c in cfg.items()}
    # Expert choice gets the expert slots of top-2; the larger dense model is the costliest.
    assert flops["expert_choice"] == pytest.approx(flops["vmoe_every2_k2"])
    assert max(flops, key=flops.get) == "dense_large"


def test_depth_too_small_for_distinct_placements_is_rejected():
    with pytest.raises(presets.ParameterError, match="parameter depth=4 .*every-2 and last-2 both give"):
        presets.resolve(zoo.NOTEBOOK, "cpu", depth=4, models=list(zoo.MODEL_NAMES))
    presets.resolve(zoo.NOTEBOOK, "cpu", depth=4, models=["dense", "vmoe_every2_k2"])  # fine without last-2


def fake(name, seed, test, gflops):
    p = zoo.models_of_run(Path("no-such-folder"), "smoke").params
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
    [(0.55, "reproduced"), (0.58, "within noise"), (0.625, "within noise"), (0.80, "not reproduced")],
)
def test_claim_check_verdicts(large_accuracy, verdict):
    """V-MoE 0.61 +- 0.0141 (2 seeds); dense_large (1 seed) borrows the dense spread 0.0141:
    se = sqrt(0.0141^2 / 2 + 0.0141^2 / 1) = 0.0173, so a gap either way below 2 se = 0.035 is within noise
    (0.58: the V-MoE is ahead by 0.03, not enough to show it reaches dense_large)."""
    rows = rows_of([("dense", 0, 0.50, 1.0), ("dense", 1, 0.52, 1.0),
                    ("vmoe_every2_k2", 0, 0.60, 1.2), ("vmoe_every2_k2", 1, 0.62, 1.2),
                    ("dense_large", 0, large_accuracy, 3.0)])  # fmt: skip
    check = zoo.claim_check(rows)
    assert isinstance(check, analysis.Claim)
    assert check.verdict == verdict, check.sentence
    assert "dense_large" in check.sentence
    assert check.numbers["best_costlier_dense"] == "dense_large"
    assert [c["b"] for c in check.numbers["comparisons"]] == ["dense", "dense_large"]
    assert check.to_dict()["verdict"] == verdict


def test_claim_contradicted_when_a_cheaper_dense_model_is_more_accurate():
    """The same-backbone dense ViT (1.0 GFLOPs, 0.70 +- 0.0141) beats the V-MoE (1.2 GFLOPs, 0.61 +- 0.0141)
    by 0.09 > 2 se = 0.028, and dense_large is out of reach: dense holds the better frontier."""
    rows = rows_of([("dense", 0, 0.69, 1.0), ("dense", 1, 0.71, 1.0),
                    ("vmoe_every2_k2", 0, 0.60, 1.2), ("vmoe_every2_k2", 1, 0.62, 1.2),
                    ("dense_large", 0, 0.80, 3.0)])  # fmt: skip
    check = zoo.claim_check(rows)
    assert check.verdict == "contradicted", check.sentence
    assert "dense, which costs no more" in check.sentence


def test_claim_untested_without_a_costlier_dense_model():
    rows = rows_of([("dense", 0, 0.5, 1.0), ("vmoe_every2_k2", 0, 0.6, 1.2)])
    assert zoo.claim_check(rows).verdict == "not tested"
    assert zoo.claim_check(rows_of([("dense", 0, 0.5, 1.0)])).verdict == "not tested"


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


# ---------------------------------------------------------------------------------------------------------
# Notebooks 03 and 04 read exactly the models a run of notebook 02 trained in the same output folder.
# ---------------------------------------------------------------------------------------------------------
# A run of 02 with a knob the preset does not have (width=48; smoke says 32), tiny enough to train in seconds.
RUN_02 = dict(dataset="digits", image_size=8, width=48, steps=2, warmup_steps=1, models=("dense",),
              eval_batch_size=90, eval_every=2, checkpoint_every=2)  # fmt: skip


@pytest.fixture(scope="module")
def run_02(tmp_path_factory):
    """Notebook 02's cells in short: start, train through the zoo, save the figures with the record."""
    out, root = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(session.OUTPUT_DIR_ENV, str(out))
        run = session.start("02_train_vmoe", preset="smoke", seed=0, **RUN_02)
        lines = []
        results = zoo.train_all(run.params, log=lines.append, root=root, progress=False)
        assert list(results) == [("dense", 0)] and lines[0].startswith(
            "dense            seed 0: test accuracy"
        )
        saved = run.save({zoo.RECORD_FIGURE: zoo.run_record(run.params, results)})
    return out, root, saved, results


def test_models_of_run_reads_what_02_trained(run_02):
    out, root, saved, results = run_02
    found = zoo.models_of_run(out, "smoke", seed=0)
    assert found.record == saved and found.params["width"] == 48 and found.params["dataset"] == "digits"
    assert found.models == ("dense",) and found.keys == {("dense", 0): results[("dense", 0)].path.name}
    assert str(saved) in found.source and "width=48" in found.source and "dense seed 0" in found.source
    trained = found.get("dense", root=root, progress=False)
    assert trained.trained_now is False and trained.path == results[("dense", 0)].path
    assert trained.model.config.width == 48  # not the preset's 32
    assert list(found.get_all(["vmoe_every2_k2", "dense"], root=root, progress=False)) == ["dense"]
    with pytest.raises(
        ValueError, match="name='soft_moe' with seed=0 is not among the models of notebook 02"
    ):
        found.get("soft_moe", root=root)
    # The runner runs notebook 04 in <out>/.staging/<notebook>-<pid>/: it reads the record in <out>.
    staging = out / ".staging" / "04_adaptive_compute-123"
    staging.mkdir(parents=True)
    assert zoo.models_of_run(staging, "smoke", seed=0).record == saved
    record = json.loads(saved.read_text())["figures"][zoo.RECORD_FIGURE]
    assert record["changed_knobs"]["width"] == 48 and "patch_size" not in record["changed_knobs"]


def test_models_of_run_without_02_uses_the_presets_models(run_02, tmp_path):
    out = run_02[0]
    for folder, seed, why in [(tmp_path, 0, "has not run in"), (out, 1, "used preset 'smoke' and seed 0")]:
        found = zoo.models_of_run(folder, "smoke", seed=seed)
        assert found.record is None and why in found.source and "preset's knobs" in found.source
        assert found.params["width"] == 32 and found.params["seed"] == seed
        assert found.models == zoo.models_of_run(Path("no-such-folder"), "smoke").params["models"]
        assert found.keys[("dense", seed)] == zoo.spec("dense", found.params, seed).key()


def test_models_of_run_refuses_a_record_the_code_no_longer_reproduces(run_02, tmp_path):
    saved = json.loads(run_02[2].read_text())
    saved["figures"][zoo.RECORD_FIGURE]["models"][0]["cache_key"] = "0" * 64
    (tmp_path / "02_train_vmoe.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="records cache entry 000000000000... for dense seed 0"):
        zoo.models_of_run(tmp_path, "smoke", seed=0)


def test_eval_set_follows_the_run(run_02):
    found = zoo.models_of_run(run_02[0], "smoke", seed=0)
    test = zoo.eval_set(found.params, 7, batch_size=4)  # digits: 270 test images; 7 -> 3 whole groups of 2
    assert test.dataset == "digits" and test.count == 6 and test.total == 270 and test.group_size == 2
    assert test.images.dtype == np.uint8 and test.x.shape == (6, 8, 8, 1) and test.x.dtype == np.float32
    assert -1 <= test.x.min() and test.x.max() <= 1 and test.labels.shape == (6,)
    assert "the first 6 of 270 images, in batches of 4 (2 routing groups of 2 images each)" in str(test)
    assert test.record() == {
        "split": "test",
        "images": 6,
        "order": "stored",
        "batch_size": 4,
        "group_size": 2,
    }
    with pytest.raises(ValueError, match="max_images=1 leaves no whole routing group"):
        zoo.eval_set(found.params, 1)


def test_plan_and_backbone_notes():
    p = zoo.models_of_run(Path("no-such-folder"), "cpu").params
    plan = zoo.plan(p)
    assert [row["model"] for row in plan] == list(p["models"])
    by = {row["model"]: row for row in plan}
    config = zoo.model_config("vmoe_every2_k2", p)
    assert by["vmoe_every2_k2"]["params (total)"] == models.param_count(config)
    assert by["vmoe_every2_k2"]["MoE layers"] == "(1, 3)" and by["dense"]["router"] == ""
    assert by["vmoe_every2_k2"]["router"] == "top_k (E=8, k=2)" and by["dense"]["seeds"] == 5
    rows = rows_of([("dense", 0, 0.50, 1.0), ("dense", 1, 0.52, 1.0), ("dense", 2, 0.54, 1.0),
                    ("vmoe_every2_k2", 0, 0.60, 1.2), ("vmoe_every2_k2", 1, 0.62, 1.2),
                    ("vmoe_every2_k2", 2, 0.64, 1.2), ("dense_large", 0, 0.55, 3.0)])  # fmt: skip
    notes = zoo.backbone_notes(rows)
    assert notes[0] == (
        "Same backbone: the main V-MoE is +10.0 points against the dense ViT (standard error 1.6 points "
        "(seed spread); the gap is larger than twice that). It costs 1.20x the dense GFLOPs per image."
    )
    assert notes[1:] == [  # dense_large borrows the dense seed spread (0.02): the gap is 3 of its SEs
        "dense_large is dominated by vmoe_every2_k2: +7.0 points (more than 2 standard errors, 4.6) for no "
        "more compute"
    ]
    close = [r if r["model"] != "dense_large" else {**r, "test_accuracy": 0.61} for r in rows]
    assert zoo.dominated_by(close, close[-1]) == ["vmoe_every2_k2"]  # more accurate, but within the noise
    assert len(zoo.backbone_notes(close)) == 1  # so no sentence calls it dominated
    assert (
        zoo.test_accuracy_of(rows, "dense") == pytest.approx(0.52) and zoo.test_accuracy_of(rows, "x") is None
    )


def test_paired_noise_from_the_saved_test_predictions(run_02):
    """Each cache entry keeps its test predictions: per-image correctness matches the stored accuracy, and
    a comparison with correctness matrices takes its noise from the paired bootstrap."""
    out, root, saved, results = run_02
    params = zoo.models_of_run(out, "smoke", seed=0).params
    correct = zoo.correct_matrices(results, params)
    trained = results[("dense", 0)]
    assert correct["dense"].shape == (1, trained.metrics["test"]["count"])
    assert correct["dense"].mean() == pytest.approx(trained.metrics["test"]["accuracy"], abs=1e-6)
    # two synthetic models on 2,000 images that disagree on 100 of them: pairing sees only those 100
    rng = np.random.default_rng(0)
    a = rng.random((3, 2000)) < 0.6
    b = a.copy()
    b[:, :100] = ~b[:, :100]
    rows = rows_of([("dense", s, b[s].mean(), 1.0) for s in range(3)]
                   + [("vmoe_every2_k2", s, a[s].mean(), 1.2) for s in range(3)])  # fmt: skip
    dense, vmoe = rows
    gap = zoo.compare(vmoe, dense, correct={"dense": b, "vmoe_every2_k2": a})
    assert gap["noise"] == "paired bootstrap over test images and seed pairs"  # the same seeds 0, 1, 2
    assert gap["accuracy_gap"] == pytest.approx(a.mean() - b.mean(), abs=1e-6)
    assert gap["resolved"] == (abs(gap["accuracy_gap"]) > 2 * gap["standard_error"] > 0)
    main = zoo.main_gap({"dense": b, "vmoe_every2_k2": a})
    assert main.seeds == (3, 3) and main.gap_se == pytest.approx(gap["standard_error"])
    assert zoo.main_gap({"dense": b}) is None

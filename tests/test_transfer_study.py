"""Notebook 05's study (workbook.transfer_study) and pool (workbook.pool): the ensembles and baselines on
constructed fine-tuning results, the rank correlations, pooling over tasks and the claim verdicts."""

from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from sparse_experts import models
from sparse_experts.transfer import finetune
from sparse_experts.workbook import pool, presets, transfer_study, zoo


def _tuned(name, val_probs, test_probs, val_acc, test_acc):
    return transfer_study.FineTuned(
        member=name,
        task="t",
        learning_rates=(1e-3,),
        seeds=(0,),
        accuracy={"validation": [val_acc], "test": [test_acc]},
        nll={"validation": [1.0], "test": [1.0]},
        chosen=0,
        all_probs={"validation": val_probs[None], "test": test_probs[None]},
        seconds=1.0,
        made_now=False,
    )


def _probs(labels, classes, right, rng):
    """0.9 on the true class where ``right`` (the rest spread evenly); elsewhere 0.5 on another class, 0.4
    on the true one and 0.1 spread over the others: a near miss that an ensemble partner can outvote."""
    rows = np.arange(len(labels))
    wrong = (labels + 1 + rng.integers(0, classes - 1, len(labels))) % classes
    hit = np.full((len(labels), classes), 0.1 / (classes - 1))
    hit[rows, labels] = 0.9
    miss = np.full((len(labels), classes), 0.1 / (classes - 2))
    miss[rows, labels], miss[rows, wrong] = 0.4, 0.5
    return np.where(right[:, None], hit, miss)


def test_ensembles_and_baselines_on_constructed_members():
    rng = np.random.default_rng(0)
    n, classes = 400, 4
    labels = rng.integers(0, classes, n)
    sets = {
        s: finetune.LabelledSet(np.zeros((n, 2, 2, 1), np.float32), labels) for s in ("train", "val", "test")
    }
    task = transfer_study.Task("t", classes, sets["train"], sets["val"], sets["test"])
    # three members right on different thirds of the images (plus a shared easy third): diverse errors
    blocks = np.arange(n) % 3
    rights = {"a": (blocks != 0) | (np.arange(n) < 50), "b": blocks != 1, "c": blocks != 2}
    tuned = {}
    for name, right in rights.items():
        probs = _probs(labels, classes, right, rng)
        tuned[name] = _tuned(name, probs, probs, right.mean(), right.mean())
    seeds = _tuned("a", tuned["a"].probs["test"], tuned["a"].probs["test"], 0.0, 0.0)
    twice = {k: np.stack([v[0], v[0]]) for k, v in seeds.all_probs.items()}
    seeds = transfer_study.FineTuned(**{**seeds.__dict__, "seeds": (0, 1), "all_probs": twice})
    scores = {"a": 0.9, "b": 0.8, "c": 0.1}  # kNN ranks a, b, c
    rows = transfer_study.ensembles_for_task(
        tuned, seeds, scores, task, {"a": 1.0, "b": 2.0, "c": 4.0}, size=2
    )
    by = {r["method"]: r for r in rows}
    assert by["top-K average"]["members"] == ["a", "b"] and by["top-K average"]["gflops_per_image"] == 3.0
    assert by["greedy top-K"]["members"][0] == "a"  # the lowest validation NLL starts the greedy ensemble
    assert set(by["greedy top-K"]["members"]) <= {"a", "b"}  # only from the kNN's top K
    assert by["seed ensemble"]["members"] == ["a", "a"] and by["seed ensemble"]["gflops_per_image"] == 2.0
    assert by["best single (validation)"]["members"] == ["a"]  # a is right on the most images
    # two members with different errors, averaged, beat either alone (a near miss is outvoted)
    assert by["top-K average"]["accuracy"] == 1.0 > by["best single (validation)"]["accuracy"]
    assert by["greedy top-K"]["members"] == ["a", "b"]  # b lowers the validation NLL of a
    for row in rows:
        assert row["accuracy"] == pytest.approx(row["correct"].mean())
        assert 0 <= row["ece"] <= 1 and row["nll"] > 0
    gap = transfer_study.gap_over_tasks(rows, "top-K average", "seed ensemble", samples=300)
    assert gap["per_task"][0]["gap"] == pytest.approx(
        by["top-K average"]["accuracy"] - by["seed ensemble"]["accuracy"]
    )
    assert (
        gap["pooled"]["tasks"] == 1 and gap["pooled"]["low"] < gap["pooled"]["mean"] < gap["pooled"]["high"]
    )


def test_rank_correlations_and_regret():
    rng = np.random.default_rng(1)
    accuracy = np.array([0.5, 0.6, 0.7, 0.8])
    correct = np.stack([rng.random(4000) < a for a in accuracy])
    out = transfer_study.rank_correlations(
        {"perfect": [1, 2, 3, 4], "reversed": [4, 3, 2, 1], "second": [0, 1, 3, 2]}, correct, samples=200
    )
    assert out["perfect"]["spearman"] == pytest.approx(1.0) and out["perfect"]["kendall"] == pytest.approx(
        1.0
    )
    assert out["reversed"]["spearman"] == pytest.approx(-1.0) and out["perfect"]["regret"] == 0.0
    assert out["reversed"]["regret"] == pytest.approx(correct.mean(1).max() - correct.mean(1)[0])
    assert out["perfect"]["spearman_se"] < 0.05  # 10 points apart on 4,000 images: the order never flips
    assert out["second"]["regret"] == pytest.approx(correct.mean(1)[3] - correct.mean(1)[2])


def test_pooled_and_claim_verdicts():
    p = transfer_study.pooled([0.02, 0.04], [0.01, 0.01])
    assert p["mean"] == pytest.approx(0.03) and p["se"] == pytest.approx(np.sqrt(2) * 0.01 / 2)
    gap = {"a": "greedy top-K", "b": "seed ensemble", "per_task": [], "pooled": p}
    against = {**gap, "pooled": transfer_study.pooled([-0.05], [0.01])}
    level = {**gap, "pooled": transfer_study.pooled([0.001], [0.01])}
    claims = transfer_study.claim_checks(transfer_study.pooled([0.5], [0.1]), 150.0, gap, against, None)
    assert [c.verdict for c in claims] == [
        "reproduced",
        "reproduced",
        "reproduced",
        "contradicted",
        "not tested",
    ]
    claims = transfer_study.claim_checks(transfer_study.pooled([0.1], [0.2]), 30.0, level, level, level)
    assert [c.verdict for c in claims] == [
        "within noise",
        "not reproduced",
        "within noise",
        "within noise",
        "within noise",
    ]
    assert "30x less wall time" in claims[1].sentence and "+0.1 points" in claims[2].sentence


def test_pool_members_differ_as_documented():
    params = zoo.models_of_run(Path("no-such-folder"), "cpu").params
    members = {m.name: m for m in pool.members(pool.MEMBER_NAMES, params)}
    assert len(members) >= 12 and {m.kind for m in members.values()} == set(pool.KINDS)
    assert members["dense"].spec == zoo.spec("dense", params, 0)  # the very cache entry of notebook 02
    assert members["dense_s1"].spec == zoo.spec("dense", params, 1)
    assert members["vmoe"].spec == zoo.spec("vmoe_every2_k2", params, 0)
    assert members["dense_polygons"].spec.classes == tuple(range(6))  # the first family's six classes
    assert members["dense_half"].spec.classes == tuple(range(30))
    assert (
        members["dense_coarse"].spec.label == "coarse_label"
        and members["dense_coarse"].spec.model.num_classes == 10
    )
    assert members["dense_augment"].spec.augment == ("crop", "flip")
    assert members["dense_bigpatch"].spec.model.num_patches == members["dense"].spec.model.num_patches // 4
    keys = {m.spec.key() for m in members.values()}
    assert len(keys) == len(members)  # every member is a distinct model
    card = pool.card(members["dense_polygons"])
    assert card["upstream labels"] == "6 fine classes" and card["GFLOPs / image"] > 0
    with pytest.raises(ValueError, match="pool members \\['nosuch'\\] are unknown"):
        pool.members(["dense", "nosuch"], params)
    with pytest.raises(
        presets.ParameterError, match="ensemble_size=5 is not allowed; expected at most the pool's 4"
    ):
        presets.resolve("05_ensembles", "cpu", members=["dense", "vmoe", "dense_s1", "dense_coarse"])


def test_models_fine_tuned_together_are_cached_one_by_one(tmp_path):
    rng = np.random.default_rng(0)

    def labelled(n):
        labels = rng.integers(0, 2, n)
        images = rng.normal(0, 0.3, (n, 8, 8, 3)) + np.where(labels, 0.6, -0.6)[:, None, None, None]
        return finetune.LabelledSet(images.astype(np.float32), labels)

    task = transfer_study.Task("toy", 2, labelled(32), labelled(16), labelled(16))
    config = models.vit_config(
        "mu/4", image_size=8, num_classes=3, depth=2, width=16, mlp_dim=32, num_heads=2
    )
    a, b = (models.ViT(config, rngs=nnx.Rngs(s)) for s in (0, 1))
    c = models.ViT(config.replace(depth=1), rngs=nnx.Rngs(2))  # another architecture: its own program
    params = dict(
        learning_rates=(1e-3,),
        seed=0,
        train_examples=32,
        finetune_steps=3,
        finetune_batch_size=8,
        finetune_warmup=0,
        eval_batch_size=16,
    )
    entries = [("a", "key-a", a), ("b", "key-b", b), ("c", "key-c", c)]
    together = transfer_study.fine_tune_together(entries, task, params, root=tmp_path)
    assert all(t.made_now for t in together.values())
    alone = transfer_study.fine_tune_cached("b", "key-b", b, task, params, root=tmp_path)
    assert not alone.made_now  # the entry fine_tune_together wrote
    np.testing.assert_array_equal(alone.probs["test"], together["b"].probs["test"])
    assert len(list((tmp_path / "finetune").glob("[0-9a-f]*"))) == 3

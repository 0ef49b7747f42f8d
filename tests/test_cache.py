"""The artifact cache: keys, reuse, atomicity (partial and corrupt entries are never used), resumption."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from sparse_experts import models, train
from sparse_experts.workbook import cache

SPEC = cache.TrainSpec(
    dataset="digits",
    model=models.vit_config(
        "mu/4", image_size=8, channels=1, num_classes=10, width=16, depth=2, mlp_dim=32, num_heads=2,
        pool="gap", moe=models.MoeConfig(num_experts=4, k=2, placement=(1,)),
    ),
    train=train.TrainConfig(learning_rate=3e-3, total_steps=6, warmup_steps=1),
    batch_size=32,
    num_steps=6,
    eval_batch_size=90,
    checkpoint_every=3,
    preset="smoke",
)  # fmt: skip


def params_of(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return root, cache.get_or_train(SPEC, root=root, progress=False)


def test_key_depends_on_spec_and_code(monkeypatch):
    assert SPEC.key() == cache.TrainSpec(**{f: getattr(SPEC, f) for f in SPEC.__dataclass_fields__}).key()
    assert SPEC.key() != cache.TrainSpec(**{**SPEC.__dict__, "seed": 1}).key()
    other_model = SPEC.model.replace(moe=models.MoeConfig(num_experts=4, k=1, placement=(1,)))
    assert SPEC.key() != cache.TrainSpec(**{**SPEC.__dict__, "model": other_model}).key()
    before = SPEC.key()
    monkeypatch.setattr(cache, "code_hash", lambda: "0" * 64)
    assert SPEC.key() != before


def test_code_text_ignores_prose_but_not_code():
    source = '''"""Module doc."""
import math  # a comment


def f(x):
    """Doc."""
    return math.sqrt(x) + 1  # why


class A:
    "Doc."
    RATE = 2
    """What RATE is."""
'''
    reworded = '''"""Another module doc, longer."""
import math


def f(x):
    'Other doc'
    # a new comment
    return (math.sqrt(x)
            + 1)


class A:
    RATE = 2
'''
    assert cache.code_text(source) == cache.code_text(reworded)
    assert cache.code_text(source) != cache.code_text(reworded.replace("+ 1", "+ 2"))
    assert cache.code_text(source) != cache.code_text(source.replace("RATE = 2", "RATE = 3"))
    only_doc = '''def g():\n    """Doc."""\n'''
    assert cache.code_text(only_doc) == "def g():\n    pass"
    assert "sparse_experts.datasets.splits" in cache.CODE_MODULES  # the split plans decide what is trained on


def test_code_hash_covers_every_module_of_the_hashed_packages():
    """A package's __init__ only re-exports: the modules that define the model and the training must be in."""
    names = cache.code_module_names()
    needed = ["models.vit", "models.moe", "models.mlp", "train.trainer", "parallel.experts", "routing"]
    for module in needed:
        assert f"sparse_experts.{module}" in names
    assert len(names) == len(set(names))


def test_trains_once_then_reuses(trained):
    root, first = trained
    assert first.trained_now and first.path == root / SPEC.key()
    assert set(first.metrics) >= {"validation", "test", "train_seconds", "params_total", "gflops_per_image"}
    assert first.metrics["test"]["count"] == 270 and len(first.history.metrics) == 6
    again = cache.get_or_train(SPEC, root=root, progress=False)
    assert not again.trained_now and again.metrics == first.metrics
    for a, b in zip(params_of(first.model), params_of(again.model), strict=True):
        np.testing.assert_array_equal(a, b)
    # The loaded model is the trained one: its test accuracy, recomputed, matches the stored figure.
    t = train.Trainer(again.model, SPEC.train)
    assert t.evaluate(cache._eval_batches(SPEC, "test"))["accuracy"] == first.metrics["test"]["accuracy"]


def test_partial_entry_is_ignored_and_set_aside(trained, tmp_path):
    root, good = trained
    # A copy without its manifest: what an interrupted copy or a half-written entry looks like.
    partial = tmp_path / SPEC.key()
    partial.mkdir()
    (partial / "spec.json").write_text((good.path / "spec.json").read_text())
    with pytest.raises(cache.CorruptEntryError, match="no manifest"):
        cache.load(SPEC, root=tmp_path)
    fresh = cache.get_or_train(SPEC, root=tmp_path, progress=False)
    assert fresh.trained_now
    assert len(list((tmp_path / ".corrupt").iterdir())) == 1


def test_changed_file_fails_verification(trained):
    root, good = trained
    metrics = json.loads((good.path / "metrics.json").read_text())
    metrics["test"]["accuracy"] = 1.0
    (good.path / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(cache.CorruptEntryError, match="metrics.json does not match"):
        cache.verify(good.path, SPEC)


def test_interrupted_training_leaves_no_entry_and_resumes(tmp_path, monkeypatch):
    calls = []
    original = train.Trainer.evaluate

    def failing_evaluate(self, batches, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt  # as if the user stopped the kernel after training, before the entry exists

    monkeypatch.setattr(train.Trainer, "evaluate", failing_evaluate)
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_train(SPEC, root=tmp_path, progress=False)
    assert not (tmp_path / SPEC.key()).exists()
    assert cache.load(SPEC, root=tmp_path) is None
    assert train.Checkpoints(tmp_path / ".partial" / SPEC.key() / "checkpoints").latest_step() == 6
    monkeypatch.setattr(train.Trainer, "evaluate", original)
    resumed = cache.get_or_train(SPEC, root=tmp_path, progress=False)
    assert resumed.trained_now and len(resumed.history.metrics) == 6
    assert not (tmp_path / ".partial" / SPEC.key()).exists()


def test_bad_spec_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="TrainSpec.label='fine'"):
        cache.TrainSpec(**{**SPEC.__dict__, "label": "fine"})
    with pytest.raises(ValueError, match="TrainSpec.batch_size=0"):
        cache.TrainSpec(**{**SPEC.__dict__, "batch_size": 0})
    with pytest.raises(ValueError, match="eval_batch_size=100.*divides 270"):
        grouped = SPEC.model.replace(moe=models.MoeConfig(num_experts=4, k=2, placement=(1,), group_size=4))
        spec = cache.TrainSpec(**{**SPEC.__dict__, "model": grouped, "eval_batch_size": 100})
        cache.get_or_train(spec, root=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()  # checked before anything was written


def test_concurrent_requests_train_once(tmp_path):
    """Two callers asking for the same untrained model at once: one trains, the other waits and loads."""
    import threading

    results, errors = [], []

    def ask():
        try:
            results.append(cache.get_or_train(SPEC, root=tmp_path, progress=False))
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sorted(r.trained_now for r in results) == [False, True]
    assert results[0].metrics == results[1].metrics


def test_seeds_trained_together_equal_seeds_trained_alone(trained, tmp_path):
    """Seeds 0 and 1 of SPEC (an MoE model, so router noise is per seed too) as one vmapped program: seed 0
    equals the entry trained alone (to float rounding), and each seed lands under its own key."""
    root, alone = trained
    both = [SPEC, dataclasses.replace(SPEC, seed=1)]
    together = cache.get_or_train_seeds(both, root=tmp_path, progress=False)
    assert [t.spec.seed for t in together] == [0, 1] and all(t.trained_now for t in together)
    assert [t.path.name for t in together] == [s.key() for s in both]
    assert together[0].metrics["trained_with_seeds"] == [0, 1]
    for a, b in zip(params_of(together[0].model), params_of(alone.model), strict=True):
        # atol: the key bias has no gradient but rounding, which Adam scales up to ~1e-5
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert not np.allclose(params_of(together[0].model)[0], params_of(together[1].model)[0])
    assert together[0].test_predictions.shape == (270,)
    np.testing.assert_allclose(
        together[0].history.series("loss"), alone.history.series("loss"), rtol=1e-4, atol=1e-5
    )
    # Again: both from the cache. With seed 2 added, only seed 2 trains.
    again = cache.get_or_train_seeds(both, root=tmp_path, progress=False)
    assert not any(t.trained_now for t in again)
    more = [*both, dataclasses.replace(SPEC, seed=2)]
    three = cache.get_or_train_seeds(more, root=tmp_path, progress=False)
    assert [t.trained_now for t in three] == [False, False, True]
    with pytest.raises(ValueError, match="differ in more than their seed"):
        cache.get_or_train_seeds([SPEC, dataclasses.replace(SPEC, seed=1, num_steps=3)], root=tmp_path)
    with pytest.raises(ValueError, match="repeat a seed"):
        cache.get_or_train_seeds([SPEC, SPEC], root=tmp_path)


def test_groups_trained_by_two_worker_processes_equal_groups_trained_here(trained, tmp_path):
    """get_or_train_groups with workers=2: two groups (SPEC alone; its dense twin with seeds 0 and 1) are
    trained by two spawned processes into the cache; SPEC equals the entry trained in this process (to
    float rounding), the caller sees them as trained now, and asking again reads them back."""
    root, alone = trained
    dense = dataclasses.replace(SPEC, model=SPEC.model.replace(moe=None))
    groups = [[SPEC], [dense, dataclasses.replace(dense, seed=1)]]
    got = cache.get_or_train_groups(groups, workers=2, root=tmp_path, progress=False, descriptions=["a", "b"])
    assert [[t.spec for t in g] for g in got] == groups
    assert all(t.trained_now for g in got for t in g) and got[1][0].metrics["trained_with_seeds"] == [0, 1]
    for a, b in zip(params_of(got[0][0].model), params_of(alone.model), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)  # atol: see the test above
    np.testing.assert_array_equal(got[0][0].test_predictions, alone.test_predictions)
    again = cache.get_or_train_groups(groups, workers=2, root=tmp_path, progress=False)
    assert not any(t.trained_now for g in again for t in g)
    assert not list((tmp_path / ".partial").glob("*/"))  # no work folder left behind
    for bad, message in ((0, "workers=0 is not allowed"), (1.5, "workers=1.5 is not allowed")):
        with pytest.raises((ValueError, TypeError), match=message):
            cache.get_or_train_groups(groups, workers=bad, root=tmp_path)
    with pytest.raises(ValueError, match="descriptions has 1 entries; expected one per group"):
        cache.get_or_train_groups(groups, workers=2, root=tmp_path, descriptions=["a"])


def test_an_error_in_a_worker_process_is_raised_and_writes_no_entry(tmp_path):
    """A group that fails inside a worker (non-finite loss at a learning rate of 1e6) is raised here and
    writes no entry; one whose evaluation batches would split a routing group fails before any process
    starts."""
    blow_up = dataclasses.replace(SPEC, train=dataclasses.replace(SPEC.train, learning_rate=1e6))
    fine = dataclasses.replace(SPEC, seed=7)
    with pytest.raises(train.NonFiniteError, match="non-finite loss=nan at step"):
        cache.get_or_train_groups([[fine], [blow_up]], workers=2, root=tmp_path, progress=False)
    assert not (tmp_path / blow_up.key()).exists()
    moe = dataclasses.replace(SPEC.model.moe, group_size=4)  # 270 test images in 100s: a last batch of 70
    too_big = dataclasses.replace(SPEC, model=SPEC.model.replace(moe=moe), eval_batch_size=100)
    with pytest.raises(ValueError, match="eval_batch_size"):
        cache.get_or_train_groups([[too_big], [fine]], workers=2, root=tmp_path / "other", progress=False)
    assert not (tmp_path / "other" / too_big.key()).exists()


def test_a_class_subset_with_augmentation_trains_and_evaluates_on_its_classes(tmp_path):
    """``classes`` keeps only those digits (relabelled 0, 1, 2) for training and evaluation; ``augment``
    changes the training batches; neither changes the key of a spec that leaves them at their defaults."""
    subset = dataclasses.replace(
        SPEC,
        model=SPEC.model.replace(num_classes=3),
        classes=(1, 4, 7),
        augment=("crop",),
        checkpoint_every=None,
    )
    plain = {k: v for k, v in SPEC.to_dict().items()}
    assert "classes" not in plain and "augment" not in plain  # the defaults stay out of the key
    assert subset.to_dict()["classes"] == [1, 4, 7] and subset.to_dict()["augment"] == ["crop"]
    assert dataclasses.replace(subset, augment=()).key() != subset.key()
    out = cache.get_or_train(subset, root=tmp_path, progress=False)
    from sparse_experts.datasets import loader

    test = loader.load_split("digits", "test", classes=(1, 4, 7))
    full = loader.load_split("digits", "test")
    assert out.metrics["test"]["count"] == len(test) == int(np.isin(full.labels, (1, 4, 7)).sum())
    assert set(np.unique(test.labels)) == {0, 1, 2} and out.test_predictions.max() <= 2
    with pytest.raises(ValueError, match="TrainSpec.classes has 3 classes but the model's num_classes=10"):
        dataclasses.replace(SPEC, classes=(1, 4, 7))
    with pytest.raises(ValueError, match="a class subset is of the fine classes"):
        dataclasses.replace(subset, label="coarse_label")
    with pytest.raises(ValueError, match="TrainSpec.augment=\\('spin',\\): unknown"):
        dataclasses.replace(SPEC, augment=("spin",))
    with pytest.raises(ValueError, match="classes=\\[7, 1\\] is not allowed for dataset='digits'"):
        loader.load_split("digits", "test", classes=[7, 1])


def test_get_or_make_reuses_verified_folders_and_remakes_corrupt_ones(tmp_path):
    calls = []

    def make(work):
        calls.append(work)
        np.save(work / "values.npy", np.arange(3))

    required = ("payload.json", "values.npy")
    first, made = cache.get_or_make(
        "sweeps", {"task": "a", "lr": [1, 2]}, make, required=required, root=tmp_path
    )
    assert (
        made and first.parent == tmp_path / "sweeps" and np.load(first / "values.npy").tolist() == [0, 1, 2]
    )
    again, made = cache.get_or_make(
        "sweeps", {"task": "a", "lr": [1, 2]}, make, required=required, root=tmp_path
    )
    assert again == first and not made and len(calls) == 1
    other, _ = cache.get_or_make(
        "sweeps", {"task": "b", "lr": [1, 2]}, make, required=required, root=tmp_path
    )
    assert other != first
    np.save(first / "values.npy", np.arange(4))  # tampered: set aside and made again
    remade, made = cache.get_or_make(
        "sweeps", {"task": "a", "lr": [1, 2]}, make, required=required, root=tmp_path
    )
    assert remade == first and made and np.load(first / "values.npy").tolist() == [0, 1, 2]
    assert len(list((tmp_path / "sweeps" / ".corrupt").iterdir())) == 1

    def broken(work):
        (work / "half.txt").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        cache.get_or_make("sweeps", {"task": "c"}, broken, root=tmp_path)
    kept = sorted(p.name for p in (tmp_path / "sweeps").iterdir() if not p.name.startswith("."))
    assert kept == sorted([first.name, other.name])  # no folder for the failed payload
    assert not [p for p in (tmp_path / "sweeps" / ".partial").iterdir() if p.is_dir()]  # nothing left behind

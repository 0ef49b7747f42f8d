"""Tests of sparse_experts.transfer: the linear probe on synthetic features, and frozen ViT features of a
small embedded dataset generated into pytest's tmp folder (``data_dir=``), offline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from sparse_experts import datasets, models, paths, transfer

TASK = "shapes_novel"


def _blobs(n: int, d: int, classes: int, *, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points ``[n, d]`` around ``classes`` random centres (distance ~ sqrt(2 d) apart), with labels."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(classes, d))
    labels = rng.integers(0, classes, n)
    return (centres[labels] + spread * rng.normal(size=(n, d))).astype(np.float32), labels


# ----------------------------------------------------------------------------------------------------------
# linear_probe
# ----------------------------------------------------------------------------------------------------------


def test_probe_separates_separable_classes():
    x, y = _blobs(800, 64, 8, spread=0.3, seed=0)
    xt, yt = _blobs(500, 64, 8, spread=0.3, seed=1)
    result = transfer.linear_probe(x, y, xt, yt)
    assert result.accuracy > 0.97
    assert result.correct.dtype == bool and result.correct.shape == (500,)
    assert np.issubdtype(result.predictions.dtype, np.integer) and result.predictions.shape == (500,)
    assert result.accuracy == pytest.approx(result.correct.mean())
    np.testing.assert_array_equal(result.correct, result.predictions == yt)
    assert 0 < result.iterations < transfer.probe.MAX_ITER


def test_probe_on_random_labels_is_near_chance():
    rng = np.random.default_rng(0)
    x, xt = rng.normal(size=(800, 64)), rng.normal(size=(2000, 64))
    y, yt = rng.integers(0, 4, 800), rng.integers(0, 4, 2000)
    accuracy = transfer.linear_probe(x, y, xt, yt).accuracy
    assert abs(accuracy - 0.25) < 0.05  # chance 1/4; the SE of 2000 images is ~0.01


def test_probe_standardises_with_the_train_statistics():
    """An affine map of every feature (same for train and test) changes nothing: the probe standardises
    with the train mean and std; a feature constant over train is harmless."""
    x, y = _blobs(300, 16, 4, spread=1.0, seed=0)
    xt, yt = _blobs(200, 16, 4, spread=1.0, seed=1)
    scale, shift = np.geomspace(1e-3, 1e4, 16), np.linspace(-50, 50, 16)
    base = transfer.linear_probe(x, y, xt, yt)
    mapped = transfer.linear_probe(x * scale + shift, y, xt * scale + shift, yt)
    np.testing.assert_array_equal(base.predictions, mapped.predictions)
    const = transfer.linear_probe(np.c_[x, np.ones(300)], y, np.c_[xt, np.zeros(200)], yt)
    np.testing.assert_array_equal(base.predictions, const.predictions)


def test_probe_result_is_frozen_and_read_only():
    x, y = _blobs(100, 8, 3, spread=0.5, seed=0)
    result = transfer.linear_probe(x, y, x, y)
    with pytest.raises(AttributeError):
        result.accuracy = 1.0
    with pytest.raises(ValueError, match="read-only"):
        result.correct[0] = False


_X, _Y = _blobs(40, 4, 3, spread=0.5, seed=0)
_NAN, _INF = _X.copy(), _X.copy()
_NAN[3, 1], _INF[5, 2] = np.nan, np.inf


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(train_labels=_Y[:-1]), r"train_labels has 39 labels but train_features has 40"),
        (dict(test_labels=_Y[:10]), r"test_labels has 10 labels but test_features has 40"),
        (dict(train_features=_NAN), r"train_features holds 1 NaN/inf values \(first at \[3, 1\]: nan\)"),
        (dict(test_features=_INF), r"test_features holds 1 NaN/inf values \(first at \[5, 2\]: inf\)"),
        (dict(train_labels=np.zeros(40, int)), r"train_labels holds 1 class \(\[0\]\)"),
        (dict(test_features=_X[:, :3]), r"test_features has 3 features per example but train_features has 4"),
        (dict(train_features=_X[:, 0]), r"train_features must be a non-empty \[examples, features\]"),
        (dict(train_features=_X[:0], train_labels=_Y[:0]), r"train_features must be a non-empty"),
        (
            dict(train_labels=_Y.astype(float)),
            r"train_labels must hold integer class indices, got dtype=float64",
        ),
        (dict(test_labels=_Y[:, None]), r"test_labels must be a 1-D array"),
        (dict(c=0.0), r"c=0.0 is not allowed"),
        (dict(c=float("nan")), r"c=nan is not allowed"),
        (dict(c=True), r"c=True is not allowed"),
    ],
)
def test_probe_rejects_bad_inputs_naming_them(kwargs, match):
    args = dict(train_features=_X, train_labels=_Y, test_features=_X, test_labels=_Y)
    c = kwargs.pop("c", 1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        transfer.linear_probe(**args, c=c)


# ----------------------------------------------------------------------------------------------------------
# features
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """One data_dir for the module, holding the generated downstream task."""
    datasets.clear_cache()
    path = tmp_path_factory.mktemp("tfds")
    datasets.prepare(TASK, data_dir=path)
    yield path
    datasets.clear_cache()


@pytest.fixture(scope="module")
def tiny_vit() -> models.ViT:
    config = models.vit_config(
        "mu/4",
        image_size=16,
        channels=3,
        num_classes=10,
        width=32,
        depth=2,
        mlp_dim=64,
        num_heads=2,
        pool="gap",
    )
    return models.ViT(config, rngs=nnx.Rngs(0))


def test_features_are_the_pooled_encoding_of_every_image_in_stored_order(tiny_vit, data_dir):
    feats, labels = transfer.features(
        tiny_vit, TASK, "validation", image_size=16, batch_size=64, data_dir=data_dir
    )
    split = datasets.load_split(TASK, "validation", data_dir=data_dir, image_size=16)
    assert feats.shape == (len(split), 32) and feats.dtype == np.float32
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, split.labels)
    expected = np.asarray(tiny_vit.encode(datasets.to_float(split.images), train=False))
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-5)
    assert np.isfinite(feats).all() and feats.std(axis=0).min() > 0  # real, varied features


def test_features_are_deterministic_and_do_not_depend_on_the_batch_size(tiny_vit, data_dir):
    kw = dict(image_size=16, data_dir=data_dir)
    first, labels = transfer.features(tiny_vit, TASK, "train", batch_size=96, **kw)  # 800 = 8 x 96 + 32
    again, labels_again = transfer.features(tiny_vit, TASK, "train", batch_size=96, **kw)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(labels, labels_again)
    whole, _ = transfer.features(tiny_vit, TASK, "train", batch_size=1000, **kw)  # one padded batch
    assert first.shape == whole.shape == (800, 32)
    np.testing.assert_allclose(first, whole, rtol=1e-5, atol=1e-5)


def test_features_feed_a_probe(tiny_vit, data_dir):
    """End to end on a random-init ViT: features of two splits go straight into the probe (no claim on the
    accuracy: a tiny random ViT's features are close to chance here)."""
    kw = dict(image_size=16, data_dir=data_dir)
    train = transfer.features(tiny_vit, TASK, "train", **kw)
    test = transfer.features(tiny_vit, TASK, "validation", **kw)
    result = transfer.linear_probe(*train, *test)
    assert result.correct.shape == result.predictions.shape == (len(test[1]),)
    assert 0 <= result.accuracy <= 1
    assert set(np.unique(result.predictions)) <= set(np.unique(train[1]))


def test_features_reject_bad_arguments(tiny_vit, data_dir):
    with pytest.raises(ValueError, match="batch_size=0"):
        transfer.features(tiny_vit, TASK, "test", image_size=16, batch_size=0, data_dir=data_dir)
    with pytest.raises(TypeError, match="model=Linear is not allowed"):
        transfer.features(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), TASK, "test", data_dir=data_dir)
    with pytest.raises(ValueError, match="images have shape"):  # the model's input size, not the data's
        transfer.features(tiny_vit, TASK, "test", data_dir=data_dir)


# ----------------------------------------------------------------------------------------------------------
# benchmarks/transfer_probe.py: its verdicts and table (the script itself runs by hand: it trains a model)
# ----------------------------------------------------------------------------------------------------------


def _load_benchmark():
    path = paths.repo_root() / "benchmarks" / "transfer_probe.py"
    spec = importlib.util.spec_from_file_location("transfer_probe_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_verdicts_and_table():
    bench = _load_benchmark()
    assert bench.verdict(0.05, True) == "upstream wins"
    assert bench.verdict(-0.05, True) == "random wins"
    assert bench.verdict(0.05, False) == bench.verdict(-0.05, False) == "within noise"
    row = dict(task="shapes_count", group="structured", upstream_accuracy=0.5, random_accuracy=0.4, gap=0.1,
               gap_two_se=0.04, verdict="upstream wins")  # fmt: skip
    table = bench.format_table([row]).splitlines()
    assert len(table) == 3
    assert table[2] == "| shapes_count | structured | 50.0 | 40.0 | +10.0 +- 4.0 | upstream wins |"
    assert bench.default_out("smoke").name == "transfer_probe_smoke.json"
    with pytest.raises(SystemExit, match="preset"):
        bench.main(["--preset", "laptop"])

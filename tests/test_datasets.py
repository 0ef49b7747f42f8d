"""Tests of sparse_experts.datasets: the embedded TFDS builders, the shapes renderer and the one loader.

Everything is generated into pytest's tmp folders (``data_dir=``), offline, with the small variants.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import io
import multiprocessing
import os
import socket
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sparse_experts import datasets as ds
from sparse_experts.datasets import builders, tasks
from sparse_experts.datasets.__main__ import main as cli_main
from sparse_experts.workbook import cache

TINY = {"train": 40, "validation": 10, "test": 10}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """One data_dir for the module: datasets are generated once and reused by the tests below."""
    ds.clear_cache()
    yield tmp_path_factory.mktemp("tfds")
    ds.clear_cache()


def _hashes(images: np.ndarray) -> set[str]:
    return {hashlib.sha1(im.tobytes()).hexdigest() for im in images}


# ----------------------------------------------------------------------------------------------------------
# Renderer and builders
# ----------------------------------------------------------------------------------------------------------


def test_generate_is_deterministic_in_the_seed():
    a = tasks.generate("novel", "train", 30, seed=0)
    b = tasks.generate("novel", "train", 30, seed=0)
    c = tasks.generate("novel", "train", 30, seed=1)
    assert a["image"].shape == (30, 32, 32, 3) and a["image"].dtype == np.uint8
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(a["image"], c["image"])
    # A smaller size is a prefix of a larger one (same random streams).
    np.testing.assert_array_equal(tasks.generate("novel", "train", 12, seed=0)["image"], a["image"][:12])


@pytest.mark.parametrize("task", list(tasks.TASKS))
def test_every_task_renders_balanced_labels_and_varied_images(task):
    if task == "upstream":
        task = "upstream_small"  # the same renderer and streams
    n = tasks.CHUNK  # labels are balanced within each chunk of the random stream
    out = tasks.generate(task, "train", n, seed=0)
    k = len(tasks.TASKS[task].class_names)
    counts = np.bincount(out["label"], minlength=k)
    assert counts.sum() == n and counts.max() - counts.min() <= 1
    assert len(_hashes(out["image"])) == n  # no two images alike
    assert out["image"].std() > 20  # not blank


def test_builder_records_are_byte_identical_for_a_seed_and_differ_across_seeds(tmp_path):
    def build(sub: str, seed: int) -> Path:
        cfg = builders.shapes_config("upstream_small", seed=seed, sizes=TINY)
        b = builders.SewShapes(config=cfg, data_dir=str(tmp_path / sub), file_format="array_record")
        b.download_and_prepare()
        return Path(b.data_dir)

    first, again, other = build("a", 0), build("b", 0), build("c", 1)
    files = sorted(p.name for p in first.glob("*.array_record*"))
    assert len(files) == 3
    for f in files:
        assert (first / f).read_bytes() == (again / f).read_bytes()
    assert (first / files[0]).read_bytes() != (other / files[0]).read_bytes()
    assert (
        first.parent.name == "upstream_small_n40-10-10"
        and other.parent.name == "upstream_small_seed1_n40-10-10"
    )


def test_builder_features_and_versions():
    b = builders.SewShapes(config="upstream_small", data_dir="/nonexistent")
    assert str(b.info.version) == "1.3.0" and "1.3.0" in builders.SewShapes.RELEASE_NOTES
    assert b.info.features["image"].shape == (32, 32, 3)
    assert b.info.features["label"].num_classes == 60
    assert b.info.features["coarse_label"].num_classes == 10
    assert "coarse_label" not in builders.SewShapes(config="count", data_dir="/nonexistent").info.features
    assert builders.SewDigits(data_dir="/nonexistent").info.features["image"].shape == (8, 8, 1)


def test_prepare_generates_once_then_reuses(data_dir):
    before = builders.GENERATION_COUNTS["sew_digits"]
    path = ds.prepare("digits", data_dir=data_dir)
    info_file = path / "dataset_info.json"
    mtime = info_file.stat().st_mtime_ns
    assert ds.is_prepared("digits", data_dir=data_dir)
    assert ds.prepare("digits", data_dir=data_dir) == path
    assert builders.GENERATION_COUNTS["sew_digits"] == before + 1
    assert info_file.stat().st_mtime_ns == mtime


def _prepare_at_once(barrier, results, data_dir):  # in a spawned process
    barrier.wait()
    path = ds.prepare("digits", data_dir=data_dir)
    results.put((str(path), builders.GENERATION_COUNTS["sew_digits"]))


def test_two_processes_preparing_one_dataset_generate_it_once(tmp_path):
    """Two kernels (or test workers) that ask for the same missing dataset at once: one generates it, the
    other waits for it (without the lock, TFDS's final rename of the second fails: FileExistsError)."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_prepare_at_once, args=(barrier, results, tmp_path)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0, 0]
    (path_a, made_a), (path_b, made_b) = results.get(timeout=5), results.get(timeout=5)
    assert path_a == path_b and made_a + made_b == 1  # one generated, the other reused its result
    assert len(ds.load_split("digits", "test", data_dir=tmp_path)) == ds.info("digits").splits["test"]


# ----------------------------------------------------------------------------------------------------------
# Dataset contents through the loader
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits", "shapes_upstream_small", "shapes_shift", "shapes_count"])
def test_splits_have_the_documented_sizes_and_are_disjoint(data_dir, name):
    info = ds.info(name)
    splits = {s: ds.load_split(name, s, data_dir=data_dir) for s in ds.SPLITS}
    for s, split in splits.items():
        assert len(split) == info.splits[s]
        assert split.images.shape == (info.splits[s], *info.image_shape)
        assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
        assert 0 <= split.labels.min() and split.labels.max() < info.num_classes
    train = _hashes(splits["train"].images)
    assert not train & _hashes(splits["test"].images)
    assert not train & _hashes(splits["validation"].images)


def test_digits_are_real_scaled_and_stratified(data_dir):
    train = ds.load_split("digits", "train", data_dir=data_dir)
    test = ds.load_split("digits", "test", data_dir=data_dir)
    assert (len(train), len(test)) == (1257, 270)
    assert train.images.max() == 255 and train.images.min() == 0
    assert np.bincount(test.labels, minlength=10).min() >= 26  # 270 / 10 = 27 per digit, +-1
    assert set(np.unique(train.images)) <= {round(v * 255 / 16) for v in range(17)}  # 17 grey levels


def test_upstream_hierarchy_is_consistent(data_dir):
    info = ds.info("shapes_upstream_small")
    assert (info.num_classes, info.num_coarse_classes) == (60, 10)
    assert info.coarse_class_names[:3] == ["polygons", "stars", "rings"]
    assert info.class_names[info.fine_to_coarse.tolist().index(1)] == "star3"  # first fine class of "stars"
    assert np.bincount(info.fine_to_coarse).min() >= 2  # every coarse class has several fine classes
    assert len(set(info.class_names)) == 60
    train = ds.load_split("shapes_upstream_small", "train", data_dir=data_dir)
    np.testing.assert_array_equal(train.coarse_labels, info.fine_to_coarse[train.labels])
    assert ds.info("shapes_upstream").fine_to_coarse.tolist() == info.fine_to_coarse.tolist()
    assert ds.info("shapes_upstream").splits == {"train": 50_000, "validation": 5_000, "test": 20_000}


def test_downstream_classes_relate_to_upstream_as_designed():
    upstream = set(ds.info("shapes_upstream").class_names)
    assert not upstream & set(ds.info("shapes_novel").class_names)
    assert not upstream & set(ds.info("shapes_finegrained").class_names)
    assert not upstream & set(ds.info("shapes_finestars").class_names)
    assert ds.info("shapes_shift").class_names == ds.info("shapes_novel").class_names
    assert len(ds.DOWNSTREAM_TASKS) >= 6 and set(ds.DOWNSTREAM_TASKS) < set(ds.DATASETS)
    groups = {ds.info(t).group for t in ds.DOWNSTREAM_TASKS}
    assert groups == {"natural", "specialized", "structured"}
    for t in ds.DOWNSTREAM_TASKS:
        assert ds.info(t).splits == {"train": 800, "validation": 200, "test": 2_000}
    assert ds.info("shapes_count").class_names == ["1", "2", "3", "4", "5", "6"]


def test_shift_test_split_looks_different_from_its_train_split():
    train = tasks.generate("shift", "train", 200)["image"].astype(np.float32)
    test = tasks.generate("shift", "test", 200)["image"].astype(np.float32)
    # Shifted test: greyer objects on high-contrast backgrounds with more noise -> higher pixel spread.
    local = lambda x: np.abs(np.diff(x, axis=2)).mean()  # noqa: E731
    assert local(test) > 1.5 * local(train)


# ----------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------


def test_to_float_maps_uint8_to_minus_one_one():
    out = ds.to_float(np.array([0, 255, 128], np.uint8))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [-1.0, 1.0, 128 / 127.5 - 1.0], atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        ds.to_float(np.zeros(3, np.float32))


def test_batches_shapes_ranges_and_coarse_labels(data_dir):
    it = ds.batches("shapes_upstream_small", "train", 32, seed=0, num_batches=3, data_dir=data_dir)
    got = list(it)
    assert len(got) == 3
    b = got[0]
    assert set(b) == {"image", "label", "coarse_label"}
    assert b["image"].shape == (32, 32, 32, 3) and b["image"].dtype == np.float32
    assert -1.0 <= b["image"].min() and b["image"].max() <= 1.0
    assert b["label"].dtype == np.int32 and b["label"].shape == (32,)
    np.testing.assert_array_equal(
        b["coarse_label"], ds.info("shapes_upstream_small").fine_to_coarse[b["label"]]
    )
    assert set(next(ds.batches("digits", "test", 5, data_dir=data_dir))) == {"image", "label"}


def test_batch_order_is_a_function_of_seed_and_step(data_dir):
    kw = dict(data_dir=data_dir, drop_remainder=False)
    one = list(ds.batches("digits", "validation", 64, seed=3, epochs=2, **kw))
    two = list(ds.batches("digits", "validation", 64, seed=3, epochs=2, **kw))
    other = list(ds.batches("digits", "validation", 64, seed=4, epochs=2, **kw))
    assert len(one) == 10  # 270 examples -> 5 batches per epoch (last one of 14), 2 epochs
    assert [len(b["label"]) for b in one[:5]] == [64, 64, 64, 64, 14]
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(one[0]["image"], other[0]["image"])
    # Each epoch visits every example once, in a different order.
    split = ds.load_split("digits", "validation", data_dir=data_dir)
    epoch0 = np.concatenate([b["label"] for b in one[:5]])
    np.testing.assert_array_equal(np.sort(epoch0), np.sort(split.labels))
    assert not np.array_equal(one[0]["image"], one[5]["image"])
    # Resuming reproduces the stream: batch_at(step) == the step-th batch, start_step skips ahead.
    np.testing.assert_array_equal(
        ds.batch_at("digits", "validation", 64, seed=3, step=7, **kw)["image"], one[7]["image"]
    )
    resumed = next(ds.batches("digits", "validation", 64, seed=3, start_step=6, **kw))
    np.testing.assert_array_equal(resumed["label"], one[6]["label"])
    # Without shuffling the split order is kept.
    first = ds.batch_at("digits", "validation", 4, shuffle=False, data_dir=data_dir)
    np.testing.assert_array_equal(first["label"], split.labels[:4])


def test_augmentation_keeps_shape_and_range_and_is_deterministic(data_dir):
    kw = dict(seed=1, step=0, data_dir=data_dir)
    plain = ds.batch_at("shapes_upstream_small", "train", 16, **kw)
    aug = ds.batch_at("shapes_upstream_small", "train", 16, augment=True, **kw)
    again = ds.batch_at("shapes_upstream_small", "train", 16, augment=True, **kw)
    assert aug["image"].shape == plain["image"].shape and aug["image"].dtype == np.float32
    assert -1.0 <= aug["image"].min() and aug["image"].max() <= 1.0
    np.testing.assert_array_equal(aug["label"], plain["label"])
    np.testing.assert_array_equal(aug["image"], again["image"])
    assert not np.array_equal(aug["image"], plain["image"])


def test_augment_images_by_hand():
    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
    # Seed 1 flips the first image and keeps the second (crop offsets are drawn first, then the flips).
    rng = np.random.default_rng(1)
    rng.integers(0, 3, 2), rng.integers(0, 3, 2)
    assert (rng.random(2) < 0.5).tolist() == [True, False]
    flipped = ds.augment_images(images, ("flip",), np.random.default_rng(1))
    np.testing.assert_array_equal(flipped[0, 0, :, 0], [3, 2, 1, 0])
    np.testing.assert_array_equal(flipped[1], images[1])
    cropped = ds.augment_images(images, ("crop",), np.random.default_rng(0))
    assert cropped.shape == images.shape
    # Every crop is a 4x4 window of the reflect-padded image (padding 1 for height 4).
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    windows = [padded[0, y : y + 4, x : x + 4] for y in range(3) for x in range(3)]
    assert any(np.array_equal(cropped[0], w) for w in windows)


def test_augmentation_respects_what_each_task_allows(data_dir):
    assert ds.info("shapes_position").augmentations == ()
    assert ds.info("shapes_orientation").augmentations == ("crop",)
    assert "flip" not in ds.info("digits").augmentations
    kw = dict(seed=0, step=0, data_dir=data_dir)
    # augment=True on a task that allows nothing changes nothing.
    plain = ds.batch_at("shapes_position", "train", 8, **kw)
    np.testing.assert_array_equal(
        ds.batch_at("shapes_position", "train", 8, augment=True, **kw)["image"], plain["image"]
    )
    flipped = ds.batch_at("shapes_count", "train", 8, augment=("flip",), **kw)["image"]
    assert flipped.shape == (8, 32, 32, 3)
    with pytest.raises(ValueError, match="augment"):
        ds.batch_at("shapes_count", "train", 8, augment=("crop",), **kw)
    with pytest.raises(ValueError, match="augment"):
        ds.batch_at("digits", "train", 8, augment="flip", **kw)
    with pytest.raises(ValueError, match="augment"):
        ds.batch_at("digits", "train", 8, augment=("rotate",), **kw)


# ----------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------


def test_bad_arguments_name_the_parameter(data_dir):
    with pytest.raises(ValueError, match=r"dataset='no_such_set'.*shapes_upstream"):
        ds.load_split("no_such_set", "train", data_dir=data_dir)
    with pytest.raises(ValueError, match=r"dataset="):
        ds.info("")
    with pytest.raises(ValueError, match=r"split='training'.*validation"):
        ds.load_split("digits", "training", data_dir=data_dir)
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(ValueError, match="batch_size"):
            ds.batches("digits", "test", bad, data_dir=data_dir)
    with pytest.raises(ValueError, match=r"batch_size=271.*270"):
        ds.batches("digits", "test", 271, data_dir=data_dir)
    assert (
        len(next(ds.batches("digits", "test", 271, drop_remainder=False, data_dir=data_dir))["label"]) == 270
    )
    with pytest.raises(ValueError, match="epochs"):
        ds.batches("digits", "test", 8, epochs=1, num_batches=2, data_dir=data_dir)
    with pytest.raises(ValueError, match="step"):
        ds.batch_at("digits", "test", 8, step=-1, data_dir=data_dir)
    with pytest.raises(ValueError, match="task"):
        builders.shapes_config("nope")


# ----------------------------------------------------------------------------------------------------------
# Catalog datasets through the same loader
# ----------------------------------------------------------------------------------------------------------


def test_catalog_dataset_not_prepared_gives_an_offline_explanation(tmp_path):
    with mock.patch.object(socket.socket, "connect", side_effect=OSError("network blocked in this test")):
        with pytest.raises(ds.DatasetNotPreparedError) as err:
            ds.load_split("cifar10", "train", data_dir=tmp_path)
    msg = str(err.value)
    assert isinstance(err.value, RuntimeError)
    for needle in (
        "'cifar10'",
        str(tmp_path),
        "network",
        "tensorflow",
        "prepare cifar10",
        "'shapes_upstream'",
    ):
        assert needle in msg, needle
    with pytest.raises(ds.DatasetNotPreparedError, match="shapes_texture"):
        ds.prepare("dtd", data_dir=tmp_path)  # no TensorFlow here: refuses before any download


def test_catalog_dataset_through_tfds_mock_data(tmp_path):
    """``tfds.testing.mock_data`` serves random examples with cifar100's real features (no TF needed).

    mock_data replaces the data_dir, so the builder would report "not prepared"; we tell the loader it is
    (that check is exercised by the test above). Its data source mock supports ``source[i]``, which is
    what the catalog path reads with.
    """
    ds.clear_cache()
    with (
        tfds.testing.mock_data(num_examples=12),
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
    ):
        info = ds.info("cifar100", data_dir=tmp_path)
        split = ds.load_split("cifar100", "train", data_dir=tmp_path)
        batch = ds.batch_at("cifar100", "train", 4, seed=0, step=0, augment=True, data_dir=tmp_path)
    assert (info.num_classes, info.num_coarse_classes, info.image_shape) == (100, 20, (32, 32, 3))
    assert info.source == "catalog"
    assert split.images.shape == (12, 32, 32, 3) and split.images.dtype == np.uint8
    assert split.labels.max() < 100 and split.coarse_labels.max() < 20
    assert batch["image"].shape == (4, 32, 32, 3) and set(batch) == {"image", "label", "coarse_label"}
    ds.clear_cache()


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


class SewTestCatalog(tfds.core.GeneratorBasedBuilder):
    """A stand-in for a catalog dataset: ``tfds.features.Image`` of varying size fed PNG bytes."""

    VERSION = tfds.core.Version("1.0.0")
    pkg_dir_path = Path(__file__).parent  # builders outside a package need this

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
                }
            )
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 20), "test": self._generate_examples(20, 23)}

    def _generate_examples(self, lo, hi):
        for i in range(lo, hi):
            image = np.full((10 + 2 * i, 12, 3), 10 * i, np.uint8)
            yield i, {"image": _png(image), "label": i % 3}


def test_catalog_dataset_prepared_as_real_array_record_files(tmp_path):
    """A catalog dataset with train and test only: the workbook's validation split is the last 10% of its
    train split (the generic plan), disjoint from the workbook's train split."""
    SewTestCatalog(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    info = ds.info("sew_test_catalog", data_dir=tmp_path)
    assert info.splits == {"train": 18, "validation": 2, "test": 3} and info.image_shape == (None, None, 3)
    assert info.split_sources == {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"}
    with pytest.raises(ValueError, match="image_size"):
        ds.load_split("sew_test_catalog", "train", data_dir=tmp_path)
    read = {s: ds.load_split("sew_test_catalog", s, data_dir=tmp_path, image_size=8) for s in ds.SPLITS}
    assert read["train"].images.shape == (18, 8, 8, 3) and read["train"].coarse_labels is None
    ids = {}
    for name, split in read.items():
        # Constant images stay constant after resizing: value 10 * i for example i, label i % 3.
        ids[name] = []
        for image, label in zip(split.images, split.labels, strict=True):
            assert np.unique(image).size == 1
            i = int(image[0, 0, 0]) // 10
            assert i % 3 == label
            ids[name].append(i)
    assert sorted(ids["train"] + ids["validation"]) == list(range(20))
    assert sorted(ids["test"]) == [20, 21, 22]
    with pytest.raises(ValueError, match=r"split='extra' is not a split of dataset 'sew_test_catalog'"):
        ds.load_split("sew_test_catalog", "extra", data_dir=tmp_path, image_size=8)


def test_catalog_split_plans():
    """The published conventions for the catalog datasets the presets name, and the generic rules."""
    from sparse_experts.datasets import splits

    assert splits.plan("cifar100") == {"train": "train[:98%]", "validation": "train[98%:]", "test": "test"}
    assert splits.sizes(splits.plan("cifar100"), splits.RAW_SIZES["cifar100"]) == {
        "train": 49_000, "validation": 1_000, "test": 10_000
    }  # fmt: skip
    imagenet = splits.plan("imagenet2012")
    assert imagenet["test"] == "validation"  # ImageNet's official validation split is the workbook's test
    assert splits.sizes(imagenet, splits.RAW_SIZES["imagenet2012"]) == {
        "train": 1_268_355, "validation": 12_812, "test": 50_000
    }  # fmt: skip
    assert splits.plan("eurosat/rgb:2.0.0")["validation"] == "train[60%:80%]"
    assert splits.plan("dtd") == {s: s for s in ds.SPLITS}
    assert splits.plan("somewhere", ["train", "validation", "test", "extra"]) == {s: s for s in ds.SPLITS}
    assert splits.plan("somewhere", ["train"])["test"] == "train[80%:]"
    assert splits.plan("somewhere", ["train", "validation"])["test"] == "validation"
    for name in splits.KNOWN:  # every plan reads only splits the dataset publishes
        published = splits.RAW_SIZES[name]
        assert all(n > 0 for n in splits.sizes(splits.plan(name), published).values()), name
    with pytest.raises(ValueError, match=r"dataset='cifar100'.*reads split\(s\) \['test'\]"):
        splits.plan("cifar100", ["train", "validation"])
    with pytest.raises(ValueError, match=r"dataset='somewhere'.*needs a 'train' split"):
        splits.plan("somewhere", ["test"])
    with pytest.raises(ValueError, match=r"reads 'train\[90%:\]', which is empty here"):
        ds.loader._catalog_split("tiny", "validation", {"train": 3, "test": 2})


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def test_cli_info_grid_and_errors(data_dir, tmp_path, capsys):
    assert cli_main(["info", "shapes_upstream"]) == 0
    assert "polygons: triangle, square" in capsys.readouterr().out
    out = tmp_path / "digits.png"
    assert (
        cli_main(["--data-dir", str(data_dir), "grid", "digits", "--out", str(out), "--by-class", "2"]) == 0
    )
    from PIL import Image

    with Image.open(out) as img:  # 10 rows (digits) of 2 tiles of (8 + 2) px, scaled 2x
        assert img.size == (2 * 10 * 2, 10 * 10 * 2)
    assert cli_main(["info", "no_such_set"]) == 2
    assert "dataset='no_such_set'" in capsys.readouterr().err


def test_default_data_dir_follows_the_environment(tmp_path):
    with mock.patch.dict(os.environ, {"SPARSE_EXPERTS_DATA_DIR": str(tmp_path)}):
        assert not ds.is_prepared("digits")
        assert ds.prepare("digits") == tmp_path / "tfds" / "sew_digits" / "1.1.0"


# The code that renders each embedded builder's data, and its hash (as the artifact cache hashes code: parsed,
# without comments, docstrings or layout) recorded for the builder's current VERSION. TFDS reuses prepared
# data of the same version, so a renderer change without a version bump would leave stale data on disk.
# Entries are modules, or a module's names after a colon (so that one builder's version bump, which edits
# builders.py, does not change the other builder's hash).
_WRITER = "sparse_experts.datasets.builders:_ArraysBuilder"
RENDERERS = {
    "SewShapes": (
        "sparse_experts.datasets.shapes",
        "sparse_experts.datasets.tasks",
        _WRITER,
        "sparse_experts.datasets.builders:ShapesConfig",
        "sparse_experts.datasets.builders:shapes_config",
        "sparse_experts.datasets.builders:SewShapes",
    ),
    "SewDigits": ("sparse_experts.datasets.digits", _WRITER, "sparse_experts.datasets.builders:SewDigits"),
}
RENDERER_HASHES = {
    ("SewShapes", "1.3.0"): "c0b9ae0de33cf505534939e4adaef44d84b98aea0f7ec6976e0be36952e9c849",
    ("SewDigits", "1.1.0"): "a4670268e90c5668a0db12683fb6a6f1dd03005dd9bdd2f09cfdc080cb13873c",
}


@pytest.mark.parametrize("builder", sorted(RENDERERS))
def test_a_changed_renderer_bumps_the_builder_version(builder):
    digest = hashlib.sha256()
    for name in RENDERERS[builder]:
        module, _, attribute = name.partition(":")
        code = importlib.import_module(module)
        code = getattr(code, attribute) if attribute else code
        digest.update(name.encode())
        digest.update(cache.code_text(inspect.getsource(code)).encode())
    version = str(getattr(builders, builder).VERSION)
    recorded = RENDERER_HASHES.get((builder, version))
    assert recorded == digest.hexdigest(), (
        f"the code that renders {builder} changed (hash {digest.hexdigest()}) but its VERSION is still "
        f"{version} (recorded hash {recorded}): bump {builder}.VERSION and RELEASE_NOTES so prepared data is "
        "regenerated, then record the new (builder, version) hash in RENDERER_HASHES"
    )


def test_the_data_code_is_part_of_every_cache_key():
    """A model trained on other data must not be reused: the renderer is hashed into the cache keys."""
    hashed = cache.code_module_names()
    assert all(name.partition(":")[0] in hashed for modules in RENDERERS.values() for name in modules)

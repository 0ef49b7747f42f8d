"""One loader for every dataset: the embedded ones (TFDS builders prepared into the data_dir on first use)
and TFDS catalog datasets prepared in the same data_dir.

:func:`info` describes a dataset without reading it, :func:`load_split` reads one split into memory once per
process, and :func:`batch_at` / :func:`batches` serve shuffled, optionally augmented batches that are a
function of ``(seed, step)`` only, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import itertools
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core.utils import tqdm_utils

from sparse_experts import paths
from sparse_experts.atomic import exclusive
from sparse_experts.datasets import builders, tasks
from sparse_experts.datasets import splits as split_plans
from sparse_experts.datasets.digits import DIGITS_CLASS_NAMES, DIGITS_SIZES

log = logging.getLogger(__name__)

SPLITS = split_plans.SPLITS
AUGMENTATIONS = ("crop", "flip")

_SHAPES_TASKS = {f"shapes_{task}": task for task in tasks.TASKS}
DATASETS: tuple[str, ...] = ("digits", *_SHAPES_TASKS)
"""Names of the embedded datasets (generated offline on first use)."""
DOWNSTREAM_TASKS: tuple[str, ...] = tuple(n for n, t in _SHAPES_TASKS.items() if not t.startswith("upstream"))
"""The low-data downstream tasks (train 800 / validation 200 / test 200 each)."""

CATALOG_STAND_INS = {
    **dict.fromkeys(("cifar10", "cifar100", "imagenet2012", "imagenet_v2"), "shapes_upstream"),
    **dict.fromkeys(("mnist", "svhn_cropped"), "digits"),
    **dict.fromkeys(("oxford_flowers102", "oxford_iiit_pet"), "shapes_finegrained"),
    "caltech101": "shapes_novel",
    **dict.fromkeys(("dtd", "eurosat", "resisc45"), "shapes_texture"),
    "clevr": "shapes_count",
    "dsprites": "shapes_position",
    "smallnorb": "shapes_orientation",
}
"""Catalog dataset -> the embedded dataset that plays its role offline."""

_CATALOG_GROUPS = {
    **dict.fromkeys(("imagenet2012", "imagenet_v2"), "upstream"),
    **dict.fromkeys(
        ("eurosat", "resisc45", "patch_camelyon", "diabetic_retinopathy_detection"), "specialized"
    ),
    **dict.fromkeys(("clevr", "dsprites", "smallnorb", "kitti", "dmlab"), "structured"),
}
"""VTAB group of a catalog dataset (the others are "natural")."""


def list_datasets() -> list[str]:
    """The embedded dataset names (catalog names also work wherever a name is taken)."""
    return list(DATASETS)


class DatasetNotPreparedError(RuntimeError):
    """A TFDS catalog dataset is not prepared in the data_dir, and cannot be downloaded here."""


@dataclass(frozen=True, eq=False)
class DatasetInfo:
    """What a dataset is, without reading it.

    ``image_shape`` has None for a catalog dataset of varying image sizes (pass ``image_size`` to
    :func:`load_split`). ``fine_to_coarse``: int32 [num_classes], when known ahead of the data. ``splits``
    counts the workbook's splits; ``split_sources`` gives the TFDS split expression each one reads (catalog
    datasets); both are empty for a catalog dataset neither prepared nor of known sizes.
    """

    name: str
    image_shape: tuple[int | None, int | None, int]
    num_classes: int
    class_names: list[str]
    splits: dict[str, int]
    description: str
    group: str  # "upstream" | "natural" | "specialized" | "structured"
    augmentations: tuple[str, ...]
    source: str  # "embedded" | "catalog"
    tfds_name: str
    num_coarse_classes: int | None = None
    coarse_class_names: list[str] | None = None
    fine_to_coarse: np.ndarray | None = field(default=None, repr=False)
    split_sources: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Split:
    """One split in memory: ``images`` uint8 [N, height, width, channels], ``labels`` int32 [N],
    ``coarse_labels`` int32 [N] or None."""

    dataset: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    coarse_labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _check_name(dataset: object) -> str:
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(f"dataset={dataset!r} must be a non-empty string; embedded datasets: {DATASETS}")
    return dataset


def _data_dir(data_dir: str | Path | None) -> Path:
    return Path(data_dir).expanduser().resolve() if data_dir is not None else paths.tfds_data_dir()


def _builder(name: str, data_dir: Path):
    """The TFDS builder of an embedded or catalog dataset."""
    if name == "digits":
        return builders.SewDigits(data_dir=str(data_dir), file_format="array_record")
    if name in _SHAPES_TASKS:
        return builders.SewShapes(
            config=_SHAPES_TASKS[name], data_dir=str(data_dir), file_format="array_record"
        )
    try:
        return tfds.builder(name, data_dir=str(data_dir))
    except tfds.core.registered.DatasetNotFoundError as err:
        raise ValueError(
            f"dataset={name!r} is neither an embedded dataset {DATASETS} nor a TFDS catalog dataset"
        ) from err


def _raw_sizes(builder) -> dict[str, int]:
    """A TFDS builder's own splits and their sizes (empty until it is prepared)."""
    return {s: int(v.num_examples) for s, v in builder.info.splits.items()}


def info(name: str, *, data_dir: str | Path | None = None) -> DatasetInfo:
    """Describe dataset ``name`` (embedded or TFDS catalog) without generating or reading its data."""
    name = _check_name(name)
    if name == "digits":
        return DatasetInfo(
            name=name,
            image_shape=(8, 8, 1),
            num_classes=10,
            class_names=list(DIGITS_CLASS_NAMES),
            splits=dict(DIGITS_SIZES),
            description="scikit-learn's 1,797 real 8x8 handwritten digits (0..16 scaled to 0..255).",
            group="natural",
            augmentations=("crop",),  # a flipped digit is not the same digit
            source="embedded",
            tfds_name="sew_digits",
        )
    if name in _SHAPES_TASKS:
        spec = tasks.TASKS[_SHAPES_TASKS[name]]
        coarse = spec.coarse_names
        return DatasetInfo(
            name=name,
            image_shape=(32, 32, 3),
            num_classes=len(spec.class_names),
            class_names=list(spec.class_names),
            splits=dict(spec.sizes),
            description=spec.description,
            group=spec.group,
            augmentations=spec.augmentations,
            source="embedded",
            tfds_name=f"sew_shapes/{spec.name}",
            num_coarse_classes=None if coarse is None else len(coarse),
            coarse_class_names=None if coarse is None else list(coarse),
            fine_to_coarse=None if coarse is None else _read_only(np.asarray(spec.fine_to_coarse, np.int32)),
        )
    builder = _builder(name, _data_dir(data_dir))
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"dataset={name!r}: the loader needs 'image' and 'label' features, got {list(features)}"
        )
    coarse = features["coarse_label"] if "coarse_label" in features else None
    raw = _raw_sizes(builder) or dict(split_plans.RAW_SIZES.get(split_plans.base_name(name), {}))
    try:
        sources = split_plans.plan(name, list(raw))
        sizes = split_plans.sizes(sources, raw) if raw else {}
    except ValueError:  # load_split says why; info still describes the dataset
        sources, sizes = {}, {}
    group = _CATALOG_GROUPS.get(split_plans.base_name(name), "natural")
    return DatasetInfo(
        name=name,
        image_shape=tuple(features["image"].shape),
        num_classes=int(features["label"].num_classes),
        class_names=list(features["label"].names),
        splits=sizes,
        description=str(builder.info.description).strip().split("\n")[0],
        group=group,
        augmentations=("crop", "flip") if group != "structured" else (),
        source="catalog",
        tfds_name=name,
        num_coarse_classes=None if coarse is None else int(coarse.num_classes),
        coarse_class_names=None if coarse is None else list(coarse.names),
        split_sources=sources,
    )


def _not_prepared_message(name: str, data_dir: Path, reason: str) -> str:
    stand_in = CATALOG_STAND_INS.get(split_plans.base_name(name), "shapes_upstream")
    return (
        f"TFDS catalog dataset {name!r} is not prepared in data_dir {str(data_dir)!r} ({reason}). "
        "It cannot be downloaded here: preparing it needs network access and TensorFlow (the `gpu` install "
        "extra, `pip install -e '.[gpu]'`, adds tensorflow-cpu). On a machine that has both, run\n"
        f"    python -m sparse_experts.datasets --data-dir {data_dir} prepare {name}\n"
        "(it calls download_and_prepare with file_format='array_record'; without --data-dir it uses "
        "$SPARSE_EXPERTS_DATA_DIR/tfds or <repo>/data/tfds). Offline, use the embedded dataset "
        f"{stand_in!r} instead (embedded datasets: {', '.join(DATASETS)})."
    )


def is_prepared(name: str, *, data_dir: str | Path | None = None) -> bool:
    """Whether ``name`` is already prepared in ``data_dir``."""
    return bool(_builder(_check_name(name), _data_dir(data_dir)).is_prepared())


def prepare(name: str, *, data_dir: str | Path | None = None) -> Path:
    """Generate (embedded) or download and prepare (catalog: needs network and TensorFlow) ``name`` unless
    it is ready; returns its folder. For an embedded dataset TFDS's own messages ("Downloading and preparing
    dataset", a warning about the empty folder it fills) are silenced: nothing is downloaded."""
    name = _check_name(name)
    ddir = _data_dir(data_dir)
    embedded = name in DATASETS
    absl = logging.getLogger("absl")
    absl_level = absl.level
    quiet = contextlib.redirect_stdout(io.StringIO()) if embedded else contextlib.nullcontext()
    if embedded:
        absl.setLevel(logging.ERROR)
    try:
        with quiet:
            return _prepare(name, ddir, embedded)
    finally:
        absl.setLevel(absl_level)


def _prepare(name: str, ddir: Path, embedded: bool) -> Path:
    builder = _builder(name, ddir)
    if builder.is_prepared():
        log.info("dataset %s: reusing %s", name, builder.data_dir)
        return Path(builder.data_dir)
    with exclusive(Path(ddir) / ".locks" / f"{name}.lock"):  # two processes: one generates, one waits
        builder = _builder(name, ddir)  # afresh: the other process may have prepared it meanwhile
        if builder.is_prepared():
            log.info("dataset %s: reusing %s (prepared by another process)", name, builder.data_dir)
            return Path(builder.data_dir)
        return _generate(name, builder, ddir, embedded)


def _generate(name: str, builder, ddir: Path, embedded: bool) -> Path:
    if not embedded and importlib.util.find_spec("tensorflow") is None:
        raise DatasetNotPreparedError(_not_prepared_message(name, ddir, "TensorFlow is not installed"))
    how = "generating offline from the embedded recipe (nothing is downloaded)" if embedded else "preparing"
    log.info("dataset %s: %s into %s", name, how, builder.data_dir)
    start = time.perf_counter()
    was_active = tqdm_utils._active
    tqdm_utils.disable_progress_bar()
    try:
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP),
        )
    finally:
        tqdm_utils.display_progress_bar(was_active)
    log.info("dataset %s: prepared in %.1f s", name, time.perf_counter() - start)
    return Path(builder.data_dir)


_CACHE: dict[tuple[str, str, str, int | None], Split] = {}


def clear_cache() -> None:
    """Forget every split read in this process."""
    _CACHE.clear()


def _catalog_split(name: str, split: object, raw_sizes: dict[str, int]) -> str:
    """The TFDS split expression that ``split`` of catalog dataset ``name`` reads: a workbook split through
    its plan (:func:`datasets.splits.plan`), or any other split of the dataset by its own name."""
    if isinstance(split, str) and split in SPLITS:
        plan = split_plans.plan(name, list(raw_sizes))
        if raw_sizes and split_plans.sizes({split: plan[split]}, raw_sizes)[split] == 0:
            raise ValueError(
                f"split={split!r} of dataset {name!r} reads {plan[split]!r}, which is empty here "
                f"(split sizes {raw_sizes}); the workbook's split plan is {plan}"
            )
        return plan[split]
    extra = [s for s in raw_sizes if s not in SPLITS]
    if isinstance(split, str) and split in extra:
        return split
    raise ValueError(
        f"split={split!r} is not a split of dataset {name!r}; allowed: {SPLITS} (the workbook's splits, "
        f"read through its split plan) or the dataset's other splits {tuple(extra)}"
    )


def _resize(images: list[np.ndarray], size: int) -> np.ndarray:
    """Centre-crop each image to a square and resize it to [size, size] (bilinear, Pillow)."""
    out = []
    for im in images:
        h, w = im.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        crop = im[top : top + s, left : left + s]
        squeeze = crop.shape[-1] == 1
        pil = Image.fromarray(crop[..., 0] if squeeze else crop)
        arr = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
        out.append(arr[..., None] if squeeze else arr)
    return np.stack(out)


def _to_arrays(name: str, split: str, records: list[dict], image_size: int | None) -> Split:
    images = [np.asarray(r["image"]) for r in records]
    if image_size is not None and (not images or images[0].shape[:2] != (image_size, image_size)):
        stacked = _resize(images, image_size)
    else:
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            raise ValueError(
                f"dataset={name!r} split={split!r} has images of different sizes ({len(shapes)} shapes); "
                "pass image_size=... to load_split to resize them"
            )
        stacked = np.stack(images) if images else np.zeros((0, 1, 1, 1), np.uint8)
    coarse = None
    if records and "coarse_label" in records[0]:
        coarse = _read_only(np.asarray([int(r["coarse_label"]) for r in records], np.int32))
    return Split(
        dataset=name,
        split=split,
        images=_read_only(stacked.astype(np.uint8, copy=False)),
        labels=_read_only(np.asarray([int(r["label"]) for r in records], np.int32)),
        coarse_labels=coarse,
    )


def _check_classes(name: str, classes: Sequence[int] | None, data_dir) -> tuple[int, ...] | None:
    if classes is None:
        return None
    if isinstance(classes, str | bytes) or not isinstance(classes, Sequence | np.ndarray):
        raise ValueError(f"classes={classes!r} must be a sequence of class indices (or None: every class)")
    kept = tuple(int(c) for c in classes)
    total = info(name, data_dir=data_dir).num_classes
    if not kept or list(kept) != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= total:
        raise ValueError(
            f"classes={list(kept)} is not allowed for dataset={name!r}; expected a non-empty, strictly "
            f"increasing list of class indices in [0, {total})"
        )
    return kept


def _subset(data: Split, classes: tuple[int, ...]) -> Split:
    lookup = np.full(int(data.labels.max(initial=0)) + 1, -1, np.int32)
    lookup[list(classes)] = np.arange(len(classes), dtype=np.int32)
    keep = np.flatnonzero(lookup[data.labels] >= 0) if len(data) else np.zeros(0, np.int64)
    coarse = None if data.coarse_labels is None else _read_only(data.coarse_labels[keep])
    return Split(
        dataset=data.dataset,
        split=data.split,
        images=_read_only(data.images[keep]),
        labels=_read_only(lookup[data.labels[keep]]),
        coarse_labels=coarse,
    )


def load_split(
    name: str,
    split: str,
    *,
    data_dir: str | Path | None = None,
    image_size: int | None = None,
    classes: Sequence[int] | None = None,
) -> Split:
    """Read split ``split`` of dataset ``name`` into memory (cached per process; arrays are read-only).

    ``image_size`` resizes (centre crop + bilinear) every image to [image_size, image_size], needed for
    catalog datasets whose images vary in size. ``classes`` (strictly increasing fine-class indices) keeps
    only the examples of those classes, in stored order, relabelled 0, 1, ... in the order given (coarse
    labels are kept as they are): an upstream subset such as one family's classes.
    """
    name = _check_name(name)
    _check_int("image_size", image_size, 1, or_none=True)
    kept = _check_classes(name, classes, data_dir)
    if kept is not None:
        whole = load_split(name, split, data_dir=data_dir, image_size=image_size)
        key = (str(_data_dir(data_dir)), name, split, image_size, kept)
        if key not in _CACHE:
            _CACHE[key] = _subset(whole, kept)
        return _CACHE[key]
    ddir = _data_dir(data_dir)
    key = (str(ddir), name, split if isinstance(split, str) else repr(split), image_size)
    if key in _CACHE:
        return _CACHE[key]
    start = time.perf_counter()
    if name in DATASETS:
        if not isinstance(split, str) or split not in SPLITS:
            raise ValueError(f"split={split!r} is not a split of this dataset; allowed: {SPLITS}")
        prepare(name, data_dir=ddir)
        source = _builder(name, ddir).as_data_source(split=split)
        records = []
        for lo in range(0, len(source), 4096):
            records.extend(source.__getitems__(list(range(lo, min(lo + 4096, len(source))))))
    else:
        builder = _builder(name, ddir)
        if not builder.is_prepared():
            raise DatasetNotPreparedError(_not_prepared_message(name, ddir, "no prepared files found"))
        source = builder.as_data_source(split=_catalog_split(name, split, _raw_sizes(builder)))
        records = [source[i] for i in range(len(source))]
    out = _to_arrays(name, split, records, image_size)
    log.info("dataset %s/%s: read %d examples in %.1f s", name, split, len(out), time.perf_counter() - start)
    _CACHE[key] = out
    return out


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 images (any shape) -> float32 in [-1, 1]: ``x / 127.5 - 1`` (0 -> -1, 255 -> 1)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"to_float: images must be uint8, got dtype={images.dtype}")
    return images.astype(np.float32) * np.float32(1.0 / 127.5) - np.float32(1.0)


def _resolve_augment(name: str, augment: bool | Sequence[str] | None, data_dir) -> tuple[str, ...]:
    if augment is None or augment is False:
        return ()
    allowed = info(name, data_dir=data_dir).augmentations
    if augment is True:
        return allowed
    augment = (augment,) if isinstance(augment, str) else tuple(augment)
    bad = [a for a in augment if a not in AUGMENTATIONS]
    if bad:
        raise ValueError(f"augment={augment!r}: unknown augmentation(s) {bad}; known: {AUGMENTATIONS}")
    wrong = [a for a in augment if a not in allowed]
    if wrong:
        raise ValueError(
            f"augment={augment!r}: {wrong} would change the label of dataset {name!r}; "
            f"allowed there: {allowed}"
        )
    return augment


def augment_images(
    images: np.ndarray,
    augmentations: Sequence[str],
    rng: np.random.Generator,
    within: tuple[int, int] | None = None,
) -> np.ndarray:
    """Random crop (reflect padding of height // 8 pixels, at least 1) and/or horizontal flip.

    ``images`` uint8 [B, height, width, channels] -> the same shape. ``rng`` draws the crop offsets, then
    the flips, whatever subset of ("crop", "flip") is asked for, so the stream does not depend on it.
    ``within=(start, size)``: ``images`` are rows ``start, start + 1, ...`` of a batch of ``size``, drawn
    for as that whole batch.
    """
    b, h, w, _ = images.shape
    start, size = (0, b) if within is None else within
    pad = max(1, h // 8)
    oy = rng.integers(0, 2 * pad + 1, size)[start : start + b]
    ox = rng.integers(0, 2 * pad + 1, size)[start : start + b]
    flip = (rng.random(size) < 0.5)[start : start + b]
    out = images
    if "crop" in augmentations:
        padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
        rows = oy[:, None] + np.arange(h)
        cols = ox[:, None] + np.arange(w)
        out = padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if "flip" in augmentations:
        out = np.where(flip[:, None, None, None], out[:, :, ::-1], out)
    return out


def _check_int(label: str, value: object, minimum: int, *, or_none: bool = False) -> None:
    """``value`` must be an int >= ``minimum`` (0 or 1), or None when ``or_none``."""
    if or_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        kind = "a positive int" if minimum else "a non-negative int"
        raise ValueError(f"{label}={value!r} must be {kind}{' or None' if or_none else ''}")


def _check_batch_size(batch_size: object, n: int, drop_remainder: bool) -> int:
    _check_int("batch_size", batch_size, 1)
    if drop_remainder and batch_size > n:
        raise ValueError(
            f"batch_size={batch_size} is larger than the split ({n} examples) with drop_remainder=True: "
            "no full batch exists"
        )
    return int(batch_size)


def steps_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Batches per epoch: ``num_examples // batch_size``, or rounded up when keeping the remainder."""
    return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


@functools.lru_cache(maxsize=16)
def _epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    return _read_only(np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n))


def batch_at(
    name: str,
    split: str,
    batch_size: int,
    *,
    seed: int = 0,
    step: int = 0,
    shuffle: bool = True,
    augment: bool | Sequence[str] = False,
    drop_remainder: bool = True,
    data_dir: str | Path | None = None,
    image_size: int | None = None,
    classes: Sequence[int] | None = None,
    rows: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """Batch number ``step`` of the stream :func:`batches` yields: a pure function of (seed, step).
    ``classes``: only those fine classes, relabelled (:func:`load_split`). ``rows=(start, stop)``: only
    those rows of the batch (one process's share; equal to ``batch_at(...)[start:stop]`` for every array).

    Epoch ``e`` visits the split in the order ``np.random.default_rng([seed, e]).permutation(N)`` (split
    order without ``shuffle``); augmentation draws from ``np.random.default_rng([seed, e, step_in_epoch])``.
    Returns {"image": float32 [B, height, width, channels] in [-1, 1], "label": int32 [B]} and
    "coarse_label" int32 [B] when the dataset has one; the last batch of an epoch is smaller when
    ``drop_remainder`` is False.
    """
    data = load_split(name, split, data_dir=data_dir, image_size=image_size, classes=classes)
    n = len(data)
    batch_size = _check_batch_size(batch_size, n, drop_remainder)
    _check_int("step", step, 0)
    augs = _resolve_augment(name, augment, data_dir)
    epoch, i = divmod(int(step), steps_per_epoch(n, batch_size, drop_remainder))
    idx = _epoch_order(n, int(seed), epoch, bool(shuffle))[i * batch_size : (i + 1) * batch_size]
    if rows is not None:
        start, stop = rows
        if not (0 <= start < stop <= len(idx)):
            raise ValueError(f"rows={rows!r} must be (start, stop) with 0 <= start < stop <= {len(idx)}")
        within, idx = (start, len(idx)), idx[start:stop]
    images = data.images[idx]
    if augs:
        rng = np.random.default_rng([int(seed), epoch, i])
        images = augment_images(images, augs, rng, None if rows is None else within)
    out = {"image": to_float(images), "label": data.labels[idx]}
    if data.coarse_labels is not None:
        out["coarse_label"] = data.coarse_labels[idx]
    return out


def batches(
    name: str,
    split: str,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    augment: bool | Sequence[str] = False,
    epochs: int | None = None,
    num_batches: int | None = None,
    start_step: int = 0,
    drop_remainder: bool = True,
    data_dir: str | Path | None = None,
    image_size: int | None = None,
    classes: Sequence[int] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Iterate over the batches :func:`batch_at` gives for steps ``start_step, start_step + 1, ...``.

    ``augment``: False, True (every augmentation the dataset allows) or a subset of ("crop", "flip");
    asking for one the dataset forbids (a flip on ``shapes_orientation``) raises ValueError. ``epochs``
    stops after that many passes, ``num_batches`` after that many batches; at most one, neither means an
    endless stream. ``drop_remainder=False`` (evaluation) sees every example once per epoch. Arguments are
    checked at the call, before the first batch.
    """
    if epochs is not None and num_batches is not None:
        raise ValueError(f"give epochs={epochs!r} or num_batches={num_batches!r}, not both")
    _check_int("epochs", epochs, 0, or_none=True)
    _check_int("num_batches", num_batches, 0, or_none=True)
    _check_int("start_step", start_step, 0)
    data = load_split(name, split, data_dir=data_dir, image_size=image_size, classes=classes)
    batch_size = _check_batch_size(batch_size, len(data), drop_remainder)
    _resolve_augment(name, augment, data_dir)
    if epochs is not None:
        steps = range(start_step, epochs * steps_per_epoch(len(data), batch_size, drop_remainder))
    elif num_batches is not None:
        steps = range(start_step, start_step + num_batches)
    else:
        steps = itertools.count(start_step)
    kwargs = dict(
        shuffle=shuffle, augment=augment, drop_remainder=drop_remainder, data_dir=data_dir, classes=classes
    )
    return (
        batch_at(name, split, batch_size, seed=seed, step=s, image_size=image_size, **kwargs) for s in steps
    )

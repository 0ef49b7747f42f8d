"""The embedded datasets as real tensorflow-datasets builders (array_record files, read back without TF).

``sew_digits`` (``digits.py``) and ``sew_shapes/<config>`` (``tasks.py``, one :class:`ShapesConfig` per task
with its seed and split sizes) write ``Tensor`` uint8 images with ``encoding="bytes"`` (raw bytes, several
times faster than TFDS's default int64 list) and ``ClassLabel`` labels, so preparing and reading need no
TensorFlow. Importing this module registers them with TFDS; ``sew_`` (sparse experts workbook) keeps the
names clear of the TFDS catalog.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import tensorflow_datasets as tfds

from sparse_experts.datasets import tasks
from sparse_experts.datasets.digits import DIGITS_CLASS_NAMES, DIGITS_SEED, DIGITS_SIZES, digits_splits
from sparse_experts.datasets.splits import SPLITS

GENERATION_COUNTS: Counter[str] = Counter()
"""How many times each builder/config generated its examples in this process (tests check reuse)."""


class _ArraysBuilder(tfds.core.GeneratorBasedBuilder):
    """Writes splits given as arrays (abstract: TFDS does not register it)."""

    def _generate_examples(self, arrays: dict[str, np.ndarray]):
        keys = [k for k in ("label", "coarse_label") if k in arrays]
        for i in range(len(arrays["label"])):
            yield i, {"image": arrays["image"][i], **{k: int(arrays[k][i]) for k in keys}}


class SewDigits(_ArraysBuilder):
    """scikit-learn's 1,797 handwritten 8x8 digits, fixed stratified splits of 1,257 / 270 / 270."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: load_digits scaled to 0..255, stratified splits from seed 0.",
        "1.1.0": "Images stored as raw bytes (Tensor encoding='bytes'); same pixels and splits.",
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(
                "scikit-learn's load_digits (UCI optical digits): 1,797 real 8x8 greyscale handwritten "
                "digits, grey levels 0..16 scaled to 0..255, fixed stratified splits (seed "
                f"{DIGITS_SEED}): {DIGITS_SIZES}."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8, encoding="bytes"),
                    "label": tfds.features.ClassLabel(names=list(DIGITS_CLASS_NAMES)),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        GENERATION_COUNTS["sew_digits"] += 1
        splits = digits_splits(DIGITS_SEED)
        return {name: self._generate_examples(splits[name]) for name in SPLITS}


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """A shapes task with its seed and split sizes (``sizes`` as ((split, n), ...), empty = the defaults)."""

    task: str = "upstream"
    seed: int = 0
    sizes: tuple[tuple[str, int], ...] = ()

    def split_sizes(self) -> dict[str, int]:
        return dict(self.sizes) if self.sizes else dict(tasks.TASKS[self.task].sizes)


def shapes_config(task: str, *, seed: int = 0, sizes: dict[str, int] | None = None) -> ShapesConfig:
    """A :class:`ShapesConfig`; non-default seeds or sizes get their own config name (own directory).

    Example: ``shapes_config("upstream_small", seed=1, sizes={"train": 64, "validation": 16, "test": 16})``
    is named ``upstream_small_seed1_n64-16-16``.
    """
    if task not in tasks.TASKS:
        raise ValueError(f"shapes_config: unknown task={task!r}; allowed: {tuple(tasks.TASKS)}")
    if sizes is not None and set(sizes) != set(SPLITS):
        raise ValueError(f"shapes_config: sizes={sizes!r} must give a size for each split {SPLITS}")
    name = task + (f"_seed{seed}" if seed != 0 else "")
    if sizes is not None:
        name += "_n" + "-".join(str(int(sizes[s])) for s in SPLITS)
    return ShapesConfig(
        name=name,
        description=tasks.TASKS[task].description,
        task=task,
        seed=int(seed),
        sizes=tuple((s, int(sizes[s])) for s in SPLITS) if sizes is not None else (),
    )


class SewShapes(_ArraysBuilder):
    """Procedurally rendered 32x32 RGB shapes: an upstream pretraining set and low-data downstream tasks."""

    VERSION = tfds.core.Version("1.3.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: 60-class upstream set (10 families) and 7 downstream tasks (novel, "
        "finegrained, shift, texture, count, position, orientation).",
        "1.1.0": "Images stored as raw bytes (Tensor encoding='bytes'): about 4x faster to prepare, 1.5x "
        "faster to read; same pixels.",
        "1.2.0": "A clean look for the upstream set and the natural tasks (objects within 2 px of the "
        "centre, turned at most 30 degrees, never mirrored, radius 9-13 px; half the backgrounds plain, "
        "faint textures; no specks or lines; faint noise), so that a small model learns the classes; test "
        "splits of 20,000 (upstream) and 2,000 (downstream) images.",
        "1.3.0": "A new task, finestars (six new members of the 'stars' family); the other tasks' images are "
        "unchanged.",
    }
    BUILDER_CONFIGS = [shapes_config(task) for task in tasks.TASKS]
    DEFAULT_CONFIG_NAME = "upstream_small"

    def _info(self) -> tfds.core.DatasetInfo:
        cfg: ShapesConfig = self.builder_config
        spec = tasks.TASKS[cfg.task]
        features = {
            "image": tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8, encoding="bytes"),
            "label": tfds.features.ClassLabel(names=list(spec.class_names)),
        }
        if spec.coarse_names is not None:
            features["coarse_label"] = tfds.features.ClassLabel(names=list(spec.coarse_names))
        return self.dataset_info_from_configs(
            description=(
                f"{spec.description} Group: {spec.group}. Rendered with numpy from seed {cfg.seed}; split "
                f"sizes {cfg.split_sizes()}."
            ),
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        cfg: ShapesConfig = self.builder_config
        GENERATION_COUNTS[f"sew_shapes/{cfg.name}"] += 1
        sizes = cfg.split_sizes()
        return {s: self._generate_examples(tasks.generate(cfg.task, s, sizes[s], cfg.seed)) for s in SPLITS}

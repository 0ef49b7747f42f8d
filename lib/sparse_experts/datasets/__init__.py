"""Datasets of the workbook: embedded offline datasets as real TFDS builders, and one loader for all.

Embedded (generated offline on first use into ``paths.tfds_data_dir()``; see ``data/README.md``):

- ``digits``: scikit-learn's 1,797 real 8x8 handwritten digits.
- ``shapes_upstream`` (50k train) / ``shapes_upstream_small`` (2k train): 32x32 RGB procedural shapes,
  60 fine classes in 10 coarse families (``label`` and ``coarse_label``).
- :data:`DOWNSTREAM_TASKS`: low-data tasks (800 / 200 / 200) rendered in the same style:
  ``shapes_novel``, ``shapes_finegrained``, ``shapes_shift`` (natural), ``shapes_texture`` (specialized),
  ``shapes_count``, ``shapes_position``, ``shapes_orientation`` (structured).

Any other name is a TFDS catalog dataset (``cifar10``, ``cifar100``, ``oxford_flowers102``, ``dtd``, ...),
read through the same API when prepared in the same data_dir; ``splits.plan`` says which part of it each of
the workbook's train / validation / test splits reads (CIFAR's validation is the last 2% of its train split).

Usage::

    from sparse_experts import datasets
    datasets.info("shapes_upstream_small").num_classes           # 60
    train = datasets.load_split("shapes_upstream_small", "train")  # images uint8 [N, 32, 32, 3]
    for batch in datasets.batches("shapes_novel", "train", 64, seed=0, augment=True, epochs=1):
        batch["image"]  # float32 [B, 32, 32, 3] in [-1, 1]
"""

from sparse_experts.datasets.loader import (
    AUGMENTATIONS,
    CATALOG_STAND_INS,
    DATASETS,
    DOWNSTREAM_TASKS,
    SPLITS,
    DatasetInfo,
    DatasetNotPreparedError,
    Split,
    augment_images,
    batch_at,
    batches,
    clear_cache,
    info,
    is_prepared,
    list_datasets,
    load_split,
    prepare,
    steps_per_epoch,
    to_float,
)

__all__ = [
    "AUGMENTATIONS",
    "CATALOG_STAND_INS",
    "DATASETS",
    "DOWNSTREAM_TASKS",
    "SPLITS",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "Split",
    "augment_images",
    "batch_at",
    "batches",
    "clear_cache",
    "info",
    "is_prepared",
    "list_datasets",
    "load_split",
    "prepare",
    "steps_per_epoch",
    "to_float",
]

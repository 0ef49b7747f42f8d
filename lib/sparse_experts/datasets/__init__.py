"""Datasets of the workbook: embedded offline datasets as real TFDS builders, and one loader for all.

Embedded (generated offline on first use into ``paths.tfds_data_dir()``): ``digits`` (scikit-learn's real
8x8 digits), ``shapes_upstream`` / ``shapes_upstream_small`` (32x32 procedural shapes, 60 fine classes in
10 coarse families) and the low-data :data:`DOWNSTREAM_TASKS`. Any other name is a TFDS catalog dataset
(``cifar10``, ``dtd``, ...) read through the same API when prepared in the same data_dir. ``data/README.md``
describes every dataset and the split plans of catalog ones.

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

"""Notebook 00's figures: what each dataset of the tour holds, whether it is prepared here, and its label
hierarchy. Catalog datasets that this machine has not prepared are reported, never downloaded."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparse_experts import datasets

# The figures of :func:`figures` that the index page shows.
HEADLINE = (
    "upstream_train_examples",
    "upstream_classes",
    "upstream_coarse_classes",
    "downstream_tasks_ready",
)


@dataclass
class DatasetSummary:
    """One dataset of the tour: its train ``split`` and ``info`` (None when not prepared here, and then
    ``problem`` says why), and ``record``: the plain figures saved for it."""

    name: str
    split: Any
    info: Any
    problem: str | None
    record: dict[str, Any]


def summarize(name: str, *, upstream: bool = False) -> DatasetSummary:
    """Load the train split of dataset ``name`` and describe it: ``name``, ``prepared`` and for a prepared
    dataset ``num_classes``, ``splits`` and, for the ``upstream`` set, ``num_coarse_classes``,
    ``image_shape``, ``load_seconds`` and (with a label hierarchy) ``train_images_per_class`` (min, max), for
    a downstream task its VTAB-like ``group``."""
    started = time.perf_counter()
    generated_now = name in datasets.list_datasets() and not datasets.is_prepared(name)
    try:
        split = datasets.load_split(name, "train")
    except datasets.DatasetNotPreparedError as err:
        return DatasetSummary(name, None, None, str(err), {"name": name, "prepared": False})
    if generated_now:  # datasets.prepare keeps TFDS's "Downloading and preparing" line quiet for these
        print(f"{name}: generated on this machine from the workbook's recipe (first use; nothing downloaded)")
    info = datasets.info(name)
    record: dict[str, Any] = {"name": name, "prepared": True, "num_classes": info.num_classes}
    if not upstream:
        record.update(splits=dict(info.splits), group=info.group)
        return DatasetSummary(name, split, info, None, record)
    record.update(num_coarse_classes=info.num_coarse_classes, splits=dict(info.splits),
                  image_shape=list(info.image_shape),
                  load_seconds=round(time.perf_counter() - started, 2))  # fmt: skip
    if info.fine_to_coarse is not None:
        counts = np.bincount(split.labels, minlength=info.num_classes)
        record["train_images_per_class"] = {"min": int(counts.min()), "max": int(counts.max())}
    return DatasetSummary(name, split, info, None, record)


def label_hierarchy(summary: DatasetSummary) -> list[dict[str, Any]] | None:
    """One row per fine class: its ``coarse`` class, ``fine`` name and ``train images``; None when the
    dataset is not prepared or has no coarse labels."""
    info = summary.info
    if summary.split is None or info.fine_to_coarse is None:
        return None
    counts = np.bincount(summary.split.labels, minlength=info.num_classes)
    return [
        {"coarse": info.coarse_class_names[c], "fine": fine, "train images": int(n)}
        for c, fine, n in zip(info.fine_to_coarse, info.class_names, counts, strict=True)
    ]


def task_row(summary: DatasetSummary) -> dict[str, Any]:
    """A downstream task as one row of the tour's table: task, group, classes, split sizes, note."""
    if summary.split is None:
        return {"task": summary.name, "group": "?", "classes": None, "note": "not prepared here"}
    info = summary.info
    return {"task": summary.name, "group": info.group, "classes": info.num_classes, **info.splits,
            "note": info.description}  # fmt: skip


def figures(upstream: DatasetSummary, downstream: Sequence[DatasetSummary]) -> dict[str, Any]:
    """Notebook 00's saved figures: the headline counts (:data:`HEADLINE`) and every dataset's record."""
    record = upstream.record
    return {
        "upstream_train_examples": record.get("splits", {}).get("train", 0),
        "upstream_classes": record.get("num_classes", 0),
        "upstream_coarse_classes": record.get("num_coarse_classes") or 0,
        "downstream_tasks_ready": sum(task.record["prepared"] for task in downstream),
        "downstream_tasks_requested": len(downstream),
        "upstream": record,
        "downstream": [task.record for task in downstream],
    }

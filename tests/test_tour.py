"""Notebook 00's figures (sparse_experts.workbook.tour) and its dataset views (viz.classes_across_groups,
viz.dataset_grid, viz.label_treemap), on embedded datasets and a catalog dataset that is not prepared."""

from __future__ import annotations

import numpy as np
import pytest

from sparse_experts import datasets
from sparse_experts.workbook import tour, viz


@pytest.fixture(scope="module")
def upstream():
    return tour.summarize("shapes_upstream_small", upstream=True)


def test_upstream_summary_and_hierarchy(upstream):
    record = upstream.record
    assert upstream.problem is None and record["prepared"] is True
    assert record["num_classes"] == 60 and record["num_coarse_classes"] == 10
    assert record["splits"] == {"train": 2000, "validation": 500, "test": 500}
    assert record["image_shape"] == [32, 32, 3] and record["load_seconds"] >= 0
    counts = np.bincount(upstream.split.labels, minlength=60)
    assert record["train_images_per_class"] == {"min": int(counts.min()), "max": int(counts.max())}
    rows = tour.label_hierarchy(upstream)
    assert len(rows) == 60 and sum(r["train images"] for r in rows) == 2000
    info = upstream.info
    assert rows[0] == {"coarse": info.coarse_class_names[info.fine_to_coarse[0]], "fine": info.class_names[0],
                       "train images": int(counts[0])}  # fmt: skip
    fig = viz.label_treemap(rows, root="shapes_upstream_small")
    treemap = fig.data[0]
    assert treemap.values[0] == 2000 and len(treemap.ids) == 1 + 10 + 60 and treemap.parents[0] == ""
    with pytest.raises(ValueError, match="rows is empty"):
        viz.label_treemap([], root="x")


def test_downstream_rows_and_figures(upstream, tmp_path, monkeypatch):
    ready = tour.summarize("digits")
    splits = {"train": 1257, "validation": 270, "test": 270}
    assert ready.record == {"name": "digits", "prepared": True, "num_classes": 10, "splits": splits,
                            "group": "natural"}  # fmt: skip
    assert tour.label_hierarchy(ready) is None  # digits has no coarse labels
    row = tour.task_row(ready)
    assert row["task"] == "digits" and row["classes"] == 10 and row["train"] == 1257
    monkeypatch.setenv("SPARSE_EXPERTS_DATA_DIR", str(tmp_path / "data"))
    missing = tour.summarize("cifar10")  # a catalog dataset nobody prepared here: reported, not downloaded
    assert missing.record == {"name": "cifar10", "prepared": False} and missing.split is None
    assert missing.problem and tour.task_row(missing)["note"] == "not prepared here"
    assert tour.label_hierarchy(missing) is None
    figures = tour.figures(upstream, [ready, missing])
    assert figures["upstream_train_examples"] == 2000 and figures["upstream_classes"] == 60
    assert figures["upstream_coarse_classes"] == 10
    assert figures["downstream_tasks_ready"] == 1 and figures["downstream_tasks_requested"] == 2
    assert set(tour.HEADLINE) <= set(figures)
    nothing = tour.figures(tour.summarize("cifar100", upstream=True), [])
    assert nothing["upstream_train_examples"] == 0 and nothing["upstream"]["prepared"] is False


def test_classes_across_groups_cover_every_group_first():
    fine_to_coarse = np.array([0, 0, 0, 1, 1, 2])
    labels = np.arange(6).repeat(3)
    chosen = viz.classes_across_groups(labels, fine_to_coarse, 3, seed=0)
    assert sorted({int(fine_to_coarse[c]) for c in chosen}) == [0, 1, 2]  # one class of each group
    assert chosen == sorted(chosen) and chosen == viz.classes_across_groups(labels, fine_to_coarse, 3, seed=0)
    five = viz.classes_across_groups(labels, fine_to_coarse, 5, seed=1)
    assert 5 in five and sum(int(fine_to_coarse[c]) == 1 for c in five) == 2  # groups 0 and 1 twice
    assert viz.classes_across_groups(labels, None, 99, seed=0) == list(range(6))  # at most what is present
    with pytest.raises(ValueError, match="shown=0"):
        viz.classes_across_groups(labels, None, 0)


def test_dataset_grid_labels_rows_by_hierarchy(upstream):
    fig = viz.dataset_grid(
        upstream.split, upstream.info, classes_shown=4, images_per_class=2, seed=0, title="t"
    )
    ticks = list(fig.layout.yaxis.ticktext)
    assert len(ticks) == 4 and all(" / " in t for t in ticks)
    digits = datasets.load_split("digits", "train")
    plain = viz.dataset_grid(digits, datasets.info("digits"), classes_shown=3, images_per_class=2)
    assert len(plain.layout.yaxis.ticktext) == 3 and " / " not in plain.layout.yaxis.ticktext[0]

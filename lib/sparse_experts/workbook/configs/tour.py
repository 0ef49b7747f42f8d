"""00_tour: what is in this workbook, and what do the datasets look like?

Expected run time: cpu about 40 s (measured 20 s on a quiet machine, 9 s warm), plus about 25 s the first
time, which generates the embedded data (a first run may be flagged as over time); smoke about 6 s; gpu, tpu
not measured (catalog data that is not prepared is reported, not downloaded).

Headline figures on cpu (measured 2026-11-29 with `make run PRESET=cpu OFFLINE=1` from an empty cache, 2-core
machine): ``upstream_train_examples`` 50000, ``upstream_classes`` 60, ``upstream_coarse_classes`` 10,
``downstream_tasks_ready`` 7.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import NotebookConfig, dataset_list, dataset_name, integer, knob


@dataclass(frozen=True, kw_only=True)
class Config(NotebookConfig):
    notebook: ClassVar[str] = "00_tour"

    upstream: str = knob("upstream (pretraining) dataset to show", dataset_name)
    downstream: tuple[str, ...] = knob("downstream tasks to show, a list of dataset names", dataset_list)
    images_per_class: int = knob("images per class in each example grid", integer(1, 16))
    classes_shown: int = knob("classes shown per example grid", integer(1, 40))


EMBEDDED_DOWNSTREAM = ("shapes_novel", "shapes_finegrained", "shapes_texture", "shapes_count",
                       "shapes_position", "shapes_orientation", "shapes_shift")  # fmt: skip
CATALOG_DOWNSTREAM = ("cifar10", "oxford_flowers102", "dtd", "oxford_iiit_pet", "svhn_cropped", "eurosat")

PRESETS = {
    "smoke": dict(upstream="shapes_upstream_small", downstream=EMBEDDED_DOWNSTREAM[:2], images_per_class=2,
                  classes_shown=6),
    "cpu": dict(upstream="shapes_upstream", downstream=EMBEDDED_DOWNSTREAM, images_per_class=4,
                classes_shown=12),
    "gpu": dict(upstream="cifar100", downstream=CATALOG_DOWNSTREAM, images_per_class=4, classes_shown=12),
    "tpu": dict(upstream="imagenet2012", downstream=CATALOG_DOWNSTREAM, images_per_class=4, classes_shown=12),
    "gpu_embedded": dict(upstream="shapes_upstream", downstream=EMBEDDED_DOWNSTREAM, images_per_class=4,
                         classes_shown=12),
}  # fmt: skip

EXPECTED_SECONDS = {"smoke": None, "cpu": 40, "gpu": None, "tpu": None, "gpu_embedded": None}

"""05_ensembles: can cheap kNN ranking pick which pre-trained models to fine-tune and ensemble?

Mustafa et al. (2020), "Deep Ensembles for Low-Data Transfer Learning": rank a pool of differently
pre-trained models by kNN accuracy on the downstream data, fine-tune the best few, and greedily build an
ensemble that minimises validation cross-entropy. The pool (:mod:`sparse_experts.workbook.pool`) is notebook
02's recipe with one thing changed per member; members shared with 02 are the same cache entries.

Expected run time: cpu about 40 min with notebook 02's models in the cache (measured 2402 s on 2026-11-29 on
a 2-core machine that a helper's smoke runs shared for part of it: the six pool members 02 does not train
770 s, then 91 fine-tuning sweeps of 3 learning rates and 7 seed ensembles, 1,435 s, ranking 19 s); about
27 min once the pool is trained; a rerun with everything cached in about 2 min. smoke about 15 s warm;
gpu, tpu not measured.

Headline figures on cpu (re-measured 2026-11-30 after 02's recipe changed, `python -m sparse_experts.workbook
run --preset cpu --only 05` with 02's models cached, quiet 2-core machine, 2003 s; 13 members, 7 tasks of 800
training and 2,000 test images): ``knn_spearman`` +0.68 (2 standard errors over the test images 0.04; LEEP
+0.66, H-score +0.65, LogME +0.61, NCE +0.53); ``cost_ratio`` 80 (ranking the pool by kNN against
fine-tuning it with its sweep); ``greedy_gain_over_seeds`` -0.005 (within noise, 2 standard errors 0.7
points; -13.6 points on the shifted test split of ``shapes_shift``); the greedy ensemble beats the best
single member chosen on validation by +1.0 points (2 standard errors 0.6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import NotebookConfig, dataset_list, fail, integer, knob, names_from, one_of, positive_list
from .tour import CATALOG_DOWNSTREAM, EMBEDDED_DOWNSTREAM

# The pool members sparse_experts.workbook.pool knows how to build (its module docstring tables them).
MEMBER_NAMES = (
    "dense", "dense_s1", "vmoe", "vmoe_s1", "expert_choice", "soft_moe", "dense_large", "dense_narrow",
    "dense_bigpatch", "dense_coarse", "dense_half", "dense_polygons", "dense_augment",
)  # fmt: skip
ESTIMATORS = ("knn", "logme", "leep", "nce", "h_score")


@dataclass(frozen=True, kw_only=True)
class Config(NotebookConfig):
    notebook: ClassVar[str] = "05_ensembles"

    members: tuple[str, ...] = knob(
        "the pool: upstream models to rank and fine-tune", names_from(MEMBER_NAMES)
    )
    tasks: tuple[str, ...] = knob("downstream tasks (dataset names)", dataset_list)
    train_examples: int = knob("training examples per task (the first ones, stored order)", integer(8, 10**6))
    learning_rates: tuple[float, ...] = knob(
        "fine-tuning sweep: peak learning rates, one vmapped copy each", positive_list(1, 1.0)
    )
    finetune_steps: int = knob("fine-tuning steps per copy", integer(1, 10**6))
    finetune_batch_size: int = knob(
        "fine-tuning batch size (a multiple of 02's group_size)", integer(1, 4096)
    )
    finetune_warmup: int = knob(
        "linear warmup steps of fine-tuning, at most finetune_steps", integer(0, 10**6)
    )
    ensemble_size: int = knob("K: members of each ensemble (and seeds of the seed ensemble)", integer(1, 32))
    knn_k: int = knob("neighbours of the kNN ranking", integer(1, 100))
    knn_metric: str = knob("distance of the kNN ranking", one_of("euclidean", "cosine"))
    bootstrap_samples: int = knob("bootstrap samples of each interval", integer(100, 100_000))
    eval_batch_size: int = knob("batch size of feature extraction and evaluation", integer(1, 65536))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.finetune_warmup > self.finetune_steps:
            fail("finetune_warmup", self.finetune_warmup, f"at most finetune_steps={self.finetune_steps}")
        if self.ensemble_size > len(self.members):
            fail("ensemble_size", self.ensemble_size, f"at most the pool's {len(self.members)} members")


_COMMON = dict(knn_k=1, knn_metric="cosine", bootstrap_samples=2000, members=MEMBER_NAMES)
PRESETS = {
    # A tiny pool on two tasks: proves the pipeline (pool, ranking, fine-tuning, ensembles) runs.
    "smoke": dict(
        _COMMON, members=("dense", "vmoe", "dense_coarse", "dense_polygons"),
        tasks=("shapes_novel", "shapes_shift"), train_examples=64, learning_rates=(1e-3, 3e-3),
        finetune_steps=4, finetune_batch_size=16, finetune_warmup=1, ensemble_size=2, bootstrap_samples=200,
        eval_batch_size=250,
    ),
    "cpu": dict(
        _COMMON, tasks=EMBEDDED_DOWNSTREAM, train_examples=800, learning_rates=(3e-4, 1e-3, 3e-3),
        finetune_steps=100, finetune_batch_size=64, finetune_warmup=10, ensemble_size=5, eval_batch_size=400,
    ),
    "gpu": dict(
        _COMMON, tasks=CATALOG_DOWNSTREAM, train_examples=1000, learning_rates=(1e-4, 3e-4, 1e-3),
        finetune_steps=500, finetune_batch_size=128, finetune_warmup=50, ensemble_size=5,
        eval_batch_size=1000,
    ),
    "tpu": dict(
        _COMMON, tasks=CATALOG_DOWNSTREAM, train_examples=1000, learning_rates=(1e-4, 3e-4, 1e-3),
        finetune_steps=500, finetune_batch_size=128, finetune_warmup=50, ensemble_size=5,
        eval_batch_size=1000,
    ),
    # Not part of the GPU CI (00-04); the pool is notebook 02's gpu_embedded recipe with one change each.
    "gpu_embedded": dict(
        _COMMON, tasks=EMBEDDED_DOWNSTREAM, train_examples=800, learning_rates=(1e-4, 3e-4, 1e-3),
        finetune_steps=300, finetune_batch_size=128, finetune_warmup=30, ensemble_size=5,
        eval_batch_size=1000,
    ),
}  # fmt: skip

# cpu: after notebook 02 (its members come from the cache), pool extras and fine-tuning from an empty cache.
EXPECTED_SECONDS = {"smoke": None, "cpu": 2400, "gpu": None, "tpu": None, "gpu_embedded": None}

"""04_adaptive_compute: how much accuracy does each unit of compute buy when capacity is cut at test time,
with and without BPR?

Reads the models notebook 02 recorded in the same output folder (trains the preset's when 02 has not run).
Expected run time: cpu about 2 min with 02's models in the cache (measured 75 s on a 2-core machine, all
20,000 test images); smoke about 11 s; gpu, tpu not measured.

Headline figures on cpu (measured 2026-11-30 with `make run PRESET=cpu ONLY=02,03,04 OFFLINE=1` from an
empty cache, quiet 2-core machine; 75 s): ``claim_verdict`` "reproduced"; from capacity factor 1 (vanilla
87.5%, BPR 87.5%), vanilla routing loses 13.7 / 8.3 / 3.0 points at capacity factors 0.1 / 0.25 / 0.5 and
BPR 8.2 / 4.3 / 1.6 (noise: 2 standard errors on 20,000 images, 0.5 points); ``vanilla_accuracy_at_low``
0.791, ``bpr_accuracy_at_low`` 0.832 at capacity factor 0.25.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from . import train_vmoe
from .base import NotebookConfig, fail, integer, knob, positive_list, real


@dataclass(frozen=True, kw_only=True)
class Config(NotebookConfig):
    notebook: ClassVar[str] = "04_adaptive_compute"

    capacity_factors: tuple[float, ...] = knob(
        "test-time capacity factors of the sweep (top-k V-MoE)", positive_list(2, 16.0)
    )
    low_capacity_factor: float = knob(
        "capacity factor at which compute per image is shown", real(0, 16, low_open=True)
    )
    claim_threshold: float = knob(
        "capacity factors at or below this count as 'well below 1' in the claim check", real(0, 1)
    )
    eval_images: int = knob(
        "test images evaluated (the first ones, stored order; a multiple of notebook 02's group_size)",
        integer(1, 1_000_000),
    )
    eval_batch_size: int = knob(
        "images per evaluation batch (fixed; a multiple of notebook 02's group_size)", integer(1, 65536)
    )
    extremes_shown: int = knob("images shown with the most and with the least compute", integer(1, 32))

    def __post_init__(self) -> None:
        super().__post_init__()
        group = train_vmoe.PRESETS[self.preset]["group_size"]
        for name in ("eval_batch_size", "eval_images"):
            if (value := getattr(self, name)) % group:
                fail(name, value, f"a multiple of notebook 02's group_size={group} under this preset")


# Every factor compiles the forward pass once per sweep (3 sweeps): under cpu about 9 s per factor and sweep
# on a 5000-image test split (measured on 2 busy cores); on all 20,000 images the notebook takes about 97 s.
_FACTORS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5)
_COMMON = dict(capacity_factors=_FACTORS, low_capacity_factor=0.25, claim_threshold=0.5, extremes_shown=8)
PRESETS = {
    "smoke": dict(_COMMON, capacity_factors=(0.5, 1.0), low_capacity_factor=0.5, eval_images=250,
                  eval_batch_size=250, extremes_shown=6),
    "cpu": dict(_COMMON, eval_images=20_000, eval_batch_size=1000),
    "gpu": dict(_COMMON, eval_images=10_000, eval_batch_size=1000),
    "tpu": dict(_COMMON, eval_images=50_000, eval_batch_size=1024),
    "gpu_embedded": dict(_COMMON, eval_images=20_000, eval_batch_size=1000),
}  # fmt: skip

EXPECTED_SECONDS = {"smoke": None, "cpu": 120, "gpu": None, "tpu": None, "gpu_embedded": None}

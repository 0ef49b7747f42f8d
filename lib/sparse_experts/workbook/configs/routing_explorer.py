"""03_routing_explorer: which patches go to which expert, what gets dropped, and do experts specialise?

Reads the models notebook 02 recorded in the same output folder (trains the preset's when 02 has not run).
Expected run time: cpu about 60 s with 02's models in the cache (measured 24 s); smoke about 11 s; gpu,
tpu not measured.

Headline figures on cpu (measured 2026-11-30 with `make run PRESET=cpu ONLY=02,03,04 OFFLINE=1`, 02's
models from an empty cache, quiet 2-core machine, 25 s; 02's V-MoE seed 0 at 87.6% test accuracy; layer 3,
the last MoE layer of depth 4): ``main_dropped_fraction`` 0.199, ``main_specialisation`` "clear
specialisation" (class TV 66% against 16% with shuffled labels, coarse 49% against 6%; expert 6 takes 51%
of its weight from 'polygons'), ``main_ablation_change`` -0.0045 (switching off expert 6 costs 0.5 points on
2,000 images; the most important expert of the layer, 5, costs 1.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sparse_experts.models import placement_layers

from . import train_vmoe
from .base import NotebookConfig, boolean, fail, integer, knob, names_from, real


@dataclass(frozen=True, kw_only=True)
class Config(NotebookConfig):
    notebook: ClassVar[str] = "03_routing_explorer"

    eval_images: int = knob(
        "test images analysed (the first ones in stored order; a multiple of notebook 02's group_size)",
        integer(1, 1_000_000),
    )
    image_index: int = knob("which of those images the patch view shows first (0-based)", integer(0, 999_999))
    layer: int = knob(
        "MoE layer shown first: a layer index, or -1 for each model's last MoE layer", integer(-1, 127)
    )
    k: int = knob(
        "top-k choices per token at test time (at most notebook 02's num_experts)", integer(1, 1024)
    )
    capacity_factor: float = knob("test-time capacity factor", real(0, 16, low_open=True))
    batch_priority: bool = knob("Batch Prioritized Routing at test time (training used none)", boolean)
    low_capacity_factor: float = knob(
        "capacity factor of the dropped-patch view (vanilla against BPR, the V-MoE paper's picture)",
        real(0, 16, low_open=True),
    )
    ablate_expert: int = knob(
        "expert switched off in the ablation: an index, or -1 for the most specialised one", integer(-1, 1023)
    )
    models: tuple[str, ...] = knob(
        "MoE models of notebook 02 to explore (each among notebook 02's models for the preset)",
        names_from(train_vmoe.MOE_MODELS),
    )

    def __post_init__(self) -> None:
        """Against notebook 02's values for the preset: its models, group size, E and MoE layers."""
        super().__post_init__()
        zoo = train_vmoe.PRESETS[self.preset]
        if any(m not in zoo["models"] for m in self.models):
            trained = ", ".join(m for m in zoo["models"] if m in train_vmoe.MOE_MODELS)
            fail("models", self.models, f"models notebook 02 trains under {self.preset!r}: {trained}")
        group, experts = zoo["group_size"], zoo["num_experts"]
        if self.eval_images % group:
            fail("eval_images", self.eval_images, f"a multiple of notebook 02's group_size={group}")
        if self.image_index >= self.eval_images:
            fail("image_index", self.image_index, f"an integer in [0, eval_images={self.eval_images})")
        if self.k > experts:
            fail("k", self.k, f"an integer in [1, num_experts={experts}] (notebook 02's num_experts)")
        if self.ablate_expert >= experts:
            fail("ablate_expert", self.ablate_expert, f"-1 or an expert index in [0, {experts})")
        if self.layer >= 0:
            for name in self.models:
                layers = placement_layers("last-2" if name == "vmoe_last2_k2" else "every-2", zoo["depth"])
                if self.layer not in layers:
                    fail(
                        "layer", self.layer, f"-1 or an MoE layer of every explored model ({name}: {layers})"
                    )


_COMMON = dict(
    image_index=0,
    layer=-1,
    k=2,
    capacity_factor=1.05,
    batch_priority=False,
    low_capacity_factor=0.25,
    ablate_expert=-1,
)
PRESETS = {
    "smoke": dict(_COMMON, eval_images=250, models=("vmoe_every2_k2", "expert_choice", "soft_moe")),
    "cpu": dict(_COMMON, eval_images=2000, models=("vmoe_every2_k2", "expert_choice", "soft_moe")),
    "gpu": dict(_COMMON, eval_images=2000, models=train_vmoe.MOE_MODELS),
    "tpu": dict(_COMMON, eval_images=2000, models=train_vmoe.MOE_MODELS),
    "gpu_embedded": dict(_COMMON, eval_images=2000, models=("vmoe_every2_k2", "expert_choice", "soft_moe")),
}

EXPECTED_SECONDS = {"smoke": None, "cpu": 60, "gpu": None, "tpu": None, "gpu_embedded": None}

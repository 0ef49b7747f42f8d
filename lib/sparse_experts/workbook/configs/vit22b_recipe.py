"""01_vit22b_recipe: what does each ViT-22B ingredient buy, why does QK-norm matter, and what would 22B
parameters cost?

Expected run time: cpu about 5.5 min (measured 150-154 s on a quiet machine); smoke about 25 s; gpu, tpu
not measured.

Headline figures on cpu (measured 2026-11-29 with `make run PRESET=cpu OFFLINE=1` from an empty cache, 2-core
machine): ``vit22b_params`` 21,756,396,520; ``logit_ratio_at_top_lr`` 2859; ``lr_sensitivity_plain`` 0.568;
``lr_sensitivity_qk_norm`` 0.0993; ``parallel_over_sequential_step_time`` 0.57-0.91 (wall clock, noisy);
``qk_norm_verdict`` "reproduced". The logit ratio at the top learning rate is a ratio of two maxima of
diverging runs: a change of float rounding alone moved it between 2859 and 10620.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sparse_experts.models import vit_config

from .base import NotebookConfig, dataset_name, fail, integer, knob, positive_list, vit_size


@dataclass(frozen=True, kw_only=True)
class Config(NotebookConfig):
    notebook: ClassVar[str] = "01_vit22b_recipe"

    dataset: str = knob("dataset for the small-scale experiments (upstream)", dataset_name)
    image_size: int = knob(
        "image side in pixels fed to the models (a multiple of the patch)", integer(8, 512)
    )
    model: str = knob("ViT size string for the experiments, e.g. 'mu/4' or 'S/16'", vit_size)
    batch_size: int = knob("training batch size", integer(1, 65536))
    learning_rates: tuple[float, ...] = knob(
        "learning rates of the QK-norm sweep (>= 5, spanning >= 2 orders)",
        positive_list(5, 10.0, min_spread=100),
    )
    sweep_steps: int = knob("training steps per learning rate in the sweep", integer(1, 1_000_000))
    compare_steps: int = knob(
        "training steps of the parallel vs sequential comparison", integer(2, 1_000_000)
    )
    plan_devices: int = knob("devices of the mesh the 22B memory plan is made for", integer(1, 65536))
    plan_model_axis: int = knob("size of that mesh's 'model' axis (divides plan_devices)", integer(1, 1024))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.plan_devices % self.plan_model_axis:
            fail("plan_model_axis", self.plan_model_axis, f"a divisor of plan_devices={self.plan_devices}")
        patch = vit_config(self.model).patch_size
        if self.image_size % patch:
            fail(
                "image_size", self.image_size, f"a multiple of the patch size {patch} of model={self.model!r}"
            )


_SWEEP_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
_PLAN = dict(plan_devices=1024, plan_model_axis=8)
PRESETS = {
    "smoke": dict(_PLAN, dataset="digits", image_size=8, model="mu/2", batch_size=16,
                  learning_rates=(1e-3, 1e-2, 1e-1, 3e-1, 1.0), sweep_steps=12, compare_steps=6),
    # digits learns within a few hundred steps on 2 cores, so the loss against learning rate is informative;
    # on the shapes upstream set a micro ViT is still near chance after 200 steps (measured: loss 3.8-4.1
    # against ln 60 = 4.09), which leaves nothing to compare.
    "cpu": dict(_PLAN, dataset="digits", image_size=8, model="mu/2", batch_size=64,
                learning_rates=_SWEEP_RATES, sweep_steps=300, compare_steps=300),
    "gpu": dict(_PLAN, dataset="cifar100", image_size=32, model="S/4", batch_size=256,
                learning_rates=_SWEEP_RATES, sweep_steps=2000, compare_steps=2000),
    "tpu": dict(_PLAN, dataset="imagenet2012", image_size=224, model="S/16", batch_size=128,
                learning_rates=_SWEEP_RATES, sweep_steps=5000, compare_steps=5000),
    # The gpu model on the embedded upstream set at its full 32x32; steps cut to minutes on one GPU.
    "gpu_embedded": dict(_PLAN, dataset="shapes_upstream", image_size=32, model="S/4", batch_size=256,
                         learning_rates=_SWEEP_RATES, sweep_steps=300, compare_steps=300),
}  # fmt: skip

EXPECTED_SECONDS = {"smoke": None, "cpu": 330, "gpu": None, "tpu": None, "gpu_embedded": None}

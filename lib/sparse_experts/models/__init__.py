"""Models: the one MLP (:mod:`.mlp`), the ViT with the ViT-22B recipe flags (:mod:`.vit`), the MoE layer
(:mod:`.moe`), adapter expert models on one backbone (:mod:`.adapters`), and sizing on paper: parameters,
FLOPs, memory per device (:mod:`.sizing`).

Layer: imports :mod:`sparse_experts.routing` and :mod:`sparse_experts.parallel`, nothing above.
"""

from sparse_experts.models.adapters import AdapterExperts, combine, transplant, with_adapters
from sparse_experts.models.mlp import Mlp
from sparse_experts.models.moe import MoeMlp, apply_stacked, stacked_experts
from sparse_experts.models.sizing import (
    activation_bytes,
    flops_per_image,
    memory_plan,
    moe_layer_activation_bytes,
    param_count,
)
from sparse_experts.models.vit import (
    SIZES,
    MoeConfig,
    Norm,
    ViT,
    VitConfig,
    moe_layers,
    placement_layers,
    vit_config,
)

"""Models: the one MLP (:mod:`.mlp`: a ViT's dense MLP and, stacked over E, every expert), the ViT with the
ViT-22B recipe flags (:mod:`.vit`), the MoE layer that plugs into it (:mod:`.moe`), and sizing on paper:
parameters, FLOPs, memory per device (:mod:`.sizing`).

Layer: imports :mod:`sparse_experts.routing` and :mod:`sparse_experts.parallel`, nothing above.
"""

from sparse_experts.models.mlp import Mlp
from sparse_experts.models.moe import MoeMlp, apply_stacked, stacked_experts
from sparse_experts.models.sizing import (
    OPTIMIZER_MOMENTS,
    GiB,
    MemoryPlan,
    activation_bytes,
    flops_per_image,
    memory_plan,
    param_count,
)
from sparse_experts.models.vit import (
    DTYPES,
    NORMS,
    POOLS,
    POSEMBS,
    ROUTERS,
    SIZES,
    Attention,
    Encoder,
    EncoderBlock,
    MapHead,
    MoeConfig,
    Norm,
    ParallelBlock,
    ViT,
    VitConfig,
    attend,
    make_mlp,
    moe_layers,
    placement_layers,
    sincos2d,
    vit_config,
)

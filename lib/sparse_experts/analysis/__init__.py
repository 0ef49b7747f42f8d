"""Analysis of trained models (notebooks 01, 03, 04).

Layer: imports ``models``, ``parallel``, ``routing`` and ``train``, nothing above.
"""

from sparse_experts.analysis import ablation, bootstrap, specialisation, stability
from sparse_experts.analysis.ablation import AblationScan, ablation_scan
from sparse_experts.analysis.claims import VERDICTS, Claim
from sparse_experts.analysis.layer_stats import accuracy, layer_rows, per_layer
from sparse_experts.analysis.routes import (
    RECORD_KEYS,
    ablate_expert,
    accuracy_per_class,
    bpr_claim_check,
    capacity_sweep,
    compute_per_image,
    expert_class_affinity,
    expert_load,
    patch_choices,
    route,
    router_entropy,
)
from sparse_experts.analysis.selection import overrides_for, resolve_layer, shown_choices, token_choices
from sparse_experts.analysis.specialisation import Specialisation, class_specialisation

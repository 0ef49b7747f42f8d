"""Analysis of trained models: routing records over an image set, expert/class affinity, expert ablation,
test-time capacity sweeps.

Layer: imports :mod:`sparse_experts.models` and :mod:`sparse_experts.routing`, nothing above.
"""

from sparse_experts.analysis import ablation, specialisation, stability
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
    top_and_bottom,
)
from sparse_experts.analysis.selection import overrides_for, resolve_layer, shown_choices, token_choices
from sparse_experts.analysis.specialisation import Specialisation, class_specialisation

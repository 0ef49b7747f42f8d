"""What the papers report, for each notebook's "paper says / here we see" line.

:data:`PUBLISHED` holds, per claim, the paper, where in it, and what it reports (its number where it gives
one; where it shows a figure and no single number, the text says so). :func:`paper_and_here` puts one
beside this run's measurement, which the notebook computes; nothing measured is written here.
"""

from __future__ import annotations

import dataclasses

VIT22B = "Dehghani et al. 2023 (ViT-22B)"
VMOE = "Riquelme et al. 2021 (V-MoE)"
ENSEMBLES = "Mustafa et al. 2020 (deep ensembles for low-data transfer)"
EXPERTS = "Puigcerver et al. 2021 (scalable transfer learning with expert models)"


@dataclasses.dataclass(frozen=True)
class Published:
    """One published claim: the ``paper``, ``where`` in it, and what it ``says``."""

    paper: str
    where: str
    says: str


PUBLISHED = {
    "vit22b_size": Published(
        VIT22B, "Table 1",
        "ViT-22B (width 6,144, depth 48, MLP 24,576, 48 heads, patch 14) has 21.7 billion parameters.",
    ),
    "qk_norm": Published(
        VIT22B, "its model section (QK normalisation)",
        "without QK normalisation, an 8-billion-parameter ViT diverged after a few thousand steps: its "
        "attention logits grew without bound and the attention became almost one-hot (near-zero "
        "entropy); LayerNorm on queries and keys removed the divergence.",
    ),
    "parallel_block": Published(
        VIT22B, "its model section (parallel layers)",
        "running attention and MLP in parallel with fused projections trains about 15% faster at large scale "
        "with no loss in quality (as in PaLM).",
    ),
    "vmoe_compute": Published(
        VMOE, "abstract",
        "V-MoE matches the performance of state-of-the-art dense networks while requiring as little as half "
        "of the compute at inference time.",
    ),
    "vmoe_routing": Published(
        VMOE, "its analysis of routing decisions",
        "experts in the early MoE layers show little correlation with the classes, while those in the last "
        "layers correlate with them strongly (shown as expert x class figures, not as one number).",
    ),
    "bpr": Published(
        VMOE, "its section on Batch Prioritized Routing",
        "with BPR, a V-MoE keeps its accuracy at capacity factors well below 1 (down to processing only a "
        "fraction of the patches), where vanilla routing loses accuracy quickly; BPR drops the patches the "
        "router is least sure about, and compute per image becomes adaptive (shown as curves, not one "
        "number).",
    ),
    "ensembles": Published(
        ENSEMBLES, "abstract",
        "ranking a pool by kNN accuracy, fine-tuning the best and greedily ensembling them reaches the state "
        "of the art on the 19 VTAB-1k tasks at a lower inference budget, even when selecting from over 2,000 "
        "pre-trained models; ensembles of differently pre-trained models beat seed ensembles.",
    ),
    "experts": Published(
        EXPERTS, "abstract",
        "experts trained on slices of an existing label hierarchy, the relevant one chosen for each new task "
        "by a cheap performance proxy (kNN accuracy) without access to the pre-training data, transfer "
        "better than a generalist on tasks that match an expert's slice; the selection is 2-3 orders of "
        "magnitude cheaper than fine-tuning every expert, and an adapter-based architecture compresses many "
        "experts into a single model.",
    ),
}  # fmt: skip


def paper_and_here(key: str, here: str) -> str:
    """Markdown: what the paper says about claim ``key`` of :data:`PUBLISHED` and what this run measured
    (``here``, a sentence the notebook builds from its numbers)."""
    if key not in PUBLISHED:
        raise ValueError(f"key={key!r} is not a published claim; expected one of {sorted(PUBLISHED)}")
    if not isinstance(here, str) or not here.strip():
        raise ValueError(f"here={here!r} is not valid; expected this run's measurement as a sentence")
    claim = PUBLISHED[key]
    return f"**Paper says** ({claim.paper}, {claim.where}): {claim.says}  \n**Here we see**: {here.strip()}"

"""What a routing explorer selects: the test-time settings that fit a model's router, the layer shown, and
one image's token choices in a routing record.

Shape letters: B images, N tokens per image, E experts, K choices shown per token.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from sparse_experts import models
from sparse_experts.analysis.routes import _check_index, patch_choices
from sparse_experts.routing import fail


def overrides_for(
    moe: models.MoeConfig, k: int, capacity_factor: float, batch_priority: bool
) -> dict[str, Any] | None:
    """``moe_overrides`` for :func:`sparse_experts.analysis.route` that make sense for ``moe.router``:

    - ``"top_k"``: ``k``, ``capacity_factor`` and ``batch_priority`` as given;
    - ``"expert_choice"``: only ``capacity_factor = k x capacity_factor`` (its capacity factor is the mean
      number of experts per token, so this gives the expert slots of top-k routing with these settings);
    - ``"soft"``: ``None`` (its slots are parameters: no dial).
    """
    if not isinstance(moe, models.MoeConfig):
        fail("moe", type(moe).__name__, "a sparse_experts.models.MoeConfig")
    if moe.router == "soft":
        return None
    if moe.router == "expert_choice":
        return dict(capacity_factor=k * capacity_factor)
    return dict(k=k, capacity_factor=capacity_factor, batch_priority=batch_priority)


def resolve_layer(config: models.VitConfig, layer: int) -> int:
    """``layer`` if it is one of ``config``'s MoE layers; ``-1`` means the last MoE layer (as in Python, and
    where V-MoE sees experts specialise most), ``-2`` the one before it, and so on."""
    layers = models.moe_layers(config)
    if not layers:
        fail("config", config.name, "a model with MoE layers")
    if (
        isinstance(layer, bool)
        or not isinstance(layer, numbers.Integral)
        or (layer >= 0 and layer not in layers)
        or layer < -len(layers)
    ):
        fail("layer", layer, f"one of the MoE layers {layers}, or -1 (the last) to -{len(layers)} (first)")
    return layers[layer] if layer < 0 else int(layer)


def shown_choices(moe: models.MoeConfig, k: int) -> int:
    """How many choices per token a patch view shows: ``k`` (at most E) for top-k, 2 for expert choice and
    Soft MoE (their experts ranked by gate or combine weight)."""
    if moe.router == "top_k":
        return max(1, min(k, moe.num_experts))
    return max(1, min(2, moe.num_experts))


def token_choices(
    moe: models.MoeConfig, record: Mapping[str, Any], index: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``index``'s token choices in one layer's ``record`` (``"gates"`` and ``"combine_weights"``
    ``[B, N, E]``, as from ``analysis.route``): the first :func:`shown_choices` experts of each token by
    gate ``[N, K]``, whether each choice was dropped ``[N, K]``, and their gate values ``[N, K]``."""
    gates = np.asarray(record["gates"])
    index = _check_index("index", index, len(gates), f"B={len(gates)}")
    gates, weights = gates[index], np.asarray(record["combine_weights"])[index]
    chosen, dropped = patch_choices(gates, weights, k=shown_choices(moe, k))
    return chosen, dropped, np.take_along_axis(gates, chosen, axis=1)

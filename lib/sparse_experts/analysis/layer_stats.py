"""Per-layer routing statistics of one model over an image set: the table and the saved figures of the
routing explorer (dropped fraction, capacity, router entropy, busiest expert, accuracy).

Shape letters: B images, N tokens per image, E experts, Y classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sparse_experts.analysis.routes import _check_labels, expert_load, router_entropy
from sparse_experts.routing import fail


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``logits`` ``[B, Y]`` against ``labels`` ``[B]``."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        fail("logits", f"<array of shape {logits.shape}>", "an array [B, Y]")
    labels = _check_labels(labels, logits.shape[0], logits.shape[1])
    return float(np.mean(logits.argmax(1) == labels))


def layer_rows(
    records: Mapping[int, Mapping[str, Any]],
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    weighted: bool = False,
) -> list[dict[str, Any]]:
    """One row per MoE layer of ``records`` (as from ``analysis.route``): ``layer``, ``dropped fraction``,
    ``capacity C``, ``router entropy (nats)``, ``max entropy log E``, ``busiest expert share`` (of the
    token-choices, or with ``weighted=True`` of the combine weight: the measure for Soft MoE) and
    ``accuracy (these images)`` of ``logits`` ``[B, Y]``."""
    if not records:
        fail("records", "{}", "a non-empty mapping layer -> record")
    correct = accuracy(logits, labels)
    return [
        {
            "layer": layer,
            "dropped fraction": record["dropped_fraction"],
            "capacity C": record["capacity"],
            "router entropy (nats)": router_entropy(record["gates"]),
            "max entropy log E": float(np.log(np.shape(record["gates"])[-1])),
            "busiest expert share": float(expert_load(record["combine_weights"], weighted=weighted).max()),
            "accuracy (these images)": correct,
        }
        for layer, record in records.items()
    ]


def per_layer(records: Mapping[int, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{str(layer): {"dropped_fraction", "entropy", "load" [E]}}``: what the explorer saves per layer."""
    return {
        str(layer): {
            "dropped_fraction": record["dropped_fraction"],
            "entropy": router_entropy(record["gates"]),
            "load": record["load"],
        }
        for layer, record in records.items()
    }

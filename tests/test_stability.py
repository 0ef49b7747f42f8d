"""Notebook 01's measurements on hand-built sweeps: the stable threshold, the sweep table, the two QK-norm
claims and their verdict, the block comparison row, and the paper-scale sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparse_experts import models, parallel, train
from sparse_experts.analysis import stability

NAN = np.nan
RATES = [0.01, 0.1, 1.0]


def sweep(loss, max_logit, diverged_at) -> train.SweepResult:
    """R=3 rates, T=2 steps, L=1 layer; accuracy 1 - loss / 4, entropy 0.5 at every step."""
    loss, max_logit = np.asarray(loss, float), np.asarray(max_logit, float)
    metrics = [
        {"loss": loss[:, t].tolist(), "accuracy": (1 - loss[:, t] / 4).tolist(),
         "attn_max_logit": max_logit[:, t].tolist(), "attn_entropy": [[0.5]] * 3}
        for t in range(2)
    ]  # fmt: skip
    return train.SweepResult(RATES, np.zeros(3), np.zeros(3), metrics, diverged_at=diverged_at)


# Worked example (last=1: the final loss is the loss at the last step).
# plain: finals [1.0, 0.5, inf (diverged)], max logits [2, 4, 50];
# QK-norm: finals [1.0, 0.6, 0.7], max logits [1, 2, 2.5].
# Initial loss 2.0 (every copy starts there); best final 0.5 -> stable threshold 0.5 + 0.1 * 1.5 = 0.65.
# Stable: plain [F, T, F], QK-norm [F, T, F]. Sensitivity: plain mean(0.5, 0, 1.5) = 2/3 (diverged counts as
# the initial loss 2.0); QK-norm mean(0.4, 0, 0.1) = 1/6. Logit ratio at lr=1: 50 / 2.5 = 20.
PLAIN = sweep([[2.0, 1.0], [2.0, 0.5], [2.0, NAN]], [[[1], [2]], [[3], [4]], [[50], [NAN]]], [None, None, 1])
QK = sweep([[2.0, 1.0], [2.0, 0.6], [2.0, 0.7]], [[[1], [1]], [[1], [2]], [[2], [2.5]]], [None, None, None])


def test_stable_threshold_and_table_by_hand():
    initial, threshold = stability.stable_threshold([PLAIN, QK], last=1)
    assert initial == pytest.approx(2.0) and threshold == pytest.approx(0.65)
    table = stability.sweep_table({"plain attention": PLAIN, "QK-norm": QK}, threshold, last=1)
    assert list(table[("plain attention", "stable")]) == [False, True, False]
    assert list(table[("QK-norm", "stable")]) == [False, True, False]
    np.testing.assert_allclose(table[("plain attention", "max logit")], [2, 4, 50])
    np.testing.assert_allclose(table[("QK-norm", "final accuracy")], [0.75, 0.85, 0.825])
    np.testing.assert_allclose(table[("QK-norm", "final entropy")], [0.5] * 3)
    with pytest.raises(ValueError, match="no sweeps"):
        stability.stable_threshold([])


def test_qk_norm_claims_by_hand():
    claims = stability.qk_norm_claims(PLAIN, QK, last=1)
    logits, stable_range = claims["logit_growth"], claims["stable_range"]
    assert logits.verdict == stable_range.verdict == "reproduced"
    assert logits.numbers["ratio"] == pytest.approx(20.0) and logits.numbers["learning_rate"] == 1.0
    assert stable_range.numbers["lr_sensitivity_plain"] == pytest.approx(2 / 3)
    assert stable_range.numbers["lr_sensitivity_qk_norm"] == pytest.approx(1 / 6)
    assert stable_range.numbers["stable_plain"] == [False, True, False]
    assert "ratio 20" in logits.sentence and "diverged: plain 1, QK-norm 0" in stable_range.sentence
    assert stability.qk_norm_verdict(claims).startswith("reproduced: QK-norm kept attention logits bounded")
    # A 25x bar fails the logits check (20x); a 0.2 factor fails the range check (1/6 > 0.2 * 2/3).
    only_range = stability.qk_norm_claims(PLAIN, QK, last=1, ratio_needed=25)
    assert only_range["logit_growth"].verdict == "not reproduced"
    assert stability.qk_norm_verdict(only_range).startswith("partly reproduced: the stable range was wider")
    only_logits = stability.qk_norm_claims(PLAIN, QK, last=1, sensitivity_factor=0.2)
    assert stability.qk_norm_verdict(only_logits).startswith(
        "partly reproduced: QK-norm kept attention logits"
    )
    neither = stability.qk_norm_claims(PLAIN, QK, last=1, ratio_needed=25, sensitivity_factor=0.2)
    assert stability.qk_norm_verdict(neither).startswith("not reproduced at this scale")
    other_rates = train.SweepResult([0.1, 0.2, 0.3], np.zeros(3), np.zeros(3), QK.metrics)
    with pytest.raises(ValueError, match="differ in learning rates"):
        stability.qk_norm_claims(PLAIN, other_rates)


def test_sweep_figures_are_json_with_the_claims():
    sweeps = {"plain attention": PLAIN, "QK-norm": QK}
    claims = stability.qk_norm_claims(PLAIN, QK, last=1)
    figures = stability.sweep_figures(sweeps, claims, last=1)
    assert figures["learning_rates"] == RATES and figures["logit_ratio_at_top_lr"] == pytest.approx(20.0)
    assert figures["qk_norm_verdict"] == stability.qk_norm_verdict(claims)
    assert figures["qk_norm_claims"]["stable_range"]["verdict"] == "reproduced"
    np.testing.assert_allclose(figures["max_logit_qk_norm"], [1, 2, 2.5])
    json.dumps({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in figures.items()})


def test_block_row_and_step_time_ratio_by_hand():
    config = models.vit_config("mu/4", image_size=8, channels=1, num_classes=3, width=16, depth=1, mlp_dim=32,
                               num_heads=2)  # fmt: skip
    history = train.History(metrics=[{"loss": v} for v in (3.0, 2.0, 1.0)], step_seconds=[9.0, 1.0, 3.0, 2.0])
    row = stability.block_row(config, history, {"accuracy": 0.5, "loss": 1.5, "count": 4}, last=2)
    assert row == {"parameters": models.param_count(config), "median step s": 2.0, "final train loss": 1.5,
                   "test accuracy": 0.5, "test loss": 1.5}  # fmt: skip
    rows = {"sequential": {"median step s": 2.0}, "parallel": {"median step s": 1.5}}
    assert stability.step_time_ratio(rows) == pytest.approx(0.75)


def test_paper_sizes_read_the_sizing_functions():
    config = models.vit_config("Ti/16", image_size=32, num_classes=10)
    mesh = {"data": 2, "model": 2}
    gib = stability.memory_gib_per_device(config, mesh, 8)
    plan = models.memory_plan(config, mesh, 8, optimizer="adam", rules=parallel.FSDP_RULES)
    assert gib == {part: v / 2**30 for part, v in plan.per_device_bytes().items()} and "total" in gib
    (row,) = stability.paper_sizes({"tiny": config}, mesh, 8)
    assert row["model"] == "tiny" and row["parameters"] == models.param_count(config)
    assert row["GFLOPs / image (fwd)"] == pytest.approx(models.flops_per_image(config) / 1e9)
    assert row["total GiB/device"] == gib["total"] and row["depth L"] == config.depth

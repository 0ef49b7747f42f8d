"""analysis.ablation: the expert-ablation scan on a tiny real V-MoE (2 layers, MoE at layer 1, E=4 experts,
8x8 images, Y=5 classes) and the summary sentence on a hand-made scan."""

from __future__ import annotations

import numpy as np
import pytest

from sparse_experts import analysis
from sparse_experts.analysis import ablation

E, Y = 4, 5


@pytest.fixture(scope="module")
def model(tiny_vmoe):  # conftest: 2 layers, MoE at layer 1, E experts, Y classes, 8x8 images
    return tiny_vmoe


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(12, 8, 8, 3)).astype(np.float32)


def test_scan_on_a_tiny_model(model, images):
    overrides = dict(k=1, capacity_factor=1.0)
    logits, records = analysis.route(model, images, batch_size=6, moe_overrides=overrides)
    labels = logits.argmax(1)  # the intact model is right on every image: each ablation can only lose
    scan = analysis.ablation_scan(model, images, labels, 1, batch_size=6, moe_overrides=overrides)
    assert scan.layer == 1 and scan.accuracy == 1.0
    assert scan.per_expert_change.shape == (E,) and scan.per_class_change.shape == (E, Y)
    np.testing.assert_array_equal(scan.class_counts, np.bincount(labels, minlength=Y))
    assert (scan.per_expert_change <= 0).all()
    for expert in range(E):
        # the change is minus the share of images whose prediction flips with the expert off (same settings)
        off, _ = analysis.route(analysis.ablate_expert(model, 1, expert), images, batch_size=6,
                                moe_overrides=overrides)  # fmt: skip
        assert scan.per_expert_change[expert] == pytest.approx(-np.mean(off.argmax(1) != labels))
        # per-class changes weighted by class size add up to the overall change
        seen = scan.class_counts > 0
        weighted = np.sum(scan.per_class_change[expert][seen] * scan.class_counts[seen]) / len(labels)
        assert weighted == pytest.approx(scan.per_expert_change[expert])
        if records[1]["load"][expert] == 0:  # an expert that processed nothing costs nothing
            assert scan.per_expert_change[expert] == 0
    given = analysis.ablation_scan(model, images, labels, 1, batch_size=6, moe_overrides=overrides,
                                   base_logits=logits)  # fmt: skip
    np.testing.assert_array_equal(given.per_expert_change, scan.per_expert_change)
    assert scan.most_costly_expert == int(np.argmin(scan.per_expert_change))
    with pytest.raises(ValueError, match="layer=0"):
        analysis.ablation_scan(model, images, labels, 0, batch_size=6)
    with pytest.raises(ValueError, match="base_logits"):
        analysis.ablation_scan(model, images, labels, 1, batch_size=6, base_logits=logits[:3])


def hand_scan(per_expert_change):
    # 5 images: classes a, a, b, b, c; expert 1 off costs class 'b' both its images
    return analysis.AblationScan(
        layer=3, accuracy=0.8, per_expert_change=np.asarray(per_expert_change),
        per_class_change=np.array([[0.0, 0.0, 0.0], [0.0, -1.0, 0.0], [-0.5, 0.0, 0.0]]),
        class_counts=np.array([2, 2, 1]),
    )  # fmt: skip


# combine weights [B=5, N=1, E=3]: class 'a' sends expert 1 a quarter of its weight, class 'b' all of it
WEIGHTS = np.array(
    [[[1.0, 0.0, 0.0]], [[0.5, 0.5, 0.0]], [[0.0, 1.0, 0.0]], [[0.0, 1.0, 0.0]], [[0, 0, 1.0]]]
)
LABELS = np.array([0, 0, 1, 1, 2])


def test_reliance_by_hand():
    np.testing.assert_allclose(ablation.reliance(WEIGHTS, LABELS, 3, 1), [0.25, 1.0, 0.0])
    with pytest.raises(ValueError, match="expert=3"):
        ablation.reliance(WEIGHTS, LABELS, 3, 3)


def test_summary_sentence_by_hand():
    out = ablation.summary(hand_scan([0.0, -0.4, -0.2]), 1, WEIGHTS, LABELS, ["a", "b", "c"], model="m")
    assert out["expert"] == 1 and out["accuracy_change"] == -0.4 and out["most_costly_expert"] == 1
    assert out["per_expert_change"] == [0.0, -0.4, -0.2]
    sentence = out["sentence"]
    assert sentence.startswith("Switching off expert 1 of m's layer 3 changes accuracy on these 5 images by "
                               "-40.0 points (0.800 -> 0.400).")  # fmt: skip
    assert "The largest per-class drop is -100 points on 'b' (2 images)." in sentence
    # classes with at least the median count (2): 'a' and 'b'; 'b' relies on expert 1 the most
    assert "is 'b' (100%, 2 images); its accuracy changes by -100 points." in sentence
    assert "switching off expert 1 changes accuracy the most (-40.0 points)" in sentence
    calm = ablation.summary(hand_scan([0.0, 0.001, -0.002]), 0, WEIGHTS, LABELS, ["a", "b", "c"], model="m")
    assert "No class loses accuracy." in calm["sentence"]
    assert "No single expert matters much in this layer" in calm["sentence"]
    with pytest.raises(ValueError, match="expert=5"):
        ablation.summary(hand_scan([0.0, 0.0, 0.0]), 5, WEIGHTS, LABELS, ["a", "b", "c"], model="m")
    with pytest.raises(ValueError, match="class_names"):
        ablation.summary(hand_scan([0.0, 0.0, 0.0]), 0, WEIGHTS, LABELS, ["a", "b"], model="m")

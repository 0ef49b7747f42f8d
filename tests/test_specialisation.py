"""analysis.specialisation, analysis.selection and analysis.layer_stats on hand-made routing records whose
answers can be worked out by hand (B images, N=2 tokens, E experts, Y classes)."""

from __future__ import annotations

import numpy as np
import pytest

from sparse_experts import analysis, models
from sparse_experts.analysis import specialisation


def routed(per_image: list[list[float]], tokens: int = 2) -> np.ndarray:
    """combine_weights [B, N, E] whose tokens each carry the image's expert split ``per_image[b]`` [E]."""
    return np.repeat(np.asarray(per_image, np.float64)[:, None, :], tokens, axis=1)


def test_perfect_specialisation_against_shuffled_labels():
    # 20 images of class 0 routed only to expert 0, 20 of class 1 only to expert 1
    labels = np.repeat([0, 1], 20)
    s = analysis.class_specialisation(routed([[1, 0]] * 20 + [[0, 1]] * 20), labels, 2)
    # each class's expert distribution [1, 0] vs the overall [0.5, 0.5]: TV 0.5 = 1 - 1/Y
    assert s.tv == pytest.approx(0.5)
    np.testing.assert_allclose(s.shares, [[1, 0], [0, 1]])
    np.testing.assert_allclose(s.relative, [[2, 0], [0, 2]])
    np.testing.assert_allclose(s.expert_tv, [0.5, 0.5])
    np.testing.assert_allclose(s.class_of_all, [0.5, 0.5])
    assert s.most_specialised_expert == 0 and s.top_class(0) == 0 and s.top_class(1) == 1
    # shuffled labels mix the classes: 20 of 40 drawn per class, the expected TV is about 0.06
    assert 0 <= s.baseline < 0.2
    assert specialisation.verdict(s.tv, s.baseline) == "clear specialisation"
    # three classes on three disjoint experts: 1 - 1/3
    three = analysis.class_specialisation(
        routed([[1, 0, 0], [0, 1, 0], [0, 0, 1]] * 4), np.tile([0, 1, 2], 4), 3
    )
    assert three.tv == pytest.approx(2 / 3)


def test_no_specialisation_gives_zero_and_its_baseline_is_zero():
    labels = np.array([0, 1, 0, 1, 2, 2])
    s = analysis.class_specialisation(routed([[0.3, 0.7]] * 6), labels, 4)  # class 3 absent
    assert s.tv == pytest.approx(0) and s.baseline == pytest.approx(0)
    assert np.isnan(s.shares[:, 3]).all()
    assert specialisation.verdict(s.tv, s.baseline).startswith("little specialisation")


def test_tv_is_weighted_by_class_size():
    # three class-0 images on expert 0, one class-1 image on expert 1: overall [0.75, 0.25];
    # class 0 is 0.25 away, class 1 0.75 away; weighted by images: (3 x 0.25 + 0.75) / 4
    s = analysis.class_specialisation(routed([[1, 0]] * 3 + [[0, 1]]), np.array([0, 0, 0, 1]), 2, shuffles=3)
    assert s.tv == pytest.approx(0.375)
    np.testing.assert_allclose(s.class_of_expert, [[1, 0], [0, 1]])
    np.testing.assert_allclose(s.expert_tv, [0.25, 0.75])
    assert s.most_specialised_expert == 1 and s.top_class(1) == 1
    # each shuffle gives 0.375 (the class-1 label lands on the expert-1 image) or 0.125 (on an expert-0
    # image: class 0 splits [2/3, 1/3], 1/12 away, class 1 [1, 0], 0.25 away; (3/12 + 0.25) / 4); the
    # baseline is their mean over the 3 shuffles: 0.125 + 0.25 x (shuffles that kept it) / 3
    kept = (s.baseline - 0.125) / (0.25 / 3)
    assert kept == pytest.approx(round(kept)) and 0 <= round(kept) <= 3
    other_seed = analysis.class_specialisation(
        routed([[1, 0]] * 3 + [[0, 1]]), np.array([0, 0, 0, 1]), 2, seed=7
    )
    assert other_seed.tv == s.tv


def test_verdict_thresholds_and_errors():
    assert specialisation.verdict(0.10, 0.06).startswith("little")
    assert specialisation.verdict(0.20, 0.10) == "some specialisation"
    assert specialisation.verdict(0.50, 0.10) == "clear specialisation"
    with pytest.raises(ValueError, match="shuffles=0"):
        analysis.class_specialisation(routed([[1, 0]]), np.array([0]), 2, shuffles=0)
    with pytest.raises(ValueError, match="labels"):
        analysis.class_specialisation(routed([[1, 0]]), np.array([2]), 2)
    with pytest.raises(ValueError, match="combine_weights"):
        analysis.class_specialisation(routed([[0, 0]]), np.array([0]), 2)


def test_summary_sentence_and_saved_numbers():
    fine = analysis.class_specialisation(
        routed([[1, 0]] * 3 + [[0, 1]]), np.array([0, 1, 2, 3]), 4, shuffles=2
    )
    coarse = analysis.class_specialisation(
        routed([[1, 0]] * 3 + [[0, 1]]), np.array([0, 0, 0, 1]), 2, shuffles=2
    )
    names = {"class": ["a", "b", "c", "d"], "coarse class": ["vehicle", "animal"]}
    out = specialisation.summary({"class": fine, "coarse class": coarse}, names, model="m", layer=3)
    assert out["verdict"] == specialisation.verdict(coarse.tv, coarse.baseline)  # judged on coarse classes
    assert out["most_specialised_expert"] == 1 and out["its_top_class"] == "animal"
    assert out["tv_class"] == fine.tv and out["tv_coarse_class_shuffled"] == coarse.baseline
    assert out["sentence"].startswith("m, layer 3: a class's expert distribution differs")
    assert "expert 1: 100% of its weight comes from coarse class 'animal', against 25%" in out["sentence"]
    only_fine = specialisation.summary({"class": fine}, {"class": names["class"]}, model="m", layer=3)
    assert "judged on classes" in only_fine["sentence"] and "tv_coarse_class" not in only_fine
    with pytest.raises(ValueError, match="judge_on='size'"):
        specialisation.summary(
            {"class": fine}, {"class": names["class"]}, model="m", layer=3, judge_on="size"
        )


def test_selection_overrides_layers_and_choices():
    top_k = models.MoeConfig(num_experts=4, k=2)
    assert analysis.overrides_for(top_k, 1, 0.5, True) == dict(k=1, capacity_factor=0.5, batch_priority=True)
    expert_choice = models.MoeConfig(num_experts=4, router="expert_choice")
    assert analysis.overrides_for(expert_choice, 2, 0.5, True) == dict(capacity_factor=1.0)
    assert analysis.overrides_for(models.MoeConfig(num_experts=4, router="soft"), 2, 0.5, True) is None
    assert analysis.shown_choices(top_k, 3) == 3 and analysis.shown_choices(top_k, 9) == 4
    assert analysis.shown_choices(expert_choice, 3) == 2
    config = models.vit_config("mu/4", image_size=8, depth=4, width=16, mlp_dim=32, num_heads=2, moe=top_k)
    assert models.moe_layers(config) == (1, 3)
    assert analysis.resolve_layer(config, -1) == 3 and analysis.resolve_layer(config, -2) == 1
    assert analysis.resolve_layer(config, 3) == 3
    for bad in (2, -3):
        with pytest.raises(ValueError, match=rf"layer={bad} .*\(1, 3\)"):
            analysis.resolve_layer(config, bad)
    gates = np.array([[[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]])  # one image, 2 tokens, 3 experts
    weights = np.array([[[0.0, 0.6, 0.0], [0.5, 0.0, 0.0]]])  # token 0's second choice dropped
    chosen, dropped, g = analysis.token_choices(models.MoeConfig(num_experts=3), {"gates": gates,
                                                "combine_weights": weights}, 0, 2)  # fmt: skip
    np.testing.assert_array_equal(chosen, [[1, 2], [0, 2]])
    np.testing.assert_array_equal(dropped, [[False, True], [False, True]])
    np.testing.assert_allclose(g, [[0.6, 0.3], [0.5, 0.3]])
    with pytest.raises(ValueError, match="index=1"):
        analysis.token_choices(top_k, {"gates": gates, "combine_weights": weights}, 1, 2)


def test_layer_stats_rows_and_saved_per_layer_numbers():
    gates = np.array([[[1.0, 0.0], [0.5, 0.5]], [[1.0, 0.0], [1.0, 0.0]]])
    weights = np.array([[[1.0, 0.0], [0.5, 0.0]], [[1.0, 0.0], [0.0, 0.0]]])
    records = {1: {"gates": gates, "combine_weights": weights, "dropped_fraction": 0.25, "capacity": 3,
                   "load": np.array([3.0, 0.0])}}  # fmt: skip
    logits = np.array([[2.0, 1.0], [0.0, 1.0]])
    assert analysis.accuracy(logits, np.array([0, 0])) == 0.5
    (row,) = analysis.layer_rows(records, logits, np.array([0, 0]))
    assert row["layer"] == 1 and row["capacity C"] == 3 and row["dropped fraction"] == 0.25
    assert row["router entropy (nats)"] == pytest.approx(np.log(2) / 4)
    assert row["max entropy log E"] == pytest.approx(np.log(2))
    assert row["busiest expert share"] == 1.0 and row["accuracy (these images)"] == 0.5
    saved = analysis.per_layer(records)
    assert list(saved) == ["1"] and saved["1"]["entropy"] == pytest.approx(np.log(2) / 4)
    np.testing.assert_array_equal(saved["1"]["load"], [3.0, 0.0])
    with pytest.raises(ValueError, match="records"):
        analysis.layer_rows({}, logits, np.array([0, 0]))

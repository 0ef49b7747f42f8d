"""workbook.explorer without a browser: tiny real V-MoEs (top-k and Soft MoE; 2 layers, MoE at layer 1, E=4
experts, 8x8 images of 2x2 patches of 4x4 pixels, Y=3 classes), 6 random uint8 images. A test moves the
controls by setting ``value`` and checks what the figures show."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import pytest
from flax import nnx

from sparse_experts import analysis, datasets, models
from sparse_experts.workbook import explorer, zoo

E, Y, B = 4, 3, 6


def tiny(router: str, seed: int, placement: tuple = (1,)) -> models.ViT:
    config = models.vit_config(
        "mu/4", image_size=8, num_classes=Y, depth=2, width=16, mlp_dim=32, num_heads=2, head_zero_init=False,
        moe=models.MoeConfig(num_experts=E, k=2, placement=placement, router=router, group_size=1),
    )  # fmt: skip
    return models.ViT(config, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def routes():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(B, 8, 8, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    coarse = np.array([0, 1, 1, 0, 1, 1])
    label_sets = {"class": (labels, ["cat", "dog", "fox"]), "coarse class": (coarse, ["pet", "wild"])}
    data = zoo.EvalSet(
        "toy", images, labels, ["cat", "dog", "fox"], label_sets, B, group_size=1, batch_size=3
    )
    trained = {"topk": tiny("top_k", 0), "soft": tiny("soft", 1), "first": tiny("top_k", 2, placement=(0,))}
    return explorer.Routes(trained, data)


def heatmaps(fig):
    return [t for t in fig.data if t.type == "heatmap"]


def test_moving_the_controls_redraws_the_figures(routes):
    view = explorer.Explorer(routes, model="topk", image_index=0, layer=-1, k=2, capacity_factor=2.0)
    assert view.layer.value == 1 and view.layer.options == (1,)
    assert isinstance(view.patches, go.FigureWidget) and len(view.widget.children) == 6
    # the image slider: the patch view shows image 1, coloured by image 1's first choices
    before = np.array(view.patches.data[0].z)
    view.image.value = 1
    _, records = routes("topk", 2, 2.0, False)
    chosen, _, _ = analysis.token_choices(routes.config("topk").moe, records[1], 1, 2)
    np.testing.assert_array_equal(heatmaps(view.patches)[0].z, chosen[1:, 0].reshape(2, 2))  # token 0: cls
    np.testing.assert_array_equal(view.patches.data[0].z, routes.data.images[1])
    assert not np.array_equal(view.patches.data[0].z, before)
    assert "image 1 (dog)" in view.patches.layout.title.text and "image 1 is <i>dog</i>" in view.info.value
    # k=1 and a small capacity factor: one gate panel, fewer token-choices, something dropped
    load_before = np.array(view.load.data[0].y)
    view.k.value = 1
    assert len(heatmaps(view.gates)) == 1
    view.capacity_factor.value = 0.25
    _, small = routes("topk", 1, 0.25, False)
    assert small[1]["dropped_fraction"] > 0
    np.testing.assert_array_equal(view.load.data[0].y, small[1]["load"])
    assert view.load.data[0].y.sum() < load_before.sum()
    assert f"dropped {small[1]['dropped_fraction']:.1%}" in view.info.value
    # BPR routes again with batch priority (a new cache entry)
    view.batch_priority.value = True
    assert ("topk", (("batch_priority", True), ("capacity_factor", 0.25), ("k", 1))) in routes._cache
    # Soft MoE: no k, capacity or BPR dial; the gate panels show combine weights
    view.model.value = "soft"
    assert view.k.disabled and view.capacity_factor.disabled and view.batch_priority.disabled
    assert view.patches.layout.title.text.startswith("soft, layer 1")
    assert "combine weight" in view.gates.layout.title.text
    # a model whose only MoE layer is 0: the layer list follows, and the views show layer 0
    view.model.value = "first"
    assert not view.k.disabled and view.layer.options == (0,) and view.layer.value == 0
    assert view.patches.layout.title.text.startswith("first, layer 0") and "layer 0" in view.info.value
    view.model.value = "topk"
    assert view.layer.value == 1 and view.patches.layout.title.text.startswith("topk, layer 1")


def test_study_numbers_and_saved_figures(routes):
    settings = dict(k=2, capacity_factor=2.0, batch_priority=False)
    studies = {name: explorer.Study(routes, name, layer=-1, **settings) for name in ("topk", "soft")}
    main = studies["topk"]
    assert main.layer == 1 and len(main.affinity_figures()) == 2  # fine and coarse classes
    weights = main.records[1]["combine_weights"]
    coarse = analysis.class_specialisation(weights, routes.data.label_sets["coarse class"][0], 2)
    assert (
        main.affinity["tv_coarse_class"] == coarse.tv
        and main.affinity["tv_coarse_class_shuffled"] == coarse.baseline
    )
    (row,) = main.layer_rows()
    assert row["accuracy (these images)"] == analysis.accuracy(main.logits, routes.data.labels)
    with pytest.raises(ValueError, match="ablate"):
        main.summary_row()
    for s in studies.values():
        s.ablate(-1)  # the most specialised expert
    assert main.ablation["expert"] == main.affinity["most_specialised_expert"]
    assert main.ablate(2)["expert"] == 2  # the scan is reused
    per_expert, per_class = main.ablation_figures()
    np.testing.assert_allclose(per_expert.data[0].y, 100 * main.scan.per_expert_change)
    figures = explorer.saved_figures(studies, "topk", image_index=4)
    assert set(explorer.HEADLINE) <= set(figures)
    assert figures["selection"] == dict(settings, image_index=4, layer=1)
    assert figures["eval_images"] == B and figures["batch_size"] == 3
    assert [r["model"] for r in figures["summary"]] == ["topk", "soft"]
    assert figures["summary"][0]["ablated expert"] == 2
    assert figures["main_ablation_change"] == main.scan.per_expert_change[2]
    assert figures["main_dropped_fraction"] == main.records[1]["dropped_fraction"]
    assert set(figures["per_layer"]["soft"]["1"]) == {"dropped_fraction", "entropy", "load"}
    json.dumps(figures["summary"])  # plain numbers and strings
    sentence = explorer.entropy_sentence(main)
    entropy = analysis.router_entropy(main.records[1]["gates"])
    assert f"router entropy is {entropy:.2f} nats against log 4 = 1.39 nats" in sentence
    assert f"class TV {100 * main.affinity['tv_class']:.1f}%" in sentence


def test_inputs_are_checked(routes):
    with pytest.raises(ValueError, match="model name='nope'"):
        routes.config("nope")
    with pytest.raises(ValueError, match="layer=0"):
        explorer.Study(routes, "topk", layer=0, k=2, capacity_factor=1.0, batch_priority=False)


def test_eval_set_with_coarse_labels():
    """zoo.eval_set as notebook 03 reads it: models predicting coarse classes; fine and coarse labellings."""
    params = dict(
        dataset="shapes_upstream_small", image_size=16, label="coarse_label", group_size=2, eval_batch_size=8
    )
    data = zoo.eval_set(params, 5)  # 5 -> 2 whole groups of 2
    info = datasets.info("shapes_upstream_small")
    fine, coarse = data.label_sets["class"][0], data.label_sets["coarse class"][0]
    np.testing.assert_array_equal(data.labels, coarse)  # the models predict coarse classes
    np.testing.assert_array_equal(coarse, np.asarray(info.fine_to_coarse)[fine])
    assert data.class_names == list(info.coarse_class_names) and data.batch_size == 4
    assert list(data.label_sets) == ["class", "coarse class"]
    assert data.label_sets["class"][1] == list(info.class_names)
    assert data.x.dtype == np.float32 and data.x.min() >= -1.0 and data.images.dtype == np.uint8
    assert str(data) == (
        "shapes_upstream_small test split: the first 4 of 500 images, in batches of 4 (2 routing groups of 2 "
        "images each)"
    )
    fine_set = zoo.eval_set(dict(params, label="label"), 6, batch_size=2)
    assert fine_set.class_names == list(info.class_names) and fine_set.batch_size == 2


def test_image_with_drops_prefers_the_asked_image_then_its_group():
    # 6 images in routing groups of 3: image 0 (first of its group) lost nothing, image 2 lost most
    assert explorer.image_with_drops(np.array([0, 1, 3, 0, 5, 0]), 0, 3) == 2
    assert explorer.image_with_drops(np.array([0, 1, 3, 0, 5, 0]), 1, 3) == 1  # it has drops: kept
    assert explorer.image_with_drops(np.array([0, 0, 0, 0, 5, 2]), 0, 3) == 4  # none in its group
    assert explorer.image_with_drops(np.zeros(6, int), 3, 3) == 3  # nothing dropped anywhere


@pytest.mark.parametrize("router", ["top_k", "expert_choice"])
def test_the_default_view_shows_dropped_choices_when_the_layer_drops_any(router):
    """Routing groups of 3 images at a low capacity factor: whatever image is asked for, the static patch
    view shows crosses when the layer dropped anything, and keeps the asked image when it has drops."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(B, 8, 8, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    names = ["cat", "dog", "fox"]
    data = zoo.EvalSet(
        "toy", images, labels, names, {"class": (labels, names)}, B, group_size=3, batch_size=3
    )
    config = models.vit_config(
        "mu/4", image_size=8, num_classes=Y, depth=2, width=16, mlp_dim=32, num_heads=2, head_zero_init=False,
        moe=models.MoeConfig(num_experts=E, k=2, placement=(1,), router=router, group_size=3),
    )  # fmt: skip
    routes = explorer.Routes({"m": models.ViT(config, rngs=nnx.Rngs(0))}, data)
    study = explorer.Study(routes, "m", layer=-1, k=2, capacity_factor=1.0, batch_priority=False)
    counts = study.dropped_per_image()
    assert counts.sum() > 0 and (router != "top_k" or study.records[1]["dropped_fraction"] > 0)
    assert counts[0] == 0  # image 0 comes first in its group: it kept every choice
    for asked in range(B):
        shown = study.showcase_image(asked)
        marks = [t for t in study.patch_figure(shown).data if (t.name or "").startswith("dropped")]
        assert marks and counts[shown] > 0
        assert shown == asked or counts[asked] == 0
        assert f"image {shown}" in study.showcase_note(asked, shown).lower()
    # the counts are the patch view's crosses
    chosen, dropped, _ = analysis.token_choices(config.moe, study.records[1], 4, 2)
    assert counts[4] == dropped[1:].sum()


def test_foreground_patches_and_split_by_hand():
    # one 12x12 image of 3x3 patches of 4 pixels: black background, a white centre patch, a grey corner
    image = np.zeros((1, 12, 12, 3), np.uint8)
    image[0, 4:8, 4:8] = 255
    image[0, 0:4, 8:12] = 12  # a faint corner: 15.6 from the corners' mean colour (3, 3, 3), under 24
    np.testing.assert_array_equal(
        analysis.routes.foreground_patches(image, 4),
        [[False, False, False, False, True, False, False, False, False]],
    )
    # 2 images x 3 patches x E=2: object patches send all their weight to expert 0, background to expert 1
    weights = np.array([[[1, 0], [0, 1], [0, 1]], [[1, 0], [0, 1], [0, 1]]], float)
    foreground = np.array([[True, False, False], [True, False, False]])
    tv, shuffled = explorer.foreground_split(weights, foreground, seed=0)
    assert tv == 1.0 and 0 <= shuffled <= 1.0
    with pytest.raises(ValueError, match="every patch or none"):
        explorer.foreground_split(weights, np.ones((2, 3), bool))


def test_foreground_sentence_on_a_tiny_model(routes):
    study = explorer.Study(routes, "topk", layer=-1, k=2, capacity_factor=2.0, batch_priority=False)
    sentence = explorer.foreground_sentence(study)
    assert sentence.startswith("In layer 1 of topk") and "total variation" in sentence


def _grouped_routes(router: str = "top_k", seed: int = 1) -> explorer.Routes:
    """12 random images in routing groups of 3 (4 groups), one tiny model whose MoE layer is layer 1."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(12) % Y
    names = ["cat", "dog", "fox"]
    data = zoo.EvalSet(
        "toy", images, labels, names, {"class": (labels, names)}, 12, group_size=3, batch_size=6
    )
    config = models.vit_config(
        "mu/4", image_size=8, num_classes=Y, depth=2, width=16, mlp_dim=32, num_heads=2, head_zero_init=False,
        moe=models.MoeConfig(num_experts=E, k=2, placement=(0, 1), router=router, group_size=3),
    )  # fmt: skip
    return explorer.Routes({"m": models.ViT(config, rngs=nnx.Rngs(seed))}, data)


def test_kept_and_dropped_bars_add_up_to_the_demand_under_the_capacity_line():
    routes = _grouped_routes()
    study = explorer.Study(routes, "m", layer=-1, k=2, capacity_factor=0.5, batch_priority=False)
    demand = study.demand()
    assert list(demand) == [0, 1]
    for layer, d in demand.items():
        record = study.records[layer]
        np.testing.assert_array_equal(d["kept"], record["load"])  # kept = what each expert processed
        np.testing.assert_array_equal(d["kept"] + d["dropped"], d["requested"])
        assert d["requested"].sum() == 2 * 12 * record["gates"].shape[1]  # k choices of every token
        assert d["slots"] == record["capacity"] * 4  # C slots in each of the 4 routing groups
        assert (d["kept"] <= d["slots"]).all() and d["dropped"].sum() > 0
        assert d["dropped"].sum() / d["requested"].sum() == pytest.approx(record["dropped_fraction"])
    fig = study.kept_dropped_figure()
    bars = [t for t in fig.data if t.type == "bar"]
    lines = [t for t in fig.data if t.type == "scatter"]
    for i, layer in enumerate(demand):
        np.testing.assert_array_equal(bars[2 * i].y, demand[layer]["kept"])
        np.testing.assert_array_equal(bars[2 * i + 1].y, demand[layer]["dropped"])
        np.testing.assert_array_equal(
            np.asarray(bars[2 * i].y) + bars[2 * i + 1].y, demand[layer]["requested"]
        )
        assert list(lines[i].y) == [demand[layer]["slots"]] * 2  # the capacity line at C x groups
    assert fig.layout.barmode == "stack"


def test_bpr_keeps_the_highest_gate_patches():
    """At a low capacity factor, BPR hands each expert's slots to the tokens with the highest top gate: of
    the tokens whose first choice is expert e in one routing group, every kept one outranks every dropped
    one. Vanilla routing keeps them by position instead, so its dropped patches have higher gates."""
    routes = _grouped_routes()
    pair = explorer.low_capacity_pair(routes, "m", layer=-1, k=2, capacity_factor=0.25)
    record = pair["BPR"].records[1]
    gates, weights = np.asarray(record["gates"]), np.asarray(record["combine_weights"])
    first = gates.argmax(-1)  # [B, N]
    top = gates.max(-1)
    kept_first = np.take_along_axis(weights, first[..., None], -1)[..., 0] > 0
    checked = 0
    for group in range(4):
        images = slice(3 * group, 3 * group + 3)
        for e in range(E):
            asked = first[images] == e
            kept, lost = top[images][asked & kept_first[images]], top[images][asked & ~kept_first[images]]
            if len(kept) and len(lost):
                assert kept.min() >= lost.max()
                checked += 1
    assert checked > 0
    summary = explorer.drop_summary(pair)
    assert summary["BPR"]["gate_lost"] < summary["BPR"]["gate_kept"]
    assert summary["BPR"]["gate_lost"] < summary["vanilla"]["gate_lost"]
    # the figure: one row per routing, black where every choice was lost
    indices = explorer.routing_group(4, 3, 12)
    np.testing.assert_array_equal(indices, [3, 4, 5])
    fig = explorer.dropped_patches_figure(pair, indices)
    labels = list(fig.layout.yaxis.ticktext)
    for word, label in zip(("vanilla", "BPR"), labels, strict=True):
        kept = analysis.routes.kept_choices(
            pair[word].records[1]["gates"], pair[word].records[1]["combine_weights"], 2
        )[indices, 1:]  # the class token left out
        assert label == f"{word}: {(kept == 0).sum()} of {kept.size} patches lost every choice"
    sentence = explorer.drop_sentence(pair)
    assert (
        sentence.startswith("Over all 12 images at capacity factor 0.25 in layer 1")
        and "BPR drops" in sentence
    )


def test_every_layer_view_and_expert_patches():
    routes = _grouped_routes()
    study = explorer.Study(routes, "m", layer=-1, k=2, capacity_factor=0.5, batch_priority=False)
    fig = study.layers_figure(5)
    assert [a.text for a in fig.layout.annotations] == ["image", "layer 0", "layer 1"]
    assert len([t for t in fig.data if t.type == "image"]) == 3
    heat = [t for t in fig.data if t.type == "heatmap"]
    for panel, layer in zip(heat, (0, 1), strict=True):
        chosen, _, _ = analysis.token_choices(study.config.moe, study.records[layer], 5, 2)
        np.testing.assert_array_equal(panel.z, chosen[1:, 0].reshape(2, 2))
    # the patch view starts with the image alone
    patch_view = study.patch_figure(5)
    assert [a.text for a in patch_view.layout.annotations] == ["image", "first choice", "second choice"]
    # each expert's top-gate patches: the highest gates of the layer, in order, framed in its colour
    top = analysis.routes.top_gate_patches(study.records[1]["gates"], 3, skip_tokens=1)
    gates = np.asarray(study.records[1]["gates"])[:, 1:]
    for e in range(E):
        np.testing.assert_allclose(top["gate"][e], np.sort(gates[..., e].ravel())[::-1][:3])
        np.testing.assert_allclose(top["gate"][e], gates[top["image"][e], top["patch"][e], e])
    grid = study.expert_patches_figure(3)
    assert list(grid.layout.yaxis.ticktext)[0].startswith("expert 0 (gate ")
    crops = explorer.patch_context(routes.data.images, [0], [3], 4, ["#ff0000"])
    assert crops.shape == (1, 12, 12, 3)
    np.testing.assert_array_equal(crops[0, 4:8, 4:8], routes.data.images[0, 4:8, 4:8])  # the patch itself
    np.testing.assert_array_equal(crops[0, 3, 3], [255, 0, 0])  # its frame
    np.testing.assert_array_equal(crops[0, 10, 10], [128, 128, 128])  # beyond the image's edge
    sentence = explorer.specialisation_by_layer(study)
    assert sentence.startswith("class TV of m, first to last MoE layer: layer 0 ")

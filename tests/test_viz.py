"""Routing figures built from a tiny hand-made routing record: 3 images, N=4 tokens (2x2 patches of 2x2
pixels), E=3 experts. The assertions check what the figures show, not only that they build."""

from __future__ import annotations

import numpy as np
import pytest

from sparse_experts import analysis
from sparse_experts.workbook import viz

# gates [B=3, N=4, E=3]; combine weights keep each token's top-2 choices except where dropped.
GATES = np.array(
    [
        [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.3, 0.5], [0.5, 0.1, 0.4]],
        [[0.6, 0.3, 0.1], [0.6, 0.1, 0.3], [0.1, 0.2, 0.7], [0.3, 0.4, 0.3]],
        [[0.2, 0.2, 0.6], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]],
    ]
)
FIRST = GATES.argmax(-1)
COMBINE = np.zeros_like(GATES)
for b in range(3):
    for n in range(4):
        top2 = np.argsort(-GATES[b, n], kind="stable")[:2]
        COMBINE[b, n, top2] = GATES[b, n, top2]
COMBINE[0, 3] = 0.0  # image 0, token 3: both choices dropped
COMBINE[1, 1, 2] = 0.0  # image 1, token 1: second choice (expert 2) dropped
IMAGES = np.arange(3 * 4 * 4 * 3, dtype=np.uint8).reshape(3, 4, 4, 3)
RECORDS = {
    1: {
        "combine_weights": COMBINE,
        "gates": GATES,
        "load": (COMBINE > 0).sum(axis=(0, 1)).astype(float),
        "dropped_fraction": 1 - (COMBINE > 0).sum() / (3 * 4 * 2),
        "tokens_per_image": (COMBINE > 0).sum(axis=(1, 2)).astype(float),
    },
    3: {
        "combine_weights": COMBINE,
        "gates": GATES,
        "load": np.array([4.0, 1.0, 1.0]),
        "dropped_fraction": 0.5,
        "entropy": 0.25,
    },
}


def traces(fig, kind):
    return [t for t in fig.data if t.type == kind]


def test_patch_routing_colours_patches_by_expert_and_marks_dropped():
    choices, dropped = analysis.patch_choices(GATES[0], COMBINE[0], k=2)
    gates = np.take_along_axis(GATES[0], choices, axis=1)
    fig = viz.patch_routing(IMAGES[0], choices, patch_size=2, dropped=dropped, gates=gates)
    heatmaps = traces(fig, "heatmap")
    assert len(traces(fig, "image")) == 2 and len(heatmaps) == 2
    np.testing.assert_array_equal(heatmaps[0].z, FIRST[0].reshape(2, 2))
    np.testing.assert_array_equal(heatmaps[1].z, np.array([[1, 2], [1, 2]]))
    # the colourscale maps expert e to exactly expert_color(e)
    scale = heatmaps[0].colorscale
    assert [c for _, c in scale][::2] == [viz.expert_color(e) for e in range(3)]
    assert (heatmaps[0].zmin, heatmaps[0].zmax) == (-0.5, 2.5)
    # token 3 (bottom right patch, centre (2.5, 2.5)) was dropped at both choices
    marks = [t for t in traces(fig, "scatter") if t.name.startswith("dropped")]
    assert [t.name for t in marks] == ["dropped (first choice)", "dropped (second choice)"]
    assert all(list(t.x) == [2.5] and list(t.y) == [2.5] for t in marks)
    assert "gate 0.500 (dropped)" in heatmaps[0].text[1][1]
    assert [a.text for a in fig.layout.annotations] == ["first choice", "second choice"]


def test_patch_routing_with_class_token():
    first = FIRST[2][:, None]
    with_cls = np.concatenate([[[0]], first])  # token 0 is the class token
    fig = viz.patch_routing(IMAGES[2], with_cls, patch_size=2, has_cls_token=True, dropped=np.zeros((5, 1)))
    heatmaps = traces(fig, "heatmap")
    np.testing.assert_array_equal(heatmaps[0].z, np.array([[2, 1], [0, 2]]))
    assert not [t for t in traces(fig, "scatter") if t.name.startswith("dropped")]
    with pytest.raises(ValueError, match="expected 5"):
        viz.patch_routing(IMAGES[2], first, patch_size=2, has_cls_token=True)
    with pytest.raises(ValueError, match="patch_size=3"):
        viz.patch_routing(IMAGES[2], first, patch_size=3)
    with pytest.raises(ValueError, match="share one shape"):
        viz.patch_routing(IMAGES[2], first, patch_size=2, dropped=np.zeros(4, bool))


def test_expert_load_bars_per_layer():
    fig = viz.expert_load_bars(RECORDS)
    bars = traces(fig, "bar")
    assert len(bars) == 2
    np.testing.assert_array_equal(bars[0].y, RECORDS[1]["load"])
    assert list(bars[0].marker.color) == [viz.expert_color(e) for e in range(3)]
    titles = [a.text for a in fig.layout.annotations]
    entropy = analysis.router_entropy(GATES)
    dropped = RECORDS[1]["dropped_fraction"]
    assert titles[0] == f"layer 1<br>dropped {dropped:.1%}, entropy {entropy:.2f} nats"
    assert titles[1] == "layer 3<br>dropped 50.0%, entropy 0.25 nats"
    assert fig.layout.xaxis.title.text == "expert"
    assert fig.layout.yaxis.title.text == "token-choices processed"


def test_affinity_heatmap():
    labels = np.array([0, 1, 0])
    affinity = analysis.expert_class_affinity(COMBINE, labels, 2)
    fig = viz.affinity_heatmap(affinity, ["cat", "dog"])
    (heatmap,) = fig.data
    np.testing.assert_allclose(heatmap.z, affinity)
    assert list(heatmap.x) == ["cat", "dog"] and list(heatmap.y) == ["expert 0", "expert 1", "expert 2"]
    assert fig.layout.xaxis.title.text == "class" and fig.layout.yaxis.title.text == "expert"
    rel = viz.affinity_heatmap(
        analysis.expert_class_affinity(COMBINE, labels, 2, relative=True), ["a", "b"], relative=True
    )
    ratios = analysis.expert_class_affinity(COMBINE, labels, 2, relative=True)
    assert rel.data[0].zmid == 0.0  # log2 of the ratio: x1 is white, x2 as red as x1/2 is blue
    np.testing.assert_allclose(rel.data[0].z, np.clip(np.log2(ratios), -3, 3))
    np.testing.assert_allclose(rel.data[0].customdata, ratios)  # the ratios themselves on hover
    assert list(rel.data[0].colorbar.ticktext) == ["x1/8", "x1/4", "x1/2", "x1", "x2", "x4", "x8"]
    with pytest.raises(ValueError, match="class_names"):
        viz.affinity_heatmap(affinity, ["cat"])


def test_ablation_bars():
    fig = viz.ablation_bars(np.array([-0.25, 0.0, 0.1, np.nan]), ["a", "b", "c", "d"])
    (bar,) = traces(fig, "bar")
    assert list(bar.x) == ["a", "b", "c"]
    np.testing.assert_allclose(bar.y, [-25.0, 0.0, 10.0])
    assert list(bar.marker.color) == ["#d62728", "#7f7f7f", "#1f77b4"]
    assert fig.layout.yaxis.title.text == "change in accuracy (percentage points)"
    sixty = viz.ablation_bars(np.zeros(60), [f"c{c}" for c in range(60)])
    assert sixty.layout.width == viz.MAX_FIGURE_PIXELS  # 60 classes once made it 1,640 px wide


def test_accuracy_vs_gflops():
    fig = viz.accuracy_vs_gflops(
        {"vanilla": ([0.3, 0.1, 0.2], [0.5, 0.2, 0.4], [1.0, 0.25, 0.5]), "BPR": ([0.1, 0.2], [0.45, 0.5])},
        {"dense": (0.4, 0.55)},
    )
    vanilla, bpr, dense = fig.data
    assert (vanilla.name, bpr.name, dense.name) == ("vanilla", "BPR", "dense")
    assert list(vanilla.x) == [0.1, 0.2, 0.3] and list(vanilla.y) == [0.2, 0.4, 0.5]  # sorted by compute
    assert list(vanilla.text) == ["0.25", "0.5", "1"]
    assert dense.mode == "markers" and list(dense.x) == [0.4]
    assert fig.layout.xaxis.title.text == "GFLOPs per image"
    assert fig.layout.yaxis.title.text == "top-1 accuracy"


def test_compute_histogram_and_extremes():
    tokens = analysis.compute_per_image(RECORDS, layers=[1])
    np.testing.assert_array_equal(tokens, [6, 7, 8])
    fig = viz.compute_histogram(tokens)
    (hist,) = traces(fig, "histogram")
    np.testing.assert_array_equal(hist.x, tokens)
    assert [a.text for a in fig.layout.annotations] == ["least 6.0", "mean 7.0", "most 8.0"]
    grid = viz.compute_extremes(IMAGES, tokens, count=1)
    (image,) = grid.data
    np.testing.assert_array_equal(image.z[1:5, 1:5], IMAGES[2])  # most compute first
    np.testing.assert_array_equal(image.z[6:10, 1:5], IMAGES[0])  # then least
    assert list(grid.layout.yaxis.ticktext) == ["most: 8", "least: 6"]


def test_gate_values_prints_gate_expert_and_dropped_mark():
    chosen, dropped = analysis.patch_choices(GATES[0], COMBINE[0], k=2)
    gates = np.take_along_axis(GATES[0], chosen, axis=1)
    fig = viz.gate_values(chosen, dropped, gates, word="combine weight")
    first, second = traces(fig, "heatmap")
    np.testing.assert_allclose(first.z, [[0.7, 0.6], [0.5, 0.5]])  # each patch's top gate, rows of 2
    np.testing.assert_allclose(second.z, [[0.2, 0.3], [0.3, 0.4]])
    assert first.text[0][0] == "0.70<br>e0" and first.text[1][1] == "0.50<br>e0 x"  # token 3: dropped
    assert second.text[1][1] == "0.40<br>e2 x"
    assert [a.text for a in fig.layout.annotations] == ["gate of choice 1", "gate of choice 2"]
    assert fig.layout.title.text.startswith("Gate values (combine weight)")
    with_cls = viz.gate_values(
        *(np.concatenate([a[:1], a]) for a in (chosen, dropped, gates)), has_cls_token=True
    )
    np.testing.assert_allclose(traces(with_cls, "heatmap")[0].z, first.z)
    with pytest.raises(ValueError, match="share one shape"):
        viz.gate_values(chosen, dropped[:, :1], gates)
    with pytest.raises(ValueError, match="square grid"):
        viz.gate_values(chosen[:3], dropped[:3], gates[:3])


def test_expert_ablation_bars():
    fig = viz.expert_ablation_bars(np.array([-0.02, 0.0, 0.01]), title="t")
    (bar,) = traces(fig, "bar")
    assert list(bar.x) == ["expert 0", "expert 1", "expert 2"]
    np.testing.assert_allclose(bar.y, [-2.0, 0.0, 1.0])
    assert list(bar.marker.color) == [viz.expert_color(e) for e in range(3)]
    assert fig.layout.yaxis.title.text == "change in accuracy (points)"


def test_sweep_logit_growth_is_logarithmic_with_one_range_and_visible_ticks():
    """Notebook 01: a QK-norm curve that peaks at 100 must sit visibly lower than a plain one at 1e5."""
    from types import SimpleNamespace

    steps = np.arange(1, 5, dtype=float)
    # attn_max_logit [rates, steps, layers]; a diverged step (inf) is left out
    plain = np.stack([np.stack([steps, 10 * steps], -1), np.stack([steps, 10.0 ** (steps + 1)], -1)])
    plain[1, 3, 0] = np.inf
    qk = np.stack([np.stack([steps, steps], -1), np.stack([steps, 25 * steps], -1)])
    results = {
        "plain attention": SimpleNamespace(learning_rates=np.array([1e-3, 1e-1]), attn_max_logit=plain),
        "QK-norm": SimpleNamespace(learning_rates=np.array([1e-3, 1e-1]), attn_max_logit=qk),
    }
    fig = viz.sweep_logit_growth(results)
    axes = [fig.layout.yaxis, fig.layout.yaxis2]
    assert [a.type for a in axes] == ["log", "log"]
    assert all(a.showticklabels and a.matches is None for a in axes)
    low, high = axes[0].range
    assert tuple(axes[1].range) == (low, high)  # the same range: equal heights are equal logits
    assert low < np.log10(1.0) and high > np.log10(1e5)
    np.testing.assert_array_equal(fig.data[3].y, 25 * steps)  # QK-norm, second rate: max over layers
    titles = ["plain attention (peak 100,000)", "QK-norm (peak 100)"]
    assert [a.text for a in fig.layout.annotations] == titles


def test_accuracy_plots_carry_a_noise_band_a_chance_line_and_a_range_wider_than_the_noise():
    """Notebooks 02 and 04: a 0.4-point difference against a noise of +-0.6 points must look like noise."""
    curves = {"vanilla": ([0.1, 0.2], [0.870, 0.874]), "BPR": ([0.1, 0.2], [0.872, 0.873])}
    fig = viz.accuracy_vs_gflops(curves, {"dense": (0.3, 0.871)}, chance=1 / 60, band=(0.874, 0.006))
    zoom, full = fig.layout.yaxis, fig.layout.yaxis2
    assert zoom.range[1] - zoom.range[0] >= 4 * 0.006  # never narrower than the noise
    assert zoom.range[0] <= 0.874 - 0.006 and zoom.range[1] >= 0.874 + 0.006  # the whole band is shown
    (band,) = [s for s in fig.layout.shapes if s.type == "rect"]
    assert (band.y0, band.y1) == pytest.approx((0.868, 0.880)) and band.yref == "y"
    chance = [s for s in fig.layout.shapes if s.type == "line"]
    assert [(s.y0, s.yref) for s in chance] == [(pytest.approx(1 / 60), "y2")]  # off the zoomed range
    assert tuple(full.range) == (0, 1.02)
    assert "chance 1.7%" in [a.text for a in fig.layout.annotations]
    # every trace twice: zoomed above, full scale below (no legend entry, no text); the band's label is the
    # last legend entry, not an annotation over the points
    assert len(fig.data) == 7 and [t.showlegend for t in fig.data[1:6:2]] == [False] * 3
    assert fig.data[-1].name == "noise: ± 2 standard errors" and fig.data[-1].marker.symbol == "square"
    # 02's frontier: error bars count in the range, the x axis stays logarithmic
    rows = [
        {"model": "dense", "family": "dense", "gflops_per_image": 0.01, "test_accuracy": 0.87,
         "test_accuracy_std": 0.004, "test_accuracy_per_seed": [0.866, 0.874]},
        {"model": "vmoe", "family": "sparse", "gflops_per_image": 0.012, "test_accuracy": 0.88,
         "test_accuracy_std": 0.002, "test_accuracy_per_seed": [0.878, 0.882]},
    ]  # fmt: skip
    frontier = viz.model_frontier(rows, chance=0.5, band=(0.87, 0.008))
    low, high = frontier.layout.yaxis.range
    assert low <= 0.862 and high >= 0.882 and high - low >= 4 * 0.008
    assert frontier.layout.xaxis.type == "log" and frontier.layout.xaxis2.type == "log"
    # both panels draw a curve in one colour; near chance the zoom stays in [0, 1] and keeps its span
    assert fig.data[0].line.color == fig.data[1].line.color != fig.data[2].line.color
    near_zero = viz.accuracy_vs_gflops(
        {"a": ([0.1, 0.2], [0.012, 0.024])}, chance=1 / 60, band=(0.012, 0.014)
    )
    low, high = near_zero.layout.yaxis.range
    assert low == 0 and high >= 4 * 0.014
    # without chance and band the figure is one panel, as before
    assert "yaxis2" not in viz.model_frontier(rows).layout.to_plotly_json()


def test_affinity_heatmap_width_is_capped_and_a_long_title_wraps():
    """Notebook 03: 60 fine classes once made a 2,660 px figure; the coarse one's title was cut off."""
    affinity = np.full((8, 60), 1 / 8)
    names = [f"class {c}" for c in range(60)]
    title = "vmoe_every2_k2, layer 5: expert x coarse class affinity (x the expert's overall share)"
    wide = viz.affinity_heatmap(affinity, names, title=title, relative=True)
    assert wide.layout.width <= viz.MAX_FIGURE_PIXELS and wide.layout.xaxis.tickangle == -90
    narrow = viz.affinity_heatmap(np.full((8, 10), 0.1), names[:10], title=title)
    assert narrow.layout.width == 660
    lines = narrow.layout.title.text.split("<br>")
    assert len(lines) >= 2 and " ".join(lines) == title
    assert all(len(line) * 8.5 <= narrow.layout.width - 80 for line in lines)
    assert narrow.layout.margin.t >= 60 + 22 * (len(lines) - 1)


def test_compute_histograms_overlays_routings_on_shared_bins():
    """Notebook 04: vanilla and BPR in one histogram, not two with different axes."""
    fig = viz.compute_histograms({"vanilla": [6.0, 7.0, 8.0], "BPR": [2.0, 7.0, 12.0]}, bins=5)
    vanilla, bpr = traces(fig, "histogram")
    assert fig.layout.barmode == "overlay"
    np.testing.assert_array_equal(bpr.x, [2.0, 7.0, 12.0])
    assert vanilla.xbins == bpr.xbins and (vanilla.xbins.start, vanilla.xbins.size) == (1.5, 2.0)
    assert vanilla.name == "vanilla: mean 7, std 0.816" and bpr.name == "BPR: mean 7, std 4.08"
    assert [s.x0 for s in fig.layout.shapes] == [7.0, 7.0]  # a dashed line at each mean
    with pytest.raises(ValueError, match="empty"):
        viz.compute_histograms({})


def test_expert_demand_and_kept_choices_by_hand():
    # top-2 by gate of the 12 tokens above: expert 0 is asked 9 times, expert 1 8, expert 2 7; the two
    # dropped choices (image 0 token 3: experts 0 and 2; image 1 token 1: expert 2) come off "kept"
    demand = analysis.routes.expert_demand(GATES, COMBINE, 2)
    np.testing.assert_array_equal(demand["requested"], [9, 8, 7])
    np.testing.assert_array_equal(demand["dropped"], [1, 0, 2])
    np.testing.assert_array_equal(demand["kept"], RECORDS[1]["load"])
    kept = analysis.routes.kept_choices(GATES, COMBINE, 2)
    np.testing.assert_array_equal(kept, [[2, 2, 2, 0], [2, 1, 2, 2], [2, 2, 2, 2]])
    np.testing.assert_array_equal(analysis.routes.kept_choices(GATES, COMBINE, 1)[0], [1, 1, 1, 0])
    with pytest.raises(ValueError, match="combine_weights"):
        analysis.routes.expert_demand(GATES, COMBINE[:2], 2)


def test_top_gate_patches_by_hand():
    top = analysis.routes.top_gate_patches(GATES, 2)
    # expert 0's highest gates: 0.7 (image 0, patch 0), then 0.6 (image 1, patch 0; ties to the earlier)
    np.testing.assert_array_equal(top["image"][0], [0, 1]) and np.testing.assert_array_equal(
        top["patch"][0], [0, 0]
    )
    np.testing.assert_allclose(top["gate"], [[0.7, 0.6], [0.8, 0.6], [0.8, 0.7]])
    skipped = analysis.routes.top_gate_patches(GATES, 1, skip_tokens=1)  # token 0 is not a patch
    np.testing.assert_array_equal(skipped["patch"][0], [0]) and np.testing.assert_array_equal(
        skipped["image"][0], [1]
    )
    with pytest.raises(ValueError, match="count=13"):
        analysis.routes.top_gate_patches(GATES, 13)


def test_compute_against_looks():
    images = np.zeros((4, 2, 2, 1), np.uint8)
    images[:, 0, 0, 0] = [0, 40, 80, 120]  # brighter and more contrasted in order
    r = analysis.routes.compute_against_looks(np.array([1.0, 2.0, 3.0, 4.0]), images)
    assert r["brightness"] == pytest.approx(1.0) and r["contrast"] == pytest.approx(1.0)
    assert analysis.routes.compute_against_looks(np.ones(4), images) == {"brightness": None, "contrast": None}
    # object size: 3 images of 3x3 patches of one pixel, black corners: none, the centre, the middle row
    big = np.zeros((3, 3, 3, 1), np.uint8)
    big[1, 1, 1] = 200  # image 1: the centre patch is object
    big[2, 1, :] = 200  # image 2: the middle row is object
    r = analysis.routes.compute_against_looks(np.array([0.0, 1.0, 2.0]), big, patch_size=1)
    assert r["object size"] == pytest.approx(np.corrcoef([0, 1, 2], [0, 1 / 9, 3 / 9])[0, 1])


def test_kept_dropped_bars_show_demand_and_the_capacity_line():
    per_layer = {1: {"kept": np.array([8, 7, 6]), "dropped": np.array([1, 0, 2]), "slots": 8}}
    fig = viz.kept_dropped_bars(per_layer)
    kept, dropped = traces(fig, "bar")
    np.testing.assert_array_equal(np.asarray(kept.y) + dropped.y, [9, 7, 8])  # the demand per expert
    assert list(kept.marker.color) == [viz.expert_color(e) for e in range(3)]
    (line,) = traces(fig, "scatter")
    assert list(line.y) == [8, 8] and list(line.x) == [-0.5, 2.5]
    assert fig.layout.annotations[0].text == "layer 1: 12.5% dropped"  # 3 of 24
    with pytest.raises(ValueError, match="must be"):
        viz.kept_dropped_bars({1: {"kept": np.ones(3), "dropped": np.ones(2), "slots": 1}})


def test_routing_views_with_the_original_image():
    choices, dropped = analysis.patch_choices(GATES[0], COMBINE[0], k=2)
    fig = viz.patch_routing(IMAGES[0], choices, patch_size=2, dropped=dropped, original=True)
    assert [a.text for a in fig.layout.annotations] == ["image", "first choice", "second choice"]
    assert len(traces(fig, "image")) == 3 and fig.layout.width <= viz.MAX_FIGURE_PIXELS
    np.testing.assert_array_equal(traces(fig, "heatmap")[0].z, FIRST[0].reshape(2, 2))
    layers = {1: (choices, dropped, None), 3: (choices[:, ::-1], dropped[:, ::-1], None)}
    across = viz.routing_across_layers(IMAGES[0], layers, patch_size=2, num_experts=3)
    assert [a.text for a in across.layout.annotations] == ["image", "layer 1", "layer 3"]
    first, other = traces(across, "heatmap")
    np.testing.assert_array_equal(first.z, FIRST[0].reshape(2, 2))
    np.testing.assert_array_equal(other.z, choices[:, 1].reshape(2, 2))
    marks = [t for t in traces(across, "scatter")]
    assert [t.name for t in marks] == ["dropped (layer 1)", "dropped (layer 3)"]  # token 3 lost both


def test_dropped_patch_rows_mark_lost_patches():
    images = np.full((2, 8, 8, 3), 100, np.uint8)  # 2 images of 2x2 patches of 4 pixels
    kept = {"vanilla": np.array([[2, 2, 2, 0], [2, 1, 2, 2]]), "BPR": np.full((2, 4), 2)}
    fig = viz.dropped_patch_rows(images, kept, k=2, patch_size=4)
    mosaic = np.asarray(fig.data[0].z)[..., 0]  # images at [1 + 9 row, 1 + 9 column], 1 white pixel apart
    # row 0 (vanilla): image 0's bottom-right patch is all checkerboard (grey 200 and white 255)
    np.testing.assert_array_equal(np.unique(mosaic[5:9, 5:9]), [200, 255])
    # image 1's top-right patch lost one of its two choices: half image (100), half checkerboard
    np.testing.assert_array_equal(np.unique(mosaic[1:5, 10 + 4 : 10 + 8]), [150, 178])
    assert (mosaic[1:5, 1:5] == 100).all() and (mosaic[10:18, 1:9] == 100).all()  # kept; row 1 (BPR) too
    assert list(fig.layout.yaxis.ticktext) == [
        "vanilla: 1 of 8 patches lost every choice",
        "BPR: 0 of 8 patches lost every choice",
    ]
    crops = np.zeros((3, 2, 6, 6, 3), np.uint8)
    grid = viz.expert_patch_grid(crops, np.array([[0.9, 0.5], [0.8, 0.7], [0.6, 0.4]]))
    assert list(grid.layout.yaxis.ticktext)[1] == "expert 1 (gate 0.70-0.80)"


def test_looks_sentence():
    text = analysis.routes.looks_sentence("BPR", {"brightness": 0.01, "contrast": -0.45})
    assert text == (
        "BPR: compute per image against brightness r = +0.01, contrast r = -0.45: compute partly follows "
        "brightness or contrast."
    )
    assert "barely" in analysis.routes.looks_sentence("x", {"brightness": 0.1, "contrast": None})
    assert "nothing to relate" in analysis.routes.looks_sentence("x", {"brightness": None, "contrast": None})


def test_ensemble_frontier_draws_the_binomial_noise():
    rows = [
        {
            "task": "t",
            "method": m,
            "members": ["a"],
            "gflops_per_image": g,
            "accuracy": a,
            "correct": np.ones(100, bool),
        }
        for m, g, a in (("greedy top-K", 0.02, 0.8), ("seed ensemble", 0.03, 0.5))
    ]
    fig = viz.ensemble_frontier(rows)
    greedy, seeds = fig.data
    assert greedy.error_y.array[0] == pytest.approx(200 * np.sqrt(0.8 * 0.2 / 100))  # 8 points
    assert seeds.error_y.array[0] == pytest.approx(10.0) and seeds.error_y.visible
    without = viz.ensemble_frontier([dict(rows[0], correct=None)])
    assert not without.data[0].error_y.visible

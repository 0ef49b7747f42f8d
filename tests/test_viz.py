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
    assert rel.data[0].zmid == 1.0
    with pytest.raises(ValueError, match="class_names"):
        viz.affinity_heatmap(affinity, ["cat"])


def test_ablation_bars():
    fig = viz.ablation_bars(np.array([-0.25, 0.0, 0.1, np.nan]), ["a", "b", "c", "d"])
    (bar,) = traces(fig, "bar")
    assert list(bar.x) == ["a", "b", "c"]
    np.testing.assert_allclose(bar.y, [-25.0, 0.0, 10.0])
    assert list(bar.marker.color) == ["#d62728", "#7f7f7f", "#1f77b4"]
    assert fig.layout.yaxis.title.text == "change in accuracy (percentage points)"


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

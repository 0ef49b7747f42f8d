"""Figures shared by the notebooks (plotly). Each function returns a figure and computes nothing heavy.

Image arrays are uint8 ``[number, height, width, channels]`` (channels 1 or 3) unless stated otherwise.
Routing figures (notebooks 03 and 04) use the shape letters B images, N tokens, E experts, K choices,
Y classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sparse_experts import analysis
from sparse_experts.datasets import grid
from sparse_experts.routing import check_int
from sparse_experts.workbook import fmt

PANEL_PIXELS = 300  # the side of one image panel of the routing figures
MAX_FIGURE_PIXELS = 1100  # no figure is wider: it must fit a notebook column and a projector
MAX_LABELLED_COLUMNS = 60  # heatmap columns above half of this get upright labels in a small font
RELATIVE_OCTAVES = 3  # relative affinity heatmaps span x1/8 to x8 (log2 colours); beyond is clipped


def _check_array(name: str, value, shape_text: str, ndim: int) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != ndim:
        raise ValueError(f"{name} has shape {array.shape}; expected {shape_text}")
    return array


def image_grid(
    images: np.ndarray,
    row_labels: Sequence[str],
    title: str = "",
    columns: int | None = None,
    cell_pixels: int = 56,
) -> go.Figure:
    """A grid with one labelled row per group: ``images`` is ``[rows * columns, height, width, channels]``."""
    images, rows = np.asarray(images), len(row_labels)
    columns = columns or len(images) // rows
    # one white pixel around every image
    mosaic = np.pad(
        grid.image_grid(images, cols=columns, scale=1, pad=1), ((1, 0), (1, 0), (0, 0)), constant_values=255
    )
    h = images.shape[1] + 1
    fig = go.Figure(go.Image(z=mosaic, hoverinfo="skip"))
    fig.update_yaxes(
        tickmode="array",
        tickvals=[1 + h * r + h / 2 for r in range(rows)],
        ticktext=list(row_labels),
        showgrid=False,
    )
    fig.update_xaxes(showticklabels=False, showgrid=False)
    scale = cell_pixels / images.shape[1]
    fig.update_layout(
        title=title,
        width=int(mosaic.shape[1] * scale) + 200,
        height=int(mosaic.shape[0] * scale) + 80,
        margin=dict(l=160, r=10, t=50, b=10),
    )
    return fig


# Notebook 01: the learning-rate sweeps (``SweepResult`` values, one per sweep name).
def sweep_logit_growth(results: dict, title: str = "Max attention logit during training") -> go.Figure:
    """One panel per sweep, one line per learning rate: the max attention logit over layers at each step.

    Both panels share one logarithmic y-range (the smallest and largest finite logit of every sweep), and
    each shows its own tick labels, so a curve that ends at 100 sits visibly lower than one that ends at
    1e5; each panel's title gives its peak."""
    names = list(results)
    series_of = {}
    for name in names:
        logits = np.asarray(results[name].attn_max_logit, np.float64)
        series_of[name] = np.nanmax(np.where(np.isfinite(logits), logits, np.nan), -1)  # [rates, steps]
    finite = np.concatenate([s[np.isfinite(s) & (s > 0)] for s in series_of.values()])
    peaks = {n: np.nanmax(s) if np.isfinite(s).any() else np.nan for n, s in series_of.items()}
    titles = [f"{n} (peak {fmt.number(peaks[n])})" for n in names]
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=titles, shared_yaxes=False)
    palette = ["#440154", "#3b528b", "#21918c", "#5ec962", "#b5de2b", "#fde725", "#f89540", "#cc4778"]
    for col, name in enumerate(names, 1):
        for r, lr in enumerate(results[name].learning_rates):
            line = dict(color=palette[r % len(palette)])
            legend = dict(name=f"lr={lr:g}", legendgroup=f"{lr:g}", showlegend=col == 1)
            series = series_of[name][r]
            fig.add_scatter(
                x=np.arange(len(series)), y=series, mode="lines", line=line, row=1, col=col, **legend
            )
        fig.update_xaxes(title_text="step", row=1, col=col)
    axis = dict(type="log", showticklabels=True, exponentformat="power")
    if len(finite):  # one range for every panel: equal heights mean equal logits
        low, high = np.log10(finite.min()), np.log10(finite.max())
        pad = 0.05 * max(high - low, 1.0)
        axis["range"] = [low - pad, high + pad]
    fig.update_yaxes(**axis)
    fig.update_yaxes(title_text="max attention logit (any layer, log scale)", row=1, col=1)
    fig.update_layout(title=title, height=420, width=980)
    return fig


def sweep_final_loss(results: dict, title: str = "Final training loss against learning rate") -> go.Figure:
    """Final loss (mean of the last steps) per learning rate, one line per sweep; diverged runs as crosses."""
    fig = go.Figure()
    for name, result in results.items():
        final = result.final_loss()
        finite = np.isfinite(final)
        fig.add_scatter(x=result.learning_rates[finite], y=final[finite], mode="lines+markers", name=name)
        if (~finite).any():
            ceiling = np.nanmax(np.where(finite, final, np.nan)) if finite.any() else 1.0
            y = np.full((~finite).sum(), ceiling * 1.1)
            marker = dict(symbol="x", size=12)
            fig.add_scatter(
                x=result.learning_rates[~finite], y=y, mode="markers", marker=marker, name=f"{name}: diverged"
            )
    fig.update_xaxes(type="log", title_text="peak learning rate")
    fig.update_yaxes(type="log", title_text="training loss (mean of the last 10 steps)")
    fig.update_layout(title=title, height=420, width=760)
    return fig


# Routing figures (notebooks 03 and 04).
EXPERT_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#e7ba52", "#843c39", "#5254a3", "#31a354", "#de9ed6",
)  # fmt: skip


def expert_color(expert: int) -> str:
    """The colour of expert ``expert`` in every routing figure (16 colours, then they repeat)."""
    return EXPERT_COLORS[int(expert) % len(EXPERT_COLORS)]


def _choices(chosen, dropped, gates) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``chosen`` experts, ``dropped`` (default: none) and ``gates`` (optional) of one image: ``[N, K]``."""
    chosen = _check_array("chosen", chosen, "[N, K]", 2)
    dropped = np.zeros(chosen.shape, bool) if dropped is None else np.asarray(dropped, bool)
    gates = None if gates is None else np.asarray(gates, np.float64)
    if dropped.shape != chosen.shape or (gates is not None and gates.shape != chosen.shape):
        raise ValueError(
            f"chosen {chosen.shape}, dropped {dropped.shape} and gates {getattr(gates, 'shape', None)} must "
            "share one shape [N, K]"
        )
    return chosen, dropped, gates


def _panel_pixels(panels: int) -> int:
    """The side of one image panel when ``panels`` sit in one row: :data:`PANEL_PIXELS`, smaller when the
    row would be wider than :data:`MAX_FIGURE_PIXELS`."""
    return max(120, min(PANEL_PIXELS, (MAX_FIGURE_PIXELS - 160) // max(int(panels), 1)))


def _rgb(image: np.ndarray) -> np.ndarray:
    image = _check_array("image", image, "[H, W, C] uint8", 3)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def _patch_grid(image: np.ndarray, patch_size: int, tokens: int, has_cls_token: bool) -> tuple[int, int]:
    """``(rows, cols)`` of patches of ``image`` ``[H, W, C]``; ``tokens`` must be rows x cols (+1 with a class
    token)."""
    H, W = image.shape[:2]
    if patch_size < 1 or H % patch_size or W % patch_size:
        raise ValueError(f"patch_size={patch_size} must divide the image height {H} and width {W}")
    rows, cols = H // patch_size, W // patch_size
    if tokens != rows * cols + int(has_cls_token):
        raise ValueError(
            f"chosen has {tokens} tokens; expected {rows * cols + int(has_cls_token)} ({rows}x{cols} patches"
            f"{' + class token' if has_cls_token else ''})"
        )
    return rows, cols


def _routing_panel(fig, col: int, image, experts, dropped, gates, *, patch_size: int, num_experts: int,
                   name: str, start: int, showscale: bool) -> None:  # fmt: skip
    """Add to panel ``col`` of ``fig`` the image, a semi-transparent heatmap of each patch's expert
    (``experts`` ``[N]``, tokens before ``start`` left out) and black crosses where ``dropped`` ``[N]``."""
    H, W = image.shape[:2]
    rows, cols = H // patch_size, W // patch_size
    E = num_experts
    colorscale = [[(e + i) / E, expert_color(e)] for e in range(E) for i in (0, 1)]  # z = e gets exactly e's
    style = dict(zmin=-0.5, zmax=E - 0.5, colorscale=colorscale, opacity=0.85, hoverinfo="text")
    style["colorbar"] = dict(title="expert", tickvals=list(range(E)))
    centres = np.arange(cols) * patch_size + (patch_size - 1) / 2
    vcentres = np.arange(rows) * patch_size + (patch_size - 1) / 2
    hover = [
        f"token {n}: expert {experts[n]}"
        + ("" if gates is None else f", gate {gates[n]:.3f}")
        + (" (dropped)" if dropped[n] else "")
        for n in range(start, len(experts))
    ]
    fig.add_trace(go.Image(z=image, hoverinfo="skip"), row=1, col=col)
    z, text = np.asarray(experts[start:]).reshape(rows, cols).astype(float), np.reshape(hover, (rows, cols))
    heatmap = go.Heatmap(z=z, x=centres, y=vcentres, text=text, showscale=showscale, name=name, **style)
    fig.add_trace(heatmap, row=1, col=col)
    if np.any(dropped[start:]):
        r, c = np.divmod(np.flatnonzero(dropped[start:]), cols)
        marker = dict(symbol="x", size=max(6, _panel_pixels(1) // (3 * max(rows, cols))), color="black")
        at = dict(x=centres[c], y=vcentres[r], row=1, col=col)
        fig.add_scatter(mode="markers", marker=marker, name=f"dropped ({name})", hoverinfo="skip", **at)


def _image_panels_layout(fig, panels: int, title: str, extra_height: int = 0) -> go.Figure:
    side = _panel_pixels(panels)
    fig.update_xaxes(showticklabels=False, showgrid=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, autorange="reversed")
    fig.update_layout(
        title=title,
        width=panels * side + 160,
        height=side + 120 + extra_height,
        showlegend=True,
        legend=dict(orientation="h", yanchor="top", y=-0.02, x=0),
        margin=dict(l=20, r=20, t=70, b=40),
    )
    return fig


def patch_routing(
    image: np.ndarray,
    chosen: np.ndarray,
    *,
    patch_size: int,
    has_cls_token: bool = False,
    dropped: np.ndarray | None = None,
    gates: np.ndarray | None = None,
    num_experts: int | None = None,
    title: str = "Patches by expert",
    original: bool = False,
) -> go.Figure:
    """The image with each patch coloured by its expert: one panel per choice (first, second...), after a
    panel of the image alone when ``original``.

    ``image``: ``[H, W, C]``, H and W multiples of ``patch_size``; ``chosen`` (experts), ``dropped`` (bool)
    and ``gates`` are ``[N, K]`` (``analysis.token_choices``); token 0 is the class token when
    ``has_cls_token`` (not a patch: left out). Each panel is an image trace under a semi-transparent heatmap
    of the expert index per patch (rows of patches top to bottom, coloured by :func:`expert_color`, gate and
    dropped on hover); dropped choices add a scatter trace of black crosses named "dropped (<choice>)".
    """
    image = _rgb(image)
    chosen, dropped, gates = _choices(chosen, dropped, gates)
    _patch_grid(image, patch_size, len(chosen), has_cls_token)
    E, K = num_experts or int(chosen.max()) + 1, chosen.shape[1]
    names = ["first choice", "second choice", "third choice"] + [f"choice {j + 1}" for j in range(3, K)]
    first = int(bool(original))
    fig = make_subplots(rows=1, cols=K + first, subplot_titles=(["image"] * first) + names[:K],
                        horizontal_spacing=0.04)  # fmt: skip
    if original:
        fig.add_trace(go.Image(z=image, hoverinfo="skip", name="image"), row=1, col=1)
    for j in range(K):
        _routing_panel(
            fig, j + 1 + first, image, chosen[:, j], dropped[:, j], None if gates is None else gates[:, j],
            patch_size=patch_size, num_experts=E, name=names[j], start=int(has_cls_token), showscale=j == 0,
        )  # fmt: skip
    return _image_panels_layout(fig, K + first, title)


def routing_across_layers(
    image: np.ndarray,
    choices,
    *,
    patch_size: int,
    num_experts: int,
    has_cls_token: bool = False,
    title: str = "One image through every MoE layer (first choices)",
) -> go.Figure:
    """The image alone, then one panel per MoE layer with each patch coloured by its first-choice expert
    and a black cross where that choice was dropped. ``choices``: ``{layer: (chosen [N, K], dropped [N, K],
    gates [N, K])}`` (``analysis.token_choices`` per layer; only column 0 is drawn), in panel order."""
    image = _rgb(image)
    choices = dict(choices)
    if not choices:
        raise ValueError("choices is empty: no MoE layer to show")
    titles = ["image"] + [f"layer {layer}" for layer in choices]
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.03)
    fig.add_trace(go.Image(z=image, hoverinfo="skip", name="image"), row=1, col=1)
    for col, (layer, (chosen, dropped, gates)) in enumerate(choices.items(), 2):
        chosen, dropped, gates = _choices(chosen, dropped, gates)
        _patch_grid(image, patch_size, len(chosen), has_cls_token)
        _routing_panel(
            fig, col, image, chosen[:, 0], dropped[:, 0], None if gates is None else gates[:, 0],
            patch_size=patch_size, num_experts=num_experts, name=f"layer {layer}", start=int(has_cls_token),
            showscale=col == 2,
        )  # fmt: skip
    return _image_panels_layout(fig, len(titles), title)


def gate_values(
    chosen: np.ndarray,
    dropped: np.ndarray,
    gates: np.ndarray,
    *,
    has_cls_token: bool = False,
    word: str = "router probability",
) -> go.Figure:
    """One grey heatmap per choice of the gate value of each patch's choice, printed with its expert
    (``eN``) and an ``x`` where the choice was dropped; arguments as in :func:`patch_routing`, for a square
    grid of patches; ``word`` names the gate in the title."""
    chosen, dropped, gates = _choices(chosen, dropped, gates)
    start = int(has_cls_token)
    side = int(round(np.sqrt(chosen.shape[0] - start)))
    if side * side != chosen.shape[0] - start:
        raise ValueError(f"{chosen.shape[0] - start} patch tokens do not form a square grid of patches")
    K = chosen.shape[1]
    fig = make_subplots(
        rows=1, cols=K, subplot_titles=[f"gate of choice {j + 1}" for j in range(K)], horizontal_spacing=0.06
    )
    for j in range(K):
        g, e, d = (a[start:, j].reshape(side, side) for a in (gates, chosen, dropped))
        text = np.array(
            [[f"{gv:.2f}<br>e{ev}{' x' if dv else ''}" for gv, ev, dv in zip(*row, strict=True)]
             for row in zip(g, e, d, strict=True)],
            dtype=object,
        )  # fmt: skip
        fig.add_trace(
            go.Heatmap(z=g, text=text, texttemplate="%{text}", zmin=0, zmax=1, colorscale="Greys",
                       showscale=j == 0, colorbar=dict(title="gate"),
                       hovertemplate="gate %{z:.3f}<extra></extra>"),
            row=1, col=j + 1,
        )  # fmt: skip
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, autorange="reversed")
    fig.update_layout(title=f"Gate values ({word}) per patch; eN = expert, x = dropped",
                      width=K * PANEL_PIXELS + 160, height=PANEL_PIXELS + 80, margin=dict(t=80))  # fmt: skip
    return fig


def expert_load_bars(records, title: str = "Expert load per MoE layer") -> go.Figure:
    """One panel per MoE layer of ``records`` ({layer: record}, as from ``analysis.route``): bars of the
    token-choices each expert processed (``"load"`` ``[E]``), a dashed line at the even share, and the
    layer's ``"dropped_fraction"`` and router entropy (``"entropy"`` if given, else the mean entropy in nats
    of ``"gates"`` ``[..., E]``) in the panel title."""
    if not records:
        raise ValueError("records is empty: no MoE layers to show")
    titles = []
    for layer, stats in records.items():
        text = f"layer {layer}<br>dropped {float(stats['dropped_fraction']):.1%}"
        if "entropy" in stats or "gates" in stats:
            entropy = stats["entropy"] if "entropy" in stats else analysis.router_entropy(stats["gates"])
            text += f", entropy {float(entropy):.2f} nats"
        titles.append(text)
    fig = make_subplots(rows=1, cols=len(records), subplot_titles=titles, shared_yaxes=True)
    for col, (layer, stats) in enumerate(records.items(), 1):
        load = np.asarray(stats["load"], np.float64)
        experts = np.arange(len(load))
        colors = [expert_color(e) for e in experts]
        fig.add_bar(
            x=experts, y=load, marker_color=colors, name=f"layer {layer}", showlegend=False, row=1, col=col
        )
        fig.add_hline(y=load.mean(), line_dash="dash", line_color="gray", row=1, col=col)
        fig.update_xaxes(title_text="expert", tickvals=list(experts), row=1, col=col)
    fig.update_yaxes(title_text="token-choices processed", row=1, col=1)
    fig.update_annotations(font_size=13)
    fig.update_layout(title=title, height=420, width=max(420, 320 * len(records) + 100), margin=dict(t=110))
    return fig


def kept_dropped_bars(per_layer, title: str = "Kept and dropped token-choices per expert") -> go.Figure:
    """One panel per MoE layer: for each expert a stacked bar of the token-choices it processed (``kept``,
    in the expert's colour) and those that asked for it but found it full (``dropped``, grey), so a bar's
    height is the demand for the expert; a red line at ``slots``, the slots the expert had over the whole
    set (capacity C x routing groups): kept never rises above it. ``per_layer``: ``{layer: {"kept" [E],
    "dropped" [E], "slots": float}}`` (``analysis.routes.expert_demand`` plus the slots)."""
    per_layer = dict(per_layer)
    if not per_layer:
        raise ValueError("per_layer is empty: no MoE layers to show")
    titles = []
    for layer, stats in per_layer.items():
        kept, dropped = (np.asarray(stats[key], np.float64) for key in ("kept", "dropped"))
        if kept.shape != dropped.shape or kept.ndim != 1:
            raise ValueError(f"layer {layer}: kept {kept.shape} and dropped {dropped.shape} must be [E]")
        share = dropped.sum() / max(kept.sum() + dropped.sum(), 1)
        titles.append(f"layer {layer}: {share:.1%} dropped")
    fig = make_subplots(rows=1, cols=len(per_layer), subplot_titles=titles, shared_yaxes=True)
    for col, stats in enumerate(per_layer.values(), 1):
        kept, dropped = (np.asarray(stats[key], np.float64) for key in ("kept", "dropped"))
        experts = np.arange(len(kept))
        first = col == 1
        fig.add_bar(x=experts, y=kept, marker_color=[expert_color(e) for e in experts], name="kept",
                    legendgroup="kept", showlegend=first, row=1, col=col)  # fmt: skip
        fig.add_bar(x=experts, y=dropped, marker_color="#bbbbbb", marker_pattern_shape="/", name="dropped",
                    legendgroup="dropped", showlegend=first, row=1, col=col)  # fmt: skip
        slots = float(stats["slots"])
        fig.add_scatter(x=[experts[0] - 0.5, experts[-1] + 0.5], y=[slots, slots], mode="lines",
                        line=dict(color="#d62728", width=2), name="capacity: slots per expert",
                        legendgroup="slots", showlegend=first, hoverinfo="y", row=1, col=col)  # fmt: skip
        fig.update_xaxes(title_text="expert", tickvals=list(experts), row=1, col=col)
    fig.update_yaxes(title_text="token-choices (whole set)", row=1, col=1)
    legend = dict(orientation="h", yanchor="bottom", y=1.08, x=0)
    width = min(MAX_FIGURE_PIXELS, max(460, 300 * len(per_layer) + 160))
    lines = wrap_title(title, width)
    fig.update_layout(title=lines, barmode="stack", height=440 + 22 * lines.count("<br>"), legend=legend,
                      margin=dict(t=120 + 22 * lines.count("<br>")), width=width)  # fmt: skip
    return fig


def expert_patch_grid(
    crops: np.ndarray, gates: np.ndarray, title: str = "Each expert's highest-gate patches"
) -> go.Figure:
    """One row per expert of its patches with the highest gate (``crops`` uint8 ``[E, count, h, w, C]``,
    e.g. each patch with a ring of its neighbours, from ``workbook.explorer``), highest first; the row
    label gives the expert and the lowest gate shown (``gates`` ``[E, count]``)."""
    crops = np.asarray(crops)
    gates = np.asarray(gates, np.float64)
    if crops.ndim != 5 or gates.shape != crops.shape[:2]:
        raise ValueError(f"crops {crops.shape} must be [E, count, h, w, C], gates {gates.shape} [E, count]")
    E, count = gates.shape
    labels = [f"expert {e} (gate {gates[e].min():.2f}-{gates[e].max():.2f})" for e in range(E)]
    cell = max(40, min(72, (MAX_FIGURE_PIXELS - 220) // count))
    fig = image_grid(crops.reshape(E * count, *crops.shape[2:]), labels, title=title, columns=count,
                     cell_pixels=cell)  # fmt: skip
    fig.update_layout(margin=dict(l=210, r=10, t=60, b=10), width=fig.layout.width + 50)
    return fig


def dropped_patch_rows(
    images: np.ndarray,
    kept,
    *,
    k: int,
    patch_size: int,
    title: str = "Dropped patches: the same images, one row per routing",
) -> go.Figure:
    """The same images once per routing (``kept``: ``{routing: [n, P]}``, how many of each patch's ``k``
    choices an expert processed, ``analysis.routes.kept_choices`` without the class token): a patch that
    lost every choice is replaced by a grey and white checkerboard ("no expert"), one that lost some is
    half image, half checkerboard, a kept patch is drawn as it is. The row label counts the patches that
    lost every choice. ``images``: uint8 ``[n, H, W, C]``."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images has shape {images.shape}; expected [n, H, W, C] uint8")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    n, H, W, _ = images.shape
    if patch_size < 1 or H % patch_size or W % patch_size:
        raise ValueError(f"patch_size={patch_size} must divide the image height {H} and width {W}")
    rows, cols = H // patch_size, W // patch_size
    kept = {name: np.asarray(v) for name, v in dict(kept).items()}
    if not kept or any(v.shape != (n, rows * cols) for v in kept.values()):
        shapes = {name: v.shape for name, v in kept.items()}
        raise ValueError(f"kept {shapes} must map each routing to [n={n}, P={rows * cols}]")
    # a checkerboard stands for "no expert": it reads as missing on dark and bright images alike
    checks = (np.add.outer(np.arange(H) // 2, np.arange(W) // 2) % 2)[None, :, :, None]
    empty = np.where(checks, 255.0, 200.0)
    shaded, labels = [], []
    for name, counts in kept.items():
        lost = np.where(counts <= 0, 1.0, np.where(counts < k, 0.5, 0.0)).reshape(n, rows, cols)
        lost = np.repeat(np.repeat(lost, patch_size, axis=1), patch_size, axis=2)[..., None]
        shaded.append(np.round(images * (1 - lost) + empty * lost).astype(np.uint8))
        labels.append(f"{name}: {int((counts <= 0).sum())} of {counts.size} patches lost every choice")
    cell = max(48, min(96, (MAX_FIGURE_PIXELS - 260) // n))
    fig = image_grid(np.concatenate(shaded), labels, title=title, columns=n, cell_pixels=cell)
    fig.update_layout(margin=dict(l=250, r=10, t=60, b=10), width=fig.layout.width + 90)
    return fig


def affinity_heatmap(
    affinity: np.ndarray,
    class_names: Sequence[str],
    title: str = "Expert x class affinity",
    relative: bool = False,
) -> go.Figure:
    """Heatmap of ``affinity`` ``[E, Y]`` (``analysis.expert_class_affinity``): rows experts, columns
    classes. ``relative=False``: shares (each column sums to 1), colour from 0; ``relative=True``: ratios to
    the expert's overall share, drawn as log2 of the ratio (clipped to +-:data:`RELATIVE_OCTAVES`) in
    diverging colours centred on x1, ratios on hover and on the colour bar's ticks."""
    affinity = _check_array("affinity", affinity, "[E, Y]", 2)
    E, Y = affinity.shape
    if len(class_names) != Y:
        raise ValueError(f"{len(class_names)} class_names for {Y} affinity columns")
    if relative:  # ratios on a log2 scale centred on 1: "half as much" is as blue as "twice as much" is red
        ticks = np.arange(-RELATIVE_OCTAVES, RELATIVE_OCTAVES + 1)
        labels = [f"x{2.0**t:g}" if t >= 0 else f"x1/{2**-t:g}" for t in ticks]
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.clip(np.log2(affinity), -RELATIVE_OCTAVES, RELATIVE_OCTAVES)
        bar = dict(title="x overall share", tickvals=ticks.tolist(), ticktext=labels)
        colors = dict(colorscale="RdBu_r", zmid=0.0, zmin=-RELATIVE_OCTAVES, zmax=RELATIVE_OCTAVES,
                      customdata=affinity, hovertemplate="%{y}, %{x}: x%{customdata:.2f}<extra></extra>",
                      colorbar=bar)  # fmt: skip
    else:
        z = affinity
        colors = dict(colorscale="Viridis", zmin=0.0, hovertemplate="%{y}, %{x}: %{z:.3f}<extra></extra>",
                      colorbar=dict(title="share of class"))  # fmt: skip
    fig = go.Figure(go.Heatmap(z=z, x=list(class_names), y=[f"expert {e}" for e in range(E)], **colors))
    many = Y > MAX_LABELLED_COLUMNS // 2  # narrow columns: upright labels in a small font
    fig.update_xaxes(title_text="class", tickangle=-90 if many else (-45 if Y > 6 else 0),
                     tickfont_size=9 if many else 12)  # fmt: skip
    fig.update_yaxes(title_text="expert", autorange="reversed")
    width = min(MAX_FIGURE_PIXELS, max(480, 40 * Y + 260))
    lines = wrap_title(title, width)
    extra = lines.count("<br>")  # lines beyond the first
    fig.update_layout(title=dict(text=lines, font_size=15), height=max(300, 28 * E + 160) + 30 * extra,
                      width=width, margin=dict(t=60 + 22 * extra))  # fmt: skip
    return fig


def wrap_title(title: str, width: int, font_pixels: float = 8.5) -> str:
    """``title`` broken into lines (``<br>``, at spaces) that fit a figure ``width`` pixels wide, at
    ``font_pixels`` per character (plotly's default title font is about 8 px a character at size 15)."""
    per_line = max(20, int((width - 80) / font_pixels))
    lines, line = [], ""
    for word in title.split(" "):
        if line and len(line) + 1 + len(word) > per_line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "<br>".join([*lines, line])


def ablation_bars(
    delta_accuracy: np.ndarray,
    class_names: Sequence[str],
    title: str = "Change in accuracy per class when the expert is switched off",
) -> go.Figure:
    """Bars of the change in top-1 accuracy per class ``[Y]`` (ablated minus original, as fractions; drawn
    in percentage points): red where accuracy fell, blue where it rose, gray for no change. NaN (a class not
    in the evaluation set) is left out."""
    delta = _check_array("delta_accuracy", delta_accuracy, "[Y]", 1).astype(np.float64)
    if len(class_names) != len(delta):
        raise ValueError(f"{len(class_names)} class_names for {len(delta)} delta_accuracy values")
    keep = np.isfinite(delta)
    points = 100 * delta[keep]
    colors = ["#d62728" if d < 0 else "#1f77b4" if d > 0 else "#7f7f7f" for d in points]
    fig = go.Figure(go.Bar(x=np.asarray(class_names)[keep].tolist(), y=points, marker_color=colors))
    fig.add_hline(y=0, line_color="black")
    fig.update_xaxes(title_text="class")
    fig.update_yaxes(title_text="change in accuracy (percentage points)")
    fig.update_layout(title=title, height=380, width=min(MAX_FIGURE_PIXELS, max(480, 24 * len(points) + 200)))
    return fig


def expert_ablation_bars(
    per_expert_change: np.ndarray, title: str = "Accuracy change when each expert is switched off"
) -> go.Figure:
    """Bars of the change in top-1 accuracy ``[E]`` (fractions, drawn in points) when each expert is
    switched off in turn (``analysis.ablation_scan``), one bar per expert in its colour."""
    change = _check_array("per_expert_change", per_expert_change, "[E]", 1).astype(np.float64)
    experts = range(len(change))
    bars = go.Bar(
        x=[f"expert {e}" for e in experts], y=100 * change, marker_color=list(map(expert_color, experts))
    )
    fig = go.Figure(bars)
    fig.update_layout(title=title, yaxis_title="change in accuracy (points)", height=360, width=620)
    return fig


def accuracy_vs_gflops(
    curves,
    points=None,
    title: str = "Accuracy against compute per image",
    *,
    chance: float | None = None,
    band: tuple[float, float] | None = None,
    band_label: str = "noise: ± 2 standard errors",
) -> go.Figure:
    """Accuracy against GFLOPs per image. ``curves``: {name: (gflops[], accuracy[]) or (gflops[],
    accuracy[], capacity_factors[])}, drawn as lines with markers (capacity factors as marker labels);
    ``points``: {name: (gflops, accuracy)}, drawn as single large markers (e.g. the dense model, Soft MoE).
    With ``chance`` or ``band`` (centre, half-width), see :func:`accuracy_in_context`."""
    fig = go.Figure()
    # curves that share their x values (vanilla and BPR at one capacity factor) label on different sides
    sides = ("bottom right", "top left", "bottom left", "middle right")
    for i, (name, curve) in enumerate(dict(curves).items()):
        x, y = np.asarray(curve[0], np.float64), np.asarray(curve[1], np.float64)
        order = np.argsort(x, kind="stable")
        labels = [f"{float(c):g}" for c in np.asarray(curve[2])[order]] if len(curve) == 3 else None
        fig.add_scatter(
            x=x[order],
            y=y[order],
            mode="lines+markers+text" if labels else "lines+markers",
            text=labels,
            textposition=sides[i % len(sides)],
            textfont=dict(size=10),
            name=name,
            hovertemplate=f"{name}<br>%{{x:.4g}} GFLOPs<br>accuracy %{{y:.3f}}<extra></extra>",
        )
    symbols = ["star", "diamond", "square", "triangle-up", "cross"]
    for i, (name, (x, y)) in enumerate(dict(points or {}).items()):
        marker = dict(size=14, symbol=symbols[i % len(symbols)])
        fig.add_scatter(x=[float(x)], y=[float(y)], mode="markers", marker=marker, name=name)
    fig.update_xaxes(title_text="GFLOPs per image")
    fig.update_yaxes(title_text="top-1 accuracy")
    fig.update_layout(title=title, height=440, width=860)
    return accuracy_in_context(fig, chance=chance, band=band, band_label=band_label)


def _tokens_per_image(values: np.ndarray) -> np.ndarray:
    values = _check_array("tokens_per_image", values, "[B]", 1).astype(np.float64)
    if len(values) == 0:
        raise ValueError("tokens_per_image is empty")
    return values


def compute_histogram(
    tokens_per_image: np.ndarray,
    bins: int = 30,
    title: str = "Compute per image",
    xaxis_title: str = "token-choices processed by experts per image",
) -> go.Figure:
    """Histogram of compute per image (``analysis.compute_per_image``: ``[B]``), with dashed lines at the
    mean and at the fewest and most."""
    values = _tokens_per_image(tokens_per_image)
    fig = go.Figure(go.Histogram(x=values, nbinsx=bins, name="images", marker_color="#3b528b"))
    for value, label in [(values.min(), "least"), (values.mean(), "mean"), (values.max(), "most")]:
        fig.add_vline(x=value, line_dash="dash", line_color="gray", annotation_text=f"{label} {value:.1f}")
    fig.update_xaxes(title_text=xaxis_title)
    fig.update_yaxes(title_text="images")
    fig.update_layout(title=title, height=380, width=700, showlegend=False)
    return fig


def compute_histograms(
    tokens_per_image,
    bins: int = 30,
    title: str = "Compute per image",
    xaxis_title: str = "token-choices processed by experts per image",
) -> go.Figure:
    """Several routings' compute per image (``{name: [B]}``, e.g. vanilla and BPR) overlaid in one
    histogram on shared bins, each with a dashed line at its mean (the legend gives mean and spread)."""
    values = {name: _tokens_per_image(v) for name, v in dict(tokens_per_image).items()}
    if not values:
        raise ValueError("tokens_per_image is empty: no routing to show")
    everything = np.concatenate(list(values.values()))
    low, high = float(everything.min()), float(everything.max())
    size = max((high - low) / bins, 1.0)  # whole token-choices: a bin is never narrower than one
    palette = ["#3b528b", "#f89540", "#21918c", "#cc4778"]
    fig = go.Figure()
    for i, (name, v) in enumerate(values.items()):
        color = palette[i % len(palette)]
        label = f"{name}: mean {fmt.number(v.mean())}, std {fmt.number(v.std())}"
        fig.add_histogram(x=v, name=label, marker_color=color, opacity=0.6,
                          xbins=dict(start=low - 0.5, end=high + 0.5, size=size))  # fmt: skip
        fig.add_vline(x=float(v.mean()), line_dash="dash", line_color=color)
    fig.update_xaxes(title_text=xaxis_title)
    fig.update_yaxes(title_text="images")
    legend = dict(orientation="h", yanchor="bottom", y=1.0, x=0)
    fig.update_layout(title=title, barmode="overlay", height=400, width=760, legend=legend, margin=dict(t=90))
    return fig


def compute_extremes(
    images: np.ndarray,
    tokens_per_image: np.ndarray,
    count: int = 8,
    title: str = "Images that received the most and the least compute",
) -> go.Figure:
    """:func:`image_grid` with two rows: the ``count`` images with the most token-choices processed (most
    first) and the ``count`` with the least (least first); row labels give their counts."""
    values = _tokens_per_image(tokens_per_image)
    if len(images) != len(values):
        raise ValueError(f"{len(images)} images for {len(values)} tokens_per_image values")
    if not 1 <= count <= len(values):
        raise ValueError(f"count={count} must be in [1, {len(values)}] (the number of images)")
    most = np.argsort(-values, kind="stable")[:count]
    least = np.argsort(values, kind="stable")[:count]
    labels = [
        f"{word}: " + ", ".join(f"{values[i]:g}" for i in chosen[:4]) + ("..." if count > 4 else "")
        for word, chosen in (("most", most), ("least", least))
    ]
    return image_grid(np.asarray(images)[np.concatenate([most, least])], labels, title=title, columns=count)


# Notebook 02: models on the accuracy-compute plane, learning curves.
FAMILY_COLORS = {"dense": "#636efa", "sparse": "#ef553b"}


def model_frontier(
    rows,
    title: str = "Test accuracy against inference compute",
    *,
    chance: float | None = None,
    band: tuple[float, float] | None = None,
    band_label: str = "noise: ± 2 standard errors",
) -> go.Figure:
    """One marker per model at (GFLOPs per image, mean test accuracy), coloured by family (dense/sparse),
    error bars = std over seeds, small markers = each seed, and each family's upper frontier as a line.
    ``rows``: as from ``sparse_experts.workbook.zoo.summarize``. With ``chance`` or ``band`` (centre,
    half-width), see :func:`accuracy_in_context`."""
    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty: nothing to plot")
    fig = go.Figure()
    # models at nearly the same compute (within 5%) put their labels left, right, above, below their markers
    groups: list[list[dict]] = []
    for r in sorted(rows, key=lambda r: r["gflops_per_image"]):
        if groups and r["gflops_per_image"] < 1.05 * groups[-1][-1]["gflops_per_image"]:
            groups[-1].append(r)
        else:
            groups.append([r])
    sides = ("middle left", "middle right", "top center", "bottom center")
    position = {
        r["model"]: "top center" if len(group) == 1 else sides[i % len(sides)]
        for group in groups
        for i, r in enumerate(group)
    }
    for family, color in FAMILY_COLORS.items():
        members = sorted((r for r in rows if r["family"] == family), key=lambda r: r["gflops_per_image"])
        if not members:
            continue
        x = [r["gflops_per_image"] for r in members]
        y = [r["test_accuracy"] for r in members]
        errors = [r["test_accuracy_std"] or 0.0 for r in members]
        fig.add_scatter(
            x=x, y=y, mode="markers+text", text=[r["model"] for r in members],
            textposition=[position[r["model"]] for r in members],
            marker=dict(size=12, color=color), error_y=dict(type="data", array=errors, visible=True),
            name=family, hovertemplate="%{text}<br>%{x:.4g} GFLOPs<br>accuracy %{y:.3f}<extra></extra>",
        )  # fmt: skip
        seeds_x = [r["gflops_per_image"] for r in members for _ in r["test_accuracy_per_seed"]]
        seeds_y = [a for r in members for a in r["test_accuracy_per_seed"]]
        fig.add_scatter(
            x=seeds_x, y=seeds_y, mode="markers", marker=dict(size=5, color=color, opacity=0.5),
            name=f"{family} (each seed)", showlegend=False,
        )  # fmt: skip
        frontier, best = [], -np.inf
        for r in members:  # upper frontier: points not beaten by a cheaper member of the family
            if r["test_accuracy"] > best:
                frontier.append(r)
                best = r["test_accuracy"]
        fig.add_scatter(
            x=[r["gflops_per_image"] for r in frontier], y=[r["test_accuracy"] for r in frontier],
            mode="lines", line=dict(color=color, dash="dot"), name=f"{family} frontier",
        )  # fmt: skip
    xs = np.log10([r["gflops_per_image"] for r in rows])
    pad = 0.12 * max(xs.max() - xs.min(), 0.3)  # room for the labels left and right of the end markers
    fig.update_xaxes(
        title_text="GFLOPs per image (inference)", type="log", range=[xs.min() - pad, xs.max() + pad]
    )
    fig.update_yaxes(title_text="test accuracy")
    fig.update_layout(title=title, height=460, width=820)
    return accuracy_in_context(fig, chance=chance, band=band, band_label=band_label)


def accuracy_in_context(
    fig: go.Figure,
    *,
    chance: float | None = None,
    band: tuple[float, float] | None = None,
    band_label: str = "noise: ± 2 standard errors",
) -> go.Figure:
    """A one-panel accuracy figure (accuracy as a fraction on y) put in context, as two panels sharing x:

    - above, the figure zoomed on its points, with ``band`` = (centre, half-width) shaded: points inside
      it cannot be told from the centre by the noise (e.g. a reference accuracy +- 2 standard errors). The
      y-range always holds the whole band and is at least four half-widths tall, so it is never narrower
      than the noise;
    - below, a thin panel of the same traces on the full scale (0 to 1) with a dotted line at ``chance``.

    The band's label is a legend entry (a grey square), so it never covers a point or a label.
    Without ``chance`` and ``band`` the figure is returned as it is."""
    if chance is None and band is None:
        return fig
    values = [np.asarray(t.y, np.float64) for t in fig.data if t.y is not None]
    for t in fig.data:
        if t.error_y is not None and t.error_y.array is not None:
            errors = np.asarray(t.error_y.array, np.float64)
            values += [np.asarray(t.y, np.float64) + errors, np.asarray(t.y, np.float64) - errors]
    flat = np.concatenate(values) if values else np.array([])
    flat = flat[np.isfinite(flat)]
    low, high = (float(flat.min()), float(flat.max())) if len(flat) else (0.0, 1.0)
    half = 0.0
    if band is not None:
        centre, half = (float(v) for v in band)
        low, high = min(low, centre - half), max(high, centre + half)
    span = max(high - low, 4 * half, 0.01)
    middle = (low + high) / 2
    zoom = [middle - 0.55 * span, middle + 0.55 * span]
    zoom = [zoom[0] - max(zoom[1] - 1.02, 0), zoom[1] - min(zoom[0], 0)]  # slide inside [0, 1.02]...
    zoom = [max(zoom[0], 0.0), min(zoom[1], 1.02)]  # ...keeping the span where it fits
    out = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.78, 0.22], vertical_spacing=0.06)
    palette = plotly.colors.qualitative.Plotly  # plotly's default colours, fixed so both panels agree
    for i, trace in enumerate(fig.data):
        trace = go.Scatter(trace)
        if trace.marker.color is None and trace.line.color is None:
            trace.update(marker_color=palette[i % len(palette)], line_color=palette[i % len(palette)])
        out.add_trace(trace, row=1, col=1)
        small = go.Scatter(trace).update(showlegend=False, hoverinfo="skip")
        if small.mode:
            small.mode = small.mode.replace("+text", "")
        out.add_trace(small, row=2, col=1)
    if band is not None:
        out.add_hrect(y0=centre - half, y1=centre + half, fillcolor="gray", opacity=0.18, line_width=0,
                      row=1, col=1)  # fmt: skip
        square = dict(symbol="square", size=14, color="gray", opacity=0.35)
        out.add_scatter(x=[None], y=[None], mode="markers", marker=square, name=band_label, row=1, col=1)
    if chance is not None:
        label = dict(annotation_text=f"chance {fmt.percent(chance)}", annotation_position="top left")
        out.add_hline(y=chance, line_dash="dot", line_color="black", row=2, col=1, **label)
        if zoom[0] <= chance <= zoom[1]:
            out.add_hline(y=chance, line_dash="dot", line_color="black", row=1, col=1, **label)
    x_type, x_range = fig.layout.xaxis.type, fig.layout.xaxis.range
    out.update_xaxes(type=x_type, range=x_range, row=1, col=1)
    out.update_xaxes(type=x_type, range=x_range, title_text=fig.layout.xaxis.title.text, row=2, col=1)
    out.update_yaxes(title_text=f"{fig.layout.yaxis.title.text} (zoomed)", range=zoom, tickformat=".1%",
                     row=1, col=1)  # fmt: skip
    out.update_yaxes(title_text="full scale", range=[0, 1.02], tickformat=".0%", row=2, col=1)
    out.update_layout(
        title=fig.layout.title.text, width=fig.layout.width, height=(fig.layout.height or 440) + 150
    )
    return out


def learning_curves(histories, smooth: int = 20, title: str = "Learning curves") -> go.Figure:
    """Training loss (moving average over ``smooth`` steps) and validation accuracy per model, side by side.
    ``histories``: {model name: ``train.History``}."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss", "validation accuracy"))
    palette = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880"]
    for i, (name, history) in enumerate(dict(histories).items()):
        line = dict(color=palette[i % len(palette)])
        loss = history.series("loss")
        window = min(smooth, max(len(loss), 1))
        smoothed = np.convolve(loss, np.ones(window) / window, mode="valid") if len(loss) else loss
        steps = np.arange(window, window + len(smoothed))
        fig.add_scatter(x=steps, y=smoothed, name=name, line=line, legendgroup=name, row=1, col=1)
        if history.evals:
            eval_steps, accuracy = history.eval_series("accuracy")
            fig.add_scatter(
                x=eval_steps, y=accuracy, name=name, mode="lines+markers", line=line,
                legendgroup=name, showlegend=False, row=1, col=2,
            )  # fmt: skip
    fig.update_xaxes(title_text="step")
    fig.update_layout(title=title, height=420, width=980)
    return fig


# Notebook 00: example images of a dataset, its label hierarchy.
def classes_across_groups(
    labels: np.ndarray, fine_to_coarse: np.ndarray | None, shown: int, seed: int = 0
) -> list[int]:
    """``shown`` classes present in ``labels`` (at most as many as there are), sorted. With a hierarchy
    (``fine_to_coarse [Y]``) they are taken round-robin over the coarse groups, so that every group appears
    before any appears twice; within a group, and without a hierarchy, the choice is random by ``seed``."""
    check_int("shown", shown)
    rng = np.random.default_rng(seed)
    present = np.unique(np.asarray(labels))
    shown = min(shown, len(present))
    if fine_to_coarse is None:
        return sorted(rng.choice(present, shown, replace=False).tolist())
    fine_to_coarse = np.asarray(fine_to_coarse)
    order = np.lexsort((rng.random(len(present)), fine_to_coarse[present]))
    by_group: dict[int, list[int]] = {}
    for c in present[order]:
        by_group.setdefault(int(fine_to_coarse[c]), []).append(int(c))
    longest = max(map(len, by_group.values()))
    rounds = [g[i] for i in range(longest) for g in by_group.values() if i < len(g)]
    return sorted(rounds[:shown])


def dataset_grid(split, info, *, classes_shown: int, images_per_class: int, seed: int = 0, title: str = ""):
    """:func:`image_grid` of a dataset split (``info`` from ``datasets.info``): one row per class of
    :func:`classes_across_groups`, labelled "coarse / fine" when the dataset has a hierarchy, with
    ``images_per_class`` images each (fewer if a class has fewer), chosen by ``seed``."""
    classes = classes_across_groups(split.labels, info.fine_to_coarse, classes_shown, seed)
    per_class = min(images_per_class, int(np.bincount(split.labels)[classes].min()))
    rng = np.random.default_rng(seed)
    chosen = [
        np.sort(rng.choice(np.flatnonzero(split.labels == c), per_class, replace=False)) for c in classes
    ]
    names = [info.class_names[c] for c in classes]
    if info.fine_to_coarse is not None:
        names = [
            f"{info.coarse_class_names[info.fine_to_coarse[c]]} / {n}"
            for c, n in zip(classes, names, strict=True)
        ]
    return image_grid(split.images[np.concatenate(chosen)], names, title=title, cell_pixels=48)


def label_treemap(rows, root: str, title: str = "") -> go.Figure:
    """Treemap of a label hierarchy: ``rows`` of {"coarse", "fine", "train images"} (as from
    ``sparse_experts.workbook.tour.label_hierarchy``) under one ``root`` box; areas count images."""
    if not rows:
        raise ValueError("rows is empty: no label hierarchy to show")
    totals: dict[str, int] = {}
    for row in rows:
        totals[row["coarse"]] = totals.get(row["coarse"], 0) + int(row["train images"])
    fig = go.Figure(
        go.Treemap(
            ids=[
                root,
                *(f"{root}/{c}" for c in totals),
                *(f"{root}/{r['coarse']}/{r['fine']}" for r in rows),
            ],
            labels=[root, *totals, *(r["fine"] for r in rows)],
            parents=["", *[root] * len(totals), *(f"{root}/{r['coarse']}" for r in rows)],
            values=[sum(totals.values()), *totals.values(), *(int(r["train images"]) for r in rows)],
            branchvalues="total",
        )
    )
    fig.update_layout(title=title, margin=dict(t=30, l=10, r=10, b=10), height=520)
    return fig


def ranking_scatter(tables, estimator: str = "knn", title: str = "") -> go.Figure:
    """Notebook 05: one panel per task, each pool member a point at (its ``estimator`` value, its
    fine-tuned test accuracy). ``tables``: ``{task: rows}`` with "member", the estimator and
    "test_accuracy" (``TaskResult.table()``)."""
    tasks = list(tables)
    cols = min(4, len(tasks))
    rows = -(-len(tasks) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=tasks, horizontal_spacing=0.06,
                        vertical_spacing=0.18)  # fmt: skip
    for i, task in enumerate(tasks):
        table = tables[task]
        fig.add_trace(go.Scatter(
            x=[r[estimator] for r in table], y=[100 * r["test_accuracy"] for r in table], mode="markers",
            text=[r["member"] for r in table], hovertemplate="%{text}<br>%{x:.3f}, %{y:.1f}%<extra></extra>",
            marker=dict(size=8, color="#1f77b4"), showlegend=False,
        ), row=i // cols + 1, col=i % cols + 1)  # fmt: skip
    fig.update_xaxes(title_text=estimator, title_font_size=11)
    fig.update_yaxes(title_text="fine-tuned test accuracy (%)", title_font_size=11, col=1)
    fig.update_layout(title=title or f"{estimator} against fine-tuned accuracy, per task",
                      height=300 * rows + 80, width=1100)  # fmt: skip
    return fig


def ensemble_frontier(rows, title: str = "Test accuracy against inference GFLOPs per image") -> go.Figure:
    """Notebook 05: singles and ensembles, one panel per task: each method a point at (its members' summed
    GFLOPs per image, its test accuracy), with a bar of +-2 binomial standard errors over the row's test
    images (``"correct"``) so a gap inside the bars reads as noise. ``rows``:
    :func:`transfer_study.ensembles_for_task` rows."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cols = min(4, len(tasks))
    nrows = -(-len(tasks) // cols)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=tasks, horizontal_spacing=0.06,
                        vertical_spacing=0.18)  # fmt: skip
    palette = ["#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#7f7f7f"]
    for i, task in enumerate(tasks):
        for j, method in enumerate(methods):
            r = next(r for r in rows if r["task"] == task and r["method"] == method)
            hover = f"{method}<br>{', '.join(r['members'])}<br>%{{x:.4f}} GFLOPs, %{{y:.1f}}%<extra></extra>"
            correct = r.get("correct")  # per test image (an array): a binomial +-2 SE bar when known
            count = 0 if correct is None else len(correct)
            noise = 200 * np.sqrt(r["accuracy"] * (1 - r["accuracy"]) / count) if count else None
            fig.add_trace(go.Scatter(
                x=[r["gflops_per_image"]], y=[100 * r["accuracy"]], mode="markers", name=method,
                legendgroup=method, showlegend=i == 0, marker=dict(size=10, color=palette[j % len(palette)]),
                hovertemplate=hover, error_y=dict(type="data", array=[noise], visible=noise is not None,
                                                  thickness=1, width=3),
            ), row=i // cols + 1, col=i % cols + 1)  # fmt: skip
    fig.update_xaxes(title_text="GFLOPs / image", title_font_size=11)
    fig.update_yaxes(title_text="test accuracy (%)", title_font_size=11, col=1)
    fig.update_layout(title=title, height=300 * nrows + 100, width=1100)
    return fig


def expert_heatmaps(knn, accuracy, title: str = "") -> go.Figure:
    """Notebook 06: side by side, the kNN proxy's score and the fine-tuned test accuracy per (task, candidate)
    (``expert_models.score_matrix`` dicts: "tasks", "candidates", "values" [T][C]), each row's best candidate
    outlined, so one sees whether the proxy's best is the fine-tuned best."""
    tasks, names = knn["tasks"], knn["candidates"]
    short = [n.split(":", 1)[-1] for n in names]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.14, subplot_titles=(
        "kNN accuracy on the training examples (proxy)", "fine-tuned test accuracy"))  # fmt: skip
    for col, data in ((1, knn), (2, accuracy)):
        values = 100 * np.asarray(data["values"], np.float64)
        fig.add_trace(go.Heatmap(
            z=values, x=short, y=tasks, colorscale="Viridis", showscale=False,
            text=[[f"{v:.0f}" for v in row] for row in values], texttemplate="%{text}",
            hovertemplate="%{y} / %{x}: %{z:.1f}%<extra></extra>",
        ), row=1, col=col)  # fmt: skip
        for t, row in enumerate(values):  # outline each task's best candidate
            c = int(np.argmax(row))
            fig.add_shape(type="rect", x0=c - 0.5, x1=c + 0.5, y0=t - 0.5, y1=t + 0.5, line=dict(color="red",
                          width=2), row=1, col=col)  # fmt: skip
    fig.update_xaxes(tickangle=-45, tickfont_size=10)
    fig.update_yaxes(autorange="reversed", tickfont_size=10)
    fig.update_layout(title=title or "Which candidate does the proxy prefer, and which fine-tunes best? "
                      "(percent; best per task outlined)", height=140 + 32 * len(tasks),
                      width=MAX_FIGURE_PIXELS, title_font_size=13)  # fmt: skip
    return fig


def adapter_tradeoff(points, title: str = "") -> go.Figure:
    """Notebook 06: accuracy against parameters spent. ``points``: rows with "method", "params" (to hold the
    ten experts), "accuracy" and "se" (fractions of 1), one per (method, task) with "task"; one marker per
    method and task, error bars of 2 standard errors, parameters on a log axis."""
    fig = go.Figure()
    for task in dict.fromkeys(p["task"] for p in points):
        rows = [p for p in points if p["task"] == task]
        fig.add_trace(go.Scatter(
            x=[p["params"] for p in rows], y=[100 * p["accuracy"] for p in rows], mode="markers+text+lines",
            text=[p["method"] for p in rows], textposition="top center", name=task,
            error_y=dict(type="data", array=[200 * p["se"] for p in rows]),
        ))  # fmt: skip
    fig.update_xaxes(type="log", title_text="parameters to hold the generalist or the ten expert models")
    fig.update_yaxes(title_text="fine-tuned test accuracy (%), ± 2 SE")
    fig.update_layout(title=title or "Adapters against full expert models on the aligned tasks", height=420,
                      width=900)  # fmt: skip
    return fig

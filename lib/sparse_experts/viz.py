"""Figures shared by the notebooks (plotly). Each function returns a figure and computes nothing heavy.

Image arrays are uint8 ``[number, height, width, channels]`` (channels 1 or 3) unless stated otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go


def tile(images: np.ndarray, columns: int, pad: int = 1, fill: int = 255) -> np.ndarray:
    """Arrange ``[number, height, width, channels]`` images into one RGB uint8 mosaic, row by row."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [number, height, width, 1 or 3], got shape {images.shape}")
    if columns < 1:
        raise ValueError(f"columns={columns} must be >= 1")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    n, h, w, _ = images.shape
    rows = max(1, -(-n // columns))
    canvas = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), fill, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[top : top + h, left : left + w] = image
    return canvas


def image_grid(
    images: np.ndarray,
    row_labels: Sequence[str],
    title: str = "",
    columns: int | None = None,
    cell_pixels: int = 56,
) -> go.Figure:
    """A grid with one labelled row per group: ``images`` is ``[rows * columns, height, width, channels]``."""
    images = np.asarray(images)
    rows = len(row_labels)
    if rows == 0:
        raise ValueError("row_labels is empty: nothing to show")
    columns = columns or len(images) // rows
    if rows * columns != len(images):
        raise ValueError(f"{len(images)} images do not fill {rows} rows x {columns} columns")
    pad = 1
    mosaic = tile(images, columns, pad=pad)
    h = images.shape[1] + pad
    fig = go.Figure(go.Image(z=mosaic, hoverinfo="skip"))
    fig.update_yaxes(
        tickmode="array",
        tickvals=[pad + h * r + h / 2 for r in range(rows)],
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


def sample_per_class(labels: np.ndarray, classes: Sequence[int], per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of ``per_class`` examples of each class in ``classes`` (in that order), chosen by ``seed``.

    A class with fewer examples than ``per_class`` is an error naming the class and its count.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} examples, fewer than per_class={per_class}")
        chosen.append(np.sort(rng.choice(members, per_class, replace=False)))
    return np.concatenate(chosen) if chosen else np.zeros(0, np.int64)


def sweep_logit_growth(results: dict, title: str = "Max attention logit during training") -> go.Figure:
    """One panel per sweep (e.g. {"plain attention": r1, "QK-norm": r2}), one line per learning rate:
    the max attention logit over layers at each step (log scale). ``results`` values are ``SweepResult``.
    """
    from plotly.subplots import make_subplots

    names = list(results)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, shared_yaxes=True)
    palette = ["#440154", "#3b528b", "#21918c", "#5ec962", "#b5de2b", "#fde725", "#f89540", "#cc4778"]
    for col, name in enumerate(names, 1):
        result = results[name]
        for r, lr in enumerate(result.learning_rates):
            series = np.nanmax(
                np.where(np.isfinite(result.attn_max_logit[r]), result.attn_max_logit[r], np.nan), -1
            )
            fig.add_scatter(
                x=np.arange(len(series)),
                y=series,
                mode="lines",
                name=f"lr={lr:g}",
                legendgroup=f"{lr:g}",
                showlegend=col == 1,
                line=dict(color=palette[r % len(palette)]),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="step", row=1, col=col)
    fig.update_yaxes(type="log", title_text="max attention logit (any layer)", row=1, col=1)
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
            fig.add_scatter(
                x=result.learning_rates[~finite],
                y=np.full((~finite).sum(), ceiling * 1.1),
                mode="markers",
                marker=dict(symbol="x", size=12),
                name=f"{name}: diverged",
            )
    fig.update_xaxes(type="log", title_text="peak learning rate")
    fig.update_yaxes(type="log", title_text="training loss (mean of the last 10 steps)")
    fig.update_layout(title=title, height=420, width=760)
    return fig

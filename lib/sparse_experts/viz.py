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

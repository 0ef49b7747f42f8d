"""Example image grids (numpy + Pillow) for the data README and the tour notebook."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def image_grid(images: np.ndarray, *, cols: int = 8, scale: int = 2, pad: int = 2) -> np.ndarray:
    """Tile uint8 [B, height, width, 1 or 3] images, ``cols`` per row, ``pad`` white pixels apart, then
    upscale ``scale`` times: uint8 [rows * (height + pad) * scale, cols * (width + pad) * scale, 3]."""
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"image_grid: images must be uint8 [B, height, width, channels], got {images.shape}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    b, h, w, _ = images.shape
    rows = -(-b // cols)
    out = np.full((rows * (h + pad), cols * (w + pad), 3), 255, np.uint8)
    for i in range(b):
        r, c = divmod(i, cols)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = images[i]
    return np.kron(out, np.ones((scale, scale, 1), np.uint8)) if scale > 1 else out


def by_class(labels: np.ndarray, num_classes: int, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` examples of each class, class after class (fewer when a class has
    fewer examples)."""
    labels = np.asarray(labels)
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)])


def save_grid(
    images: np.ndarray,
    path: str | Path,
    *,
    labels: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    cols: int = 8,
    scale: int = 2,
) -> Path:
    """Save :func:`image_grid` as a 256-colour PNG; with ``labels`` and ``class_names``, one caption row per
    grid row."""
    grid = image_grid(images, cols=cols, scale=scale)
    img = Image.fromarray(grid)
    if labels is not None and class_names is not None:
        h, w = images.shape[1:3]
        tile_h, tile_w = (h + 2) * scale, (w + 2) * scale
        rows = -(-len(labels) // cols)
        caption = 10
        canvas = Image.new("RGB", (img.width, rows * (tile_h + caption)), "white")
        draw = ImageDraw.Draw(canvas)
        for r in range(rows):
            canvas.paste(img.crop((0, r * tile_h, img.width, (r + 1) * tile_h)), (0, r * (tile_h + caption)))
            for c in range(cols):
                i = r * cols + c
                if i < len(labels):
                    text = str(class_names[int(labels[i])])[: max(3, tile_w // 6)]
                    draw.text((c * tile_w + 1, r * (tile_h + caption) + tile_h - 1), text, fill=(0, 0, 0))
        img = canvas
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # 256 colours: files a few times smaller than RGB, good enough to look at
    img = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    img.save(path, optimize=True)
    return path

"""The shapes datasets: the upstream pretraining set and the low-data downstream tasks, as numpy arrays.

Each task is a :class:`TaskSpec` plus a scene sampler. :func:`generate` renders one split deterministically:
chunk ``c`` of ``CHUNK`` images of split ``s`` is drawn from ``np.random.default_rng([seed, task code, split
code, c])``, so the same (task, split, size, seed) gives byte-identical images, and a smaller size is a
prefix of a larger one. What each image holds is described per dataset in ``data/README.md``.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from sparse_experts.datasets import shapes as sh

CHUNK = 1000
"""Images rendered per random stream; sizes that are not a multiple are cut from the last chunk."""

SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}

UPSTREAM_HIERARCHY: dict[str, tuple[str, ...]] = {
    "polygons": ("triangle", "square", "pentagon", "hexagon", "rectangle", "rhombus"),
    "stars": ("star3", "star4", "star5", "star6", "star8", "sparkle"),
    "rings": ("circle_ring", "square_frame", "triangle_frame", "double_ring", "donut", "hexagon_frame"),
    "crosses": ("plus", "fat_plus", "tee", "ell", "tripod", "asterisk"),
    "arcs": ("crescent", "semicircle", "c_arc", "half_arc", "pie", "pacman"),
    "bars": ("bar", "double_bar", "triple_bar", "dashed_bar", "chevron", "zigzag"),
    "blobs": ("disc", "ellipse", "flower4", "flower6", "peanut", "trefoil"),
    "glyphs": ("glyph_h", "glyph_e", "glyph_f", "glyph_a", "glyph_k", "glyph_m"),
    "arrows": ("arrow", "block_arrow", "double_arrow", "dart", "double_chevron", "feathered_arrow"),
    "clusters": ("two_dots", "three_line", "three_triangle", "four_square", "five_dice", "dot_ring"),
}
"""Coarse class (shape family) -> its fine classes (shapes), in label order."""

UPSTREAM_FINE: tuple[str, ...] = tuple(f for fines in UPSTREAM_HIERARCHY.values() for f in fines)
UPSTREAM_FINE_TO_COARSE: tuple[int, ...] = tuple(
    c for c, fines in enumerate(UPSTREAM_HIERARCHY.values()) for _ in fines
)
NOVEL_SHAPES = ("heart", "gear", "keyhole", "bowtie", "house", "lens", "teardrop", "crossed_ring")
FINEGRAINED_SHAPES = ("right_triangle", "parallelogram", "kite", "trapezoid", "heptagon", "octagon")
FINESTARS_SHAPES = ("star7", "star9", "star12", "star3_fat", "star5_thin", "star6_thin")
ORIENTATION_SHAPES = ("arrow", "block_arrow", "dart", "feathered_arrow", "pacman")
ORIENTATION_NAMES = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")
POSITION_NAMES = tuple(f"{r}-{c}" for r in ("top", "middle", "bottom") for c in ("left", "centre", "right"))
MAX_COUNT = 6
COUNT_SHAPES = (
    UPSTREAM_HIERARCHY["polygons"]
    + UPSTREAM_HIERARCHY["stars"]
    + UPSTREAM_HIERARCHY["blobs"]
    + ("circle_ring", "square_frame", "donut", "plus", "fat_plus", "tee", "ell", "semicircle", "pacman")
)
"""Compact, connected shapes only: a cluster of dots or a dashed bar would look like several objects."""


@dataclass(frozen=True)
class TaskSpec:
    """What a shapes task is: classes (and hierarchy), group, default split sizes, allowed augmentations."""

    name: str
    code: int
    class_names: tuple[str, ...]
    group: str
    description: str
    augmentations: tuple[str, ...] = ("crop", "flip")
    sizes: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"train": 800, "validation": 200, "test": 2_000}
    )
    coarse_names: tuple[str, ...] | None = None
    fine_to_coarse: tuple[int, ...] | None = None


_UPSTREAM = TaskSpec(
    "upstream",
    1,
    UPSTREAM_FINE,
    "upstream",
    "Upstream pretraining set: 60 shape classes in 10 families (coarse labels), turned up to 30 degrees, "
    "on plain or faintly textured backgrounds with faint noise.",
    sizes={"train": 50_000, "validation": 5_000, "test": 20_000},
    coarse_names=tuple(UPSTREAM_HIERARCHY),
    fine_to_coarse=UPSTREAM_FINE_TO_COARSE,
)
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        _UPSTREAM,
        dataclasses.replace(
            _UPSTREAM,
            name="upstream_small",
            sizes={"train": 2_000, "validation": 500, "test": 500},
            description="Smoke-test variant of the upstream set (same renderer, same streams: "
            "a prefix of it).",
        ),
        TaskSpec(
            "novel",
            2,
            NOVEL_SHAPES,
            "natural",
            "Object classes never seen upstream (8 held-out shapes): does the representation transfer?",
        ),
        TaskSpec(
            "finegrained",
            3,
            FINEGRAINED_SHAPES,
            "natural",
            "Six new polygon variants (the upstream 'polygons' family): an expert trained on that coarse "
            "class should be the right pick.",
        ),
        TaskSpec(
            "finestars",
            9,
            FINESTARS_SHAPES,
            "natural",
            "Six new star variants (the upstream 'stars' family): the second task aligned with one family, "
            "where the 'stars' expert should be the right pick.",
        ),
        TaskSpec(
            "shift",
            4,
            NOVEL_SHAPES,
            "natural",
            "The novel classes, with a distribution-shifted test split: grey objects, high-contrast "
            "backgrounds in clashing colours, more distractors and stronger noise.",
        ),
        TaskSpec(
            "texture",
            5,
            sh.TEXTURES,
            "specialized",
            "Classify the background texture (10 patterns); the object is the nuisance (like land-cover or "
            "DTD textures: upstream treats this signal as noise).",
        ),
        TaskSpec(
            "count",
            6,
            tuple(str(k) for k in range(1, MAX_COUNT + 1)),
            "structured",
            f"How many objects (1 to {MAX_COUNT}), like CLEVR count; no distractor specks. Crops could cut "
            "an object off, so only flips are allowed.",
            augmentations=("flip",),
        ),
        TaskSpec(
            "position",
            7,
            POSITION_NAMES,
            "structured",
            "Which cell of a 3x3 grid holds the object's centre, like dSprites location. Flips and crops "
            "change the answer, so no augmentation.",
            augmentations=(),
        ),
        TaskSpec(
            "orientation",
            8,
            ORIENTATION_NAMES,
            "structured",
            "Which of 8 directions (45 degree bins) a pointing shape points to, like dSprites orientation. "
            "A flip mirrors the direction, so only crops are allowed.",
            augmentations=("crop",),
        ),
    ]
}
"""Every shapes task by name."""


@dataclass
class _Style:
    """Nuisance settings. The default is the clean look of the upstream set and the natural tasks (faint
    textures on half the backgrounds, no distractors, faint noise, objects turned at most 30 degrees and
    never mirrored); tasks whose label is not the object, and the ``shift`` test split, use their own."""

    shifted: bool = False
    texture_contrast: tuple[float, float] = (0.0, 0.25)
    plain_prob: float = 0.5
    max_specks: int = 0
    line_prob: float = 0.0
    noise: tuple[float, float] = (0.0, 0.02)
    max_turn: float = 30.0  # degrees either way from the canonical pose; 180 = any
    mirror: bool = False
    max_offset: float = 2.0  # pixels the object's centre may lie from the image centre, each way


_BUSY = dict(texture_contrast=(0.15, 0.6), plain_prob=0.1, max_specks=3, line_prob=0.35, noise=(0.0, 0.05),
             max_turn=180.0, mirror=True, max_offset=5.0)  # fmt: skip
"""The busy look (the standard look up to version 1.1.0): the texture, position and count tasks' backdrop."""


def _backdrop(rng: np.random.Generator, n: int, style: _Style, texture_ids: np.ndarray | None = None):
    """``(dark, canvas)``: which images have a dark background (bool [n]) and float32 [n, 32, 32, 3] holding
    two background colours mixed by a texture (``texture_ids``, -1 plain, drawn when None), a line across
    some images and up to ``style.max_specks`` small distractors in random colours."""
    dark = rng.random(n) < 0.5
    if texture_ids is None:
        texture_ids = rng.integers(0, len(sh.TEXTURES), n)
        texture_ids[rng.random(n) < style.plain_prob] = -1
    c1 = sh.random_colour(rng, n, np.where(dark, 0.05, 0.8), np.where(dark, 0.2, 0.97))
    if style.shifted:  # clashing: the second colour from the other half of the value range
        c2 = sh.random_colour(rng, n, np.where(dark, 0.75, 0.0), np.where(dark, 1.0, 0.25))
    else:
        c2 = sh.random_colour(rng, n, np.where(dark, 0.28, 0.55), np.where(dark, 0.45, 0.72))
    contrast = rng.uniform(*style.texture_contrast, n).astype(np.float32)
    params = sh.sample_texture_params(rng, n)
    mix = np.zeros((n, sh.IMAGE_SIZE, sh.IMAGE_SIZE), np.float32)
    for tid in np.unique(texture_ids[texture_ids >= 0]):
        idx = np.flatnonzero(texture_ids == tid)
        sub = sh.TextureParams(*(getattr(params, f)[idx] for f in ("period", "angle", "phase", "cx", "cy")))
        mix[idx] = sh.texture_pattern(sh.TEXTURES[int(tid)], sub, rng)
    mix *= contrast[:, None, None]
    canvas = c1[:, None, None, :] + (c2 - c1)[:, None, None, :] * mix[..., None]
    sh.draw_lines(
        canvas,
        rng.uniform(0, sh.IMAGE_SIZE, n),
        rng.uniform(0, sh.IMAGE_SIZE, n),
        rng.uniform(0, np.pi, n),
        rng.uniform(0.3, 0.8, n),
        sh.random_colour(rng, n, np.zeros(n), np.ones(n)),
        rng.random(n) < style.line_prob,
    )
    count = rng.integers(0, style.max_specks + 1, n)
    for k in range(style.max_specks):
        sh.draw_specks(
            canvas,
            rng.uniform(1.5, sh.IMAGE_SIZE - 1.5, n),
            rng.uniform(1.5, sh.IMAGE_SIZE - 1.5, n),
            rng.uniform(0.7, 1.8, n),
            rng.random(n) < 0.5,
            sh.random_colour(rng, n, np.zeros(n), np.ones(n)),
            k < count,
        )
    return dark, canvas


def _object_colours(rng: np.random.Generator, n: int, dark: np.ndarray, style: _Style):
    lo, hi = np.where(dark, 0.62, 0.0), np.where(dark, 1.0, 0.36)
    sat = (0.0, 0.12) if style.shifted else (0.3, 1.0)
    colour = sh.random_colour(rng, n, lo, hi, sat=sat)
    edge = sh.random_colour(rng, n, 1.0 - hi, 1.0 - lo)  # outline in the background's value range
    return colour, edge


def _finish(canvas: np.ndarray, rng: np.random.Generator, style: _Style) -> np.ndarray:
    sigma = rng.uniform(*style.noise, len(canvas)).astype(np.float32)
    noise = rng.standard_normal(canvas.shape[:3], dtype=np.float32)  # luminance noise, shared by channels
    canvas += (noise * sigma[:, None, None])[..., None]
    return np.clip(np.rint(canvas * 255.0), 0, 255).astype(np.uint8)


def _render_chunk(task: str, split: str, rng: np.random.Generator, n: int):
    """Render ``n`` images of ``task``: (images uint8 [n, 32, 32, 3], labels int32 [n]).

    Every task but ``count`` draws one main object over the backdrop, then noise.
    """
    spec = TASKS[task]
    labels = rng.permutation(np.arange(n) % len(spec.class_names)).astype(np.int32)  # balanced
    if task == "count":
        return _count_scene(rng, n, labels + 1), labels
    style = _Style()
    shape_names, radius = spec.class_names, (9, 13)  # the label is the shape, except in the last four tasks
    cx = cy = angle = texture_ids = None  # random (texture_ids: random or plain)
    if task == "shift" and split == "test":
        style = _Style(**dict(_BUSY, shifted=True, texture_contrast=(0.7, 1.0), plain_prob=0.0, max_specks=6,
                              noise=(0.06, 0.12), max_turn=30.0, mirror=False))  # fmt: skip
    elif task == "texture":
        style = _Style(**dict(_BUSY, texture_contrast=(0.75, 1.0), plain_prob=0.0, max_specks=2))
        shape_names, radius = UPSTREAM_FINE, (5, 8)
        texture_ids = labels
    elif task == "position":
        cell = 32.0 / 3.0
        cx = labels % 3 * cell + rng.uniform(1.5, cell - 1.5, n)
        cy = labels // 3 * cell + rng.uniform(1.5, cell - 1.5, n)
        style = _Style(**dict(_BUSY, max_specks=2))
        shape_names, radius = UPSTREAM_FINE, (3.5, 5.0)
    elif task == "orientation":
        angle = np.deg2rad(labels * 45.0 + rng.uniform(-12.0, 12.0, n))
        shape_names, radius = ORIENTATION_SHAPES, (8, 12)
    shape_ids = labels if shape_names == spec.class_names else rng.integers(0, len(shape_names), n)
    dark, canvas = _backdrop(rng, n, style, texture_ids)
    colour, edge = _object_colours(rng, n, dark, style)
    layer = sh.ObjectLayer(
        shape_ids=shape_ids,
        cx=rng.uniform(16.0 - style.max_offset, 16.0 + style.max_offset, n) if cx is None else cx,
        cy=rng.uniform(16.0 - style.max_offset, 16.0 + style.max_offset, n) if cy is None else cy,
        radius=rng.uniform(*radius, n),
        angle=np.deg2rad(rng.uniform(-style.max_turn, style.max_turn, n)) if angle is None else angle,
        mirror=(rng.random(n) < 0.5) if style.mirror else np.zeros(n, bool),
        colour=colour,
        present=np.ones(n, bool),
        style=rng.integers(0, 3, n),
        edge_colour=edge,
    )
    sh.draw_objects(canvas, layer, shape_names)
    return _finish(canvas, rng, style), labels


def _count_scene(rng: np.random.Generator, n: int, counts: np.ndarray) -> np.ndarray:
    """``counts[i]`` small objects per image, in distinct cells of a 4x4 grid (jittered), no specks."""
    style = _Style(**dict(_BUSY, max_specks=0))
    dark, canvas = _backdrop(rng, n, style)
    cells = np.argsort(rng.random((n, 16)), axis=1)  # a random order of the 16 cells per image
    colour, _ = _object_colours(rng, n, dark, style)
    same_colour = rng.random(n) < 0.5
    for slot in range(MAX_COUNT):
        c = cells[:, slot]
        own, _ = _object_colours(rng, n, dark, style)
        layer = sh.ObjectLayer(
            shape_ids=rng.integers(0, len(COUNT_SHAPES), n),
            cx=(c % 4) * 8.0 + 4.0 + rng.uniform(-0.8, 0.8, n),
            cy=(c // 4) * 8.0 + 4.0 + rng.uniform(-0.8, 0.8, n),
            radius=rng.uniform(2.8, 3.6, n),
            angle=rng.uniform(0.0, 2 * np.pi, n),
            mirror=rng.random(n) < 0.5,
            colour=np.where(same_colour[:, None], colour, own),
            present=slot < counts,
        )
        sh.draw_objects(canvas, layer, COUNT_SHAPES)
    return _finish(canvas, rng, style)


def generate(task: str, split: str, num_examples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Render one split of a shapes task.

    Returns ``{"image": uint8 [num_examples, 32, 32, 3], "label": int32 [num_examples]}`` plus
    ``"coarse_label"`` (int32) for the upstream tasks. Deterministic in (task, split, num_examples, seed).
    """
    if task not in TASKS:
        raise ValueError(f"generate: unknown task={task!r}; allowed: {tuple(TASKS)}")
    if split not in SPLIT_CODES:
        raise ValueError(f"generate: unknown split={split!r}; allowed: {tuple(SPLIT_CODES)}")
    spec = TASKS[task]

    def chunk(c: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, spec.code, SPLIT_CODES[split], c])
        return _render_chunk(task, split, rng, CHUNK)

    num_chunks = -(-num_examples // CHUNK)
    # numpy releases the GIL in the array maths; each chunk has its own stream
    with ThreadPoolExecutor(max(1, min(num_chunks, os.cpu_count() or 1, 8))) as pool:
        parts = list(pool.map(chunk, range(num_chunks)))
    out = {
        "image": np.concatenate([p[0] for p in parts] or [np.zeros((0, 32, 32, 3), np.uint8)])[:num_examples],
        "label": np.concatenate([p[1] for p in parts] or [np.zeros((0,), np.int32)])[:num_examples],
    }
    if spec.fine_to_coarse is not None:
        out["coarse_label"] = np.asarray(spec.fine_to_coarse, np.int32)[out["label"]]
    return out

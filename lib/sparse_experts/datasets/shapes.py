"""Procedural 32x32 RGB scenes: a library of shapes, background textures and a vectorised renderer.

Plain numpy, deterministic given a ``numpy.random.Generator``; ``tasks.py`` decides what to draw.

Shapes are signed distance functions (SDFs) in an object-centred frame ``(u, v)`` where the object fits in
the unit disc: each function maps coordinate arrays of any shape to a distance-like array that is negative
inside the shape, zero on its outline and positive outside, in units of the object radius. Union is
``min``, intersection ``max``, cut-out ``max(a, -b)`` and an outline of thickness ``2t`` is ``|d| - t``. The
renderer turns a distance into anti-aliased coverage with ``clip(0.5 - d * radius_in_pixels, 0, 1)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32
"""Height and width of every rendered image, in pixels."""

Array = np.ndarray
SDF = Callable[[Array, Array], Array]

# SDF building blocks (u, v: float32 arrays of equal shape, object radius 1)


def _circle(u: Array, v: Array, r: float, cx: float = 0.0, cy: float = 0.0) -> Array:
    return np.hypot(u - cx, v - cy) - r


def _box(u: Array, v: Array, hw: float, hh: float, cx: float = 0.0, cy: float = 0.0) -> Array:
    """Axis-aligned rectangle of half-width ``hw`` and half-height ``hh`` (Chebyshev distance outside)."""
    return np.maximum(np.abs(u - cx) - hw, np.abs(v - cy) - hh)


def _convex(u: Array, v: Array, verts: Sequence[tuple[float, float]]) -> Array:
    """Convex polygon: the largest signed distance to the line through each edge."""
    pts = np.asarray(verts, dtype=np.float64)
    x, y = pts[:, 0], pts[:, 1]
    area2 = float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))
    if area2 < 0:  # make the vertex order counter-clockwise so that the edge normals point outwards
        pts = pts[::-1]
    d = None
    for (x0, y0), (x1, y1) in zip(pts, np.roll(pts, -1, axis=0), strict=True):
        length = float(np.hypot(x1 - x0, y1 - y0))
        nx, ny = (y1 - y0) / length, -(x1 - x0) / length
        e = (u - x0) * nx + (v - y0) * ny
        d = e if d is None else np.maximum(d, e)
    return d


def _segment(u: Array, v: Array, a: tuple[float, float], b: tuple[float, float], w: float) -> Array:
    """Capsule: the points within ``w`` of the segment from ``a`` to ``b``."""
    bax, bay = b[0] - a[0], b[1] - a[1]
    pax, pay = u - a[0], v - a[1]
    h = np.clip((pax * bax + pay * bay) / (bax * bax + bay * bay), 0.0, 1.0)
    return np.hypot(pax - bax * h, pay - bay * h) - w


def _polyline(u: Array, v: Array, pts: Sequence[tuple[float, float]], w: float) -> Array:
    return _union(*[_segment(u, v, p, q, w) for p, q in zip(pts[:-1], pts[1:], strict=True)])


def _strokes(u: Array, v: Array, segs: Sequence[tuple[tuple[float, float], tuple[float, float]]], w: float):
    return _union(*[_segment(u, v, a, b, w) for a, b in segs])


def _union(*ds: Array) -> Array:
    return functools.reduce(np.minimum, ds)


def _star(u: Array, v: Array, n: int, r_out: float, r_in: float) -> Array:
    """An ``n``-pointed star (a regular polygon when ``r_in = r_out * cos(pi / n)``), one tip on +u.

    The angle is folded into the wedge between a tip and the next inner corner, where the outline is a
    single straight edge.
    """
    k = 2.0 * np.pi / n
    phi = np.arctan2(v, u)
    f = np.abs(np.mod(phi + k / 2, k) - k / 2)
    r = np.hypot(u, v)
    px, py = r * np.cos(f), r * np.sin(f)
    bx, by = r_in * np.cos(k / 2), r_in * np.sin(k / 2)
    nx, ny = by, r_out - bx
    norm = np.hypot(nx, ny)
    return ((px - r_out) * nx + py * ny) / norm


def _ngon(u: Array, v: Array, n: int, r: float) -> Array:
    return _star(u, v, n, r, r * np.cos(np.pi / n))


def _arc(u: Array, v: Array, radius: float, half_angle: float, w: float) -> Array:
    """A stroke of width ``2w`` along a circle of ``radius``, centred on the -u direction, round caps."""
    phi = np.arctan2(v, -u)  # 0 on the -u axis
    r = np.hypot(u, v)
    ex, ey = -radius * np.cos(half_angle), radius * np.sin(half_angle)
    cap = np.minimum(np.hypot(u - ex, v - ey), np.hypot(u - ex, v + ey)) - w
    return np.where(np.abs(phi) <= half_angle, np.abs(r - radius) - w, cap)


def _wedge(u: Array, v: Array, half_angle: float) -> Array:
    """Distance-like field of the infinite wedge ``|angle| <= half_angle`` around +u (half_angle < pi/2)."""
    s, c = np.sin(half_angle), np.cos(half_angle)
    return np.maximum(v * c - u * s, -v * c - u * s)


def _dots(u: Array, v: Array, centres: Sequence[tuple[float, float]], r: float) -> Array:
    return _union(*[_circle(u, v, r, cx, cy) for cx, cy in centres])


def _ring_positions(n: int, radius: float, start_deg: float = 90.0) -> list[tuple[float, float]]:
    angles = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    return [(float(radius * np.cos(a)), float(radius * np.sin(a))) for a in angles]


def _centred(verts: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    pts = np.asarray(verts, dtype=np.float64)
    pts = pts - pts.mean(axis=0)
    return [(float(x), float(y)) for x, y in pts]


# The shape library. Canonical pose: pointing shapes point to +u; everything fits in the unit disc.

_ARROW_HEAD = [(0.95, 0.0), (0.2, 0.5), (0.2, -0.5)]
_F_STROKES = [((-0.55, -0.85), (-0.55, 0.85)), ((-0.55, 0.85), (0.6, 0.85)), ((-0.55, 0.0), (0.4, 0.0))]

SHAPES: dict[str, SDF] = {
    # polygons (filled, convex)
    "triangle": lambda u, v: _ngon(u, v, 3, 1.0),
    "square": lambda u, v: _ngon(u, v, 4, 0.95),
    "pentagon": lambda u, v: _ngon(u, v, 5, 0.95),
    "hexagon": lambda u, v: _ngon(u, v, 6, 0.95),
    "rectangle": lambda u, v: _box(u, v, 0.95, 0.45),
    "rhombus": lambda u, v: _convex(u, v, [(1.0, 0.0), (0.0, 0.55), (-1.0, 0.0), (0.0, -0.55)]),
    # stars
    "star3": lambda u, v: _star(u, v, 3, 1.0, 0.3),
    "star4": lambda u, v: _star(u, v, 4, 1.0, 0.42),
    "star5": lambda u, v: _star(u, v, 5, 1.0, 0.45),
    "star6": lambda u, v: _star(u, v, 6, 1.0, 0.55),
    "star8": lambda u, v: _star(u, v, 8, 1.0, 0.62),
    "sparkle": lambda u, v: _star(u, v, 4, 1.0, 0.18),
    # rings (hollow outlines)
    "circle_ring": lambda u, v: np.abs(_circle(u, v, 0.8)) - 0.15,
    "square_frame": lambda u, v: np.abs(_box(u, v, 0.72, 0.72)) - 0.14,
    "triangle_frame": lambda u, v: np.abs(_ngon(u, v, 3, 0.9)) - 0.15,
    "double_ring": lambda u, v: np.minimum(
        np.abs(_circle(u, v, 0.85)) - 0.11, np.abs(_circle(u, v, 0.4)) - 0.11
    ),
    "donut": lambda u, v: np.abs(_circle(u, v, 0.62)) - 0.33,
    "hexagon_frame": lambda u, v: np.abs(_ngon(u, v, 6, 0.85)) - 0.14,
    # crosses
    "plus": lambda u, v: np.minimum(_box(u, v, 0.95, 0.18), _box(u, v, 0.18, 0.95)),
    "fat_plus": lambda u, v: np.minimum(_box(u, v, 0.9, 0.36), _box(u, v, 0.36, 0.9)),
    "tee": lambda u, v: np.minimum(_box(u, v, 0.9, 0.2, cy=0.7), _box(u, v, 0.2, 0.85, cy=-0.1)),
    "ell": lambda u, v: np.minimum(_box(u, v, 0.2, 0.9, cx=-0.5), _box(u, v, 0.7, 0.2, cx=0.0, cy=-0.7)),
    "tripod": lambda u, v: _strokes(u, v, [((0, 0), p) for p in _ring_positions(3, 0.95)], 0.17),
    "asterisk": lambda u, v: _strokes(
        u, v, [(p, (-p[0], -p[1])) for p in _ring_positions(3, 0.95, start_deg=0.0)], 0.13
    ),
    # arcs (round, open or cut)
    "crescent": lambda u, v: np.maximum(_circle(u, v, 0.95), -_circle(u, v, 0.8, cx=0.45)),
    "semicircle": lambda u, v: np.maximum(_circle(u, v, 1.0, cy=-0.4), -(v + 0.4)),
    "c_arc": lambda u, v: _arc(u, v, 0.75, np.deg2rad(130.0), 0.16),
    "half_arc": lambda u, v: _arc(u, v, 0.8, np.deg2rad(90.0), 0.16),
    "pie": lambda u, v: np.maximum(_circle(u + 0.45, v, 1.3), _wedge(u + 0.45, v, np.pi / 4)),
    "pacman": lambda u, v: np.maximum(_circle(u, v, 0.95), -_wedge(u, v, np.deg2rad(35.0))),
    # bars (straight strokes)
    "bar": lambda u, v: _segment(u, v, (-0.95, 0.0), (0.95, 0.0), 0.17),
    "double_bar": lambda u, v: _strokes(u, v, [((-0.9, y), (0.9, y)) for y in (-0.3, 0.3)], 0.14),
    "triple_bar": lambda u, v: _strokes(u, v, [((-0.85, y), (0.85, y)) for y in (-0.5, 0.0, 0.5)], 0.12),
    "dashed_bar": lambda u, v: _strokes(u, v, [((-0.95, 0.0), (-0.3, 0.0)), ((0.3, 0.0), (0.95, 0.0))], 0.17),
    "chevron": lambda u, v: _polyline(u, v, [(-0.6, 0.75), (0.5, 0.0), (-0.6, -0.75)], 0.16),
    "zigzag": lambda u, v: _polyline(u, v, [(-0.9, -0.6), (-0.3, 0.6), (0.3, -0.6), (0.9, 0.6)], 0.13),
    # blobs (smooth, filled)
    "disc": lambda u, v: _circle(u, v, 0.85),
    "ellipse": lambda u, v: (np.hypot(u / 0.95, v / 0.5) - 1.0) * 0.5,
    "flower4": lambda u, v: np.hypot(u, v) - (0.7 + 0.25 * np.cos(4 * np.arctan2(v, u))),
    "flower6": lambda u, v: np.hypot(u, v) - (0.72 + 0.22 * np.cos(6 * np.arctan2(v, u))),
    "peanut": lambda u, v: np.minimum(_circle(u, v, 0.55, cx=-0.42), _circle(u, v, 0.55, cx=0.42)),
    "trefoil": lambda u, v: _dots(u, v, _ring_positions(3, 0.45), 0.47),
    # glyphs (letters drawn with strokes)
    "glyph_h": lambda u, v: _strokes(
        u, v, [((-0.6, -0.85), (-0.6, 0.85)), ((0.6, -0.85), (0.6, 0.85)), ((-0.6, 0.0), (0.6, 0.0))], 0.13
    ),
    "glyph_e": lambda u, v: _strokes(u, v, _F_STROKES + [((-0.55, -0.85), (0.6, -0.85))], 0.13),
    "glyph_f": lambda u, v: _strokes(u, v, _F_STROKES, 0.13),
    "glyph_a": lambda u, v: _union(
        _polyline(u, v, [(-0.7, -0.85), (0.0, 0.85), (0.7, -0.85)], 0.13),
        _segment(u, v, (-0.38, -0.15), (0.38, -0.15), 0.13),
    ),
    "glyph_k": lambda u, v: _strokes(
        u, v, [((-0.55, -0.85), (-0.55, 0.85)), ((-0.5, 0.0), (0.6, 0.85)), ((-0.5, 0.0), (0.6, -0.85))], 0.13
    ),
    "glyph_m": lambda u, v: _polyline(
        u, v, [(-0.7, -0.85), (-0.7, 0.85), (0.0, 0.0), (0.7, 0.85), (0.7, -0.85)], 0.13
    ),
    # arrows (pointing to +u)
    "arrow": lambda u, v: np.minimum(
        _segment(u, v, (-0.9, 0.0), (0.3, 0.0), 0.12), _convex(u, v, _ARROW_HEAD)
    ),
    "block_arrow": lambda u, v: np.minimum(
        _box(u, v, 0.5, 0.25, cx=-0.4), _convex(u, v, [(0.95, 0.0), (0.1, 0.7), (0.1, -0.7)])
    ),
    "double_arrow": lambda u, v: _union(
        _segment(u, v, (-0.5, 0.0), (0.5, 0.0), 0.11),
        _convex(u, v, [(0.95, 0.0), (0.35, 0.45), (0.35, -0.45)]),
        _convex(u, v, [(-0.95, 0.0), (-0.35, 0.45), (-0.35, -0.45)]),
    ),
    "dart": lambda u, v: np.minimum(
        _convex(u, v, [(0.95, 0.0), (-0.8, 0.7), (-0.35, 0.0)]),
        _convex(u, v, [(0.95, 0.0), (-0.35, 0.0), (-0.8, -0.7)]),
    ),
    "double_chevron": lambda u, v: np.minimum(
        _polyline(u, v, [(-0.85, 0.6), (-0.25, 0.0), (-0.85, -0.6)], 0.14),
        _polyline(u, v, [(0.05, 0.6), (0.65, 0.0), (0.05, -0.6)], 0.14),
    ),
    "feathered_arrow": lambda u, v: _union(
        _segment(u, v, (-0.9, 0.0), (0.3, 0.0), 0.1),
        _convex(u, v, _ARROW_HEAD),
        _polyline(u, v, [(-0.95, 0.4), (-0.65, 0.0), (-0.95, -0.4)], 0.1),
    ),
    # clusters (groups of dots)
    "two_dots": lambda u, v: _dots(u, v, [(-0.5, 0.0), (0.5, 0.0)], 0.32),
    "three_line": lambda u, v: _dots(u, v, [(-0.65, 0.0), (0.0, 0.0), (0.65, 0.0)], 0.26),
    "three_triangle": lambda u, v: _dots(u, v, _ring_positions(3, 0.55), 0.3),
    "four_square": lambda u, v: _dots(
        u, v, [(-0.45, -0.45), (-0.45, 0.45), (0.45, -0.45), (0.45, 0.45)], 0.26
    ),
    "five_dice": lambda u, v: _dots(
        u, v, [(-0.5, -0.5), (-0.5, 0.5), (0.5, -0.5), (0.5, 0.5), (0.0, 0.0)], 0.22
    ),
    "dot_ring": lambda u, v: _dots(u, v, _ring_positions(8, 0.75), 0.17),
    # fine-grained polygon variants (never in the upstream set)
    "right_triangle": lambda u, v: _convex(u, v, _centred([(-0.75, -0.7), (0.95, -0.7), (-0.75, 0.95)])),
    "parallelogram": lambda u, v: _convex(u, v, [(-0.95, -0.45), (0.45, -0.45), (0.95, 0.45), (-0.45, 0.45)]),
    "kite": lambda u, v: _convex(u, v, _centred([(0.0, 1.0), (-0.6, 0.35), (0.0, -0.95), (0.6, 0.35)])),
    "trapezoid": lambda u, v: _convex(u, v, [(-0.95, -0.5), (0.95, -0.5), (0.45, 0.5), (-0.45, 0.5)]),
    "heptagon": lambda u, v: _ngon(u, v, 7, 0.95),
    "octagon": lambda u, v: _ngon(u, v, 8, 0.95),
    # new members of the "stars" family (the shapes_finestars task)
    "star7": lambda u, v: _star(u, v, 7, 1.0, 0.5),
    "star9": lambda u, v: _star(u, v, 9, 1.0, 0.62),
    "star12": lambda u, v: _star(u, v, 12, 1.0, 0.72),
    "star3_fat": lambda u, v: _star(u, v, 3, 1.0, 0.42),
    "star5_thin": lambda u, v: _star(u, v, 5, 1.0, 0.28),
    "star6_thin": lambda u, v: _star(u, v, 6, 1.0, 0.32),
    # novel shapes (never in the upstream set)
    "heart": lambda u, v: _union(
        (np.abs(u) + np.abs(v + 0.2) - 0.75) / np.sqrt(2.0),
        _circle(u, v, 0.53, cx=-0.375, cy=0.175),
        _circle(u, v, 0.53, cx=0.375, cy=0.175),
    ),
    "gear": lambda u, v: np.maximum(
        np.hypot(u, v) - (0.75 + 0.2 * np.clip(3.0 * np.cos(8 * np.arctan2(v, u)), -1.0, 1.0)),
        -_circle(u, v, 0.25),
    ),
    "keyhole": lambda u, v: np.minimum(
        _circle(u, v, 0.45, cy=0.4), _convex(u, v, [(-0.2, 0.3), (0.2, 0.3), (0.45, -0.9), (-0.45, -0.9)])
    ),
    "bowtie": lambda u, v: np.minimum(
        _convex(u, v, [(-0.95, 0.7), (-0.95, -0.7), (0.12, 0.0)]),
        _convex(u, v, [(0.95, 0.7), (0.95, -0.7), (-0.12, 0.0)]),
    ),
    "house": lambda u, v: np.minimum(
        _box(u, v, 0.62, 0.5, cy=-0.4), _convex(u, v, [(-0.85, 0.05), (0.85, 0.05), (0.0, 0.9)])
    ),
    "lens": lambda u, v: np.maximum(_circle(u, v, 1.0, cx=-0.55), _circle(u, v, 1.0, cx=0.55)),
    "teardrop": lambda u, v: np.minimum(
        _circle(u, v, 0.55, cx=-0.35), _convex(u, v, [(0.95, 0.0), (-0.3, 0.55), (-0.3, -0.55)])
    ),
    "crossed_ring": lambda u, v: _union(
        np.abs(_circle(u, v, 0.8)) - 0.12, _box(u, v, 0.8, 0.12), _box(u, v, 0.12, 0.8)
    ),
}
"""Every shape the renderer can draw, by name: an SDF in the object frame (radius 1)."""

# Textures: a pattern in [0, 1] (mixing two background colours) from pixel coordinates and parameters

TEXTURES = tuple("stripes checks dots grid waves rings zigzag speckle blotches gradient".split())
"""The background patterns, in label order for the texture task."""


@dataclass(frozen=True)
class TextureParams:
    """Per-image parameters of a texture (arrays of length n): period in pixels, angle, phase, centre."""

    period: Array
    angle: Array
    phase: Array
    cx: Array
    cy: Array


def sample_texture_params(rng: np.random.Generator, n: int) -> TextureParams:
    return TextureParams(
        period=rng.uniform(4.0, 9.0, n).astype(np.float32),
        angle=rng.uniform(0.0, np.pi, n).astype(np.float32),
        phase=rng.uniform(0.0, 1.0, n).astype(np.float32),
        cx=rng.uniform(0.0, IMAGE_SIZE, n).astype(np.float32),
        cy=rng.uniform(0.0, IMAGE_SIZE, n).astype(np.float32),
    )


def _grid_xy() -> tuple[Array, Array]:
    c = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5
    return c[None, None, :], c[None, :, None]  # x: [1, 1, width], y: [1, height, 1]


def _soft_step(x: Array, sharpness: float = 4.0) -> Array:
    """A smooth square wave: ~0/1 away from zero crossings of ``x`` (x is a sine value)."""
    return 0.5 + 0.5 * np.tanh(sharpness * x)


def texture_pattern(name: str, p: TextureParams, rng: np.random.Generator) -> Array:
    """The pattern ``name`` for n images: float32 [n, height, width] in [0, 1]."""
    n = len(p.period)
    x, y = _grid_xy()
    col = lambda a: a[:, None, None]  # noqa: E731
    ca, sa = np.cos(col(p.angle)), np.sin(col(p.angle))
    su = ((x - col(p.cx)) * ca + (y - col(p.cy)) * sa) / col(p.period)  # in periods
    sv = (-(x - col(p.cx)) * sa + (y - col(p.cy)) * ca) / col(p.period)
    two_pi = np.float32(2.0 * np.pi)
    if name == "stripes":
        t = _soft_step(np.sin(two_pi * (su + col(p.phase))))
    elif name == "checks":
        t = _soft_step(np.sin(two_pi * su) * np.sin(two_pi * sv) * 2.0)
    elif name == "dots":
        fu, fv = su - np.round(su), sv - np.round(sv)
        t = np.clip((0.3 - np.hypot(fu, fv)) * col(p.period) + 0.5, 0.0, 1.0)
    elif name == "grid":
        fu, fv = np.abs(su - np.round(su)), np.abs(sv - np.round(sv))
        t = np.clip((1.0 - np.minimum(fu, fv) * col(p.period)), 0.0, 1.0)
    elif name == "waves":
        t = _soft_step(np.sin(two_pi * (su + 0.35 * np.sin(two_pi * sv * 0.8) + col(p.phase))))
    elif name == "rings":
        r = np.hypot(x - col(p.cx), y - col(p.cy)) / col(p.period)
        t = _soft_step(np.sin(two_pi * (r + col(p.phase))))
    elif name == "zigzag":
        tri = np.abs(sv - np.floor(sv) - 0.5)  # triangle wave in [0, 0.5]
        t = _soft_step(np.sin(two_pi * (su + tri + col(p.phase))))
    elif name == "speckle":
        t = (rng.random((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32) < 0.5).astype(np.float32)
    elif name == "blotches":
        t = _smooth_noise(rng, n, cells=5)
        t = _soft_step((t - 0.5) * 2.0, sharpness=3.0)
    elif name == "gradient":
        t = np.clip(0.5 + su * col(p.period) / IMAGE_SIZE, 0.0, 1.0)
    else:
        raise ValueError(f"texture_pattern: unknown texture name={name!r}; allowed: {TEXTURES}")
    return np.broadcast_to(t, (n, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> Array:
    """Value noise: a random [cells+1, cells+1] lattice, bilinearly upsampled to [n, height, width]."""
    lattice = rng.random((n, cells + 1, cells + 1), dtype=np.float32)
    pos = (np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5) / IMAGE_SIZE * cells
    i0 = np.minimum(pos.astype(np.int64), cells - 1)
    f = pos - i0
    rows = lattice[:, i0, :] * (1 - f)[None, :, None] + lattice[:, i0 + 1, :] * f[None, :, None]
    return rows[:, :, i0] * (1 - f)[None, None, :] + rows[:, :, i0 + 1] * f[None, None, :]


# Colour and compositing


def random_colour(
    rng: np.random.Generator, n: int, value_lo: Array, value_hi: Array, sat=(0.25, 1.0)
) -> Array:
    """Random colours (float32 [n, 3]): uniform hue, saturation in ``sat``, HSV value in [value_lo, value_hi]
    per image."""
    h = rng.random(n)
    s = rng.uniform(sat[0], sat[1], n)
    v = value_lo + (value_hi - value_lo) * rng.random(n)
    # HSV -> RGB: the hue's sector (of 6) picks each channel among v, t, p, q
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    vtpq = np.stack([v, v * (1 - (1 - f) * s), v * (1 - s), v * (1 - f * s)], -1)
    sector_rgb = np.array([[0, 1, 2], [3, 0, 2], [2, 0, 1], [2, 3, 0], [1, 2, 0], [0, 2, 3]])
    return np.take_along_axis(vtpq, sector_rgb[i], axis=1).astype(np.float32)


@dataclass
class ObjectLayer:
    """One object per image (arrays of length n): which shape, where, how big, how turned, which colour.

    ``present`` masks images that have no object in this layer. Centres and radius are in pixels,
    ``angle`` in radians counter-clockwise as seen on screen, ``mirror`` reflects the shape across its u
    axis before rotating, ``style`` 0 solid, 1 shaded, 2 outlined in ``edge_colour``.
    """

    shape_ids: Array  # int [n], index into the ``shape_names`` passed to ``draw_objects``
    cx: Array
    cy: Array
    radius: Array
    angle: Array
    mirror: Array  # bool
    colour: Array  # float32 [n, 3]
    present: Array  # bool
    style: Array | None = None
    edge_colour: Array | None = None


def draw_objects(canvas: Array, layer: ObjectLayer, shape_names: Sequence[str]) -> None:
    """Paint ``layer`` onto ``canvas`` (float32 [n, height, width, 3] in [0, 1]) in place."""
    x, y = _grid_xy()
    for sid in np.unique(layer.shape_ids[layer.present]):
        idx = np.flatnonzero(layer.present & (layer.shape_ids == sid))
        col = lambda a, idx=idx: a[idx][:, None, None].astype(np.float32)  # noqa: E731
        dx = x - col(layer.cx)
        dy = col(layer.cy) - y  # screen "up" is positive
        ca, sa = np.cos(col(layer.angle)), np.sin(col(layer.angle))
        r = col(layer.radius)
        u = (dx * ca + dy * sa) / r
        v = (-dx * sa + dy * ca) / r * np.where(col(layer.mirror) > 0, -1.0, 1.0).astype(np.float32)
        d = SHAPES[shape_names[int(sid)]](u, v).astype(np.float32)
        alpha = np.clip(0.5 - d * r, 0.0, 1.0)[..., None]
        colour = layer.colour[idx][:, None, None, :]
        if layer.style is not None:
            style = layer.style[idx][:, None, None, None]
            shaded = (style == 1).astype(np.float32)
            outlined = (style == 2).astype(np.float32)
            shade = 1.0 + shaded * (0.175 * np.clip(u + v, -1.0, 1.0))[..., None]
            edge = outlined * np.clip(0.5 - (np.abs(d) - 0.09) * r, 0.0, 1.0)[..., None]
            colour = (
                np.clip(colour * shade, 0.0, 1.0) * (1.0 - edge)
                + layer.edge_colour[idx][:, None, None, :] * edge
            )
        canvas[idx] = canvas[idx] * (1.0 - alpha) + colour * alpha


def draw_specks(
    canvas: Array, cx: Array, cy: Array, radius: Array, square: Array, colour: Array, present: Array
) -> None:
    """Small distractors (discs or squares, radius under 2.5 px), one per image where ``present``.

    Only a 6x6 window around each speck is computed.
    """
    idx = np.flatnonzero(present)
    if idx.size == 0:
        return
    win = 6
    ix0 = np.clip(np.floor(cx[idx]).astype(np.int64) - 2, 0, IMAGE_SIZE - win)
    iy0 = np.clip(np.floor(cy[idx]).astype(np.int64) - 2, 0, IMAGE_SIZE - win)
    cols = ix0[:, None] + np.arange(win)  # [m, win]
    rows = iy0[:, None] + np.arange(win)
    dx = np.abs(cols + 0.5 - cx[idx, None]).astype(np.float32)[:, None, :]
    dy = np.abs(rows + 0.5 - cy[idx, None]).astype(np.float32)[:, :, None]
    d = np.where(square[idx, None, None], np.maximum(dx, dy), np.hypot(dx, dy)) - radius[idx, None, None]
    alpha = np.clip(0.5 - d, 0.0, 1.0).astype(np.float32)[..., None]
    sel = (idx[:, None, None], rows[:, :, None], cols[:, None, :])
    canvas[sel] = canvas[sel] * (1.0 - alpha) + alpha * colour[idx, None, None, :]


def draw_lines(
    canvas: Array, x0: Array, y0: Array, angle: Array, width: Array, colour: Array, present: Array
):
    """A straight line across the whole image through (x0, y0), one per image where ``present``."""
    idx = np.flatnonzero(present)
    x, y = _grid_xy()
    c = lambda a: a[idx][:, None, None].astype(np.float32)  # noqa: E731
    d = np.abs((x - c(x0)) * np.sin(c(angle)) - (y - c(y0)) * np.cos(c(angle))) - c(width)
    alpha = np.clip(0.5 - d, 0.0, 1.0)[..., None]
    canvas[idx] = canvas[idx] * (1.0 - alpha) + alpha * colour[idx][:, None, None, :]

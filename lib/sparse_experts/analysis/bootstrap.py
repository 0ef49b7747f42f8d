"""Paired bootstrap over test images and seeds: the noise of an accuracy, and of a gap between two models.

Two models evaluated on the same test images make correlated errors (an easy image is easy for both), so
their accuracy gap is known far better than each accuracy alone. Each bootstrap sample redraws the N test
images with replacement (the same draw for every model: paired) and, for each model, its K seeds with
replacement, so the spread over seeds counts as well. With one seed a model's seed noise is not seen.

Seed pairs: where seed k gives both models the same training batches (the workbook's batch t is a function
of (seed, t) alone, whatever the model) and the same initial random stream, the two runs of seed k share
luck: a seed whose batches suit one model tends to suit the other. ``paired_seeds=True`` then redraws the
same seed indices for both models (common random numbers, as the images are), so the gap's noise is the
spread of the per-seed gaps rather than of each model's accuracy. It needs the same K seeds for both, in the
same order; it estimates the same mean gap, only with the pairing the experiment has.

Shape letters: K seeds of a model, N test images, S bootstrap samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from sparse_experts.routing import check_int


@dataclass(frozen=True)
class Paired:
    """Mean test accuracy of models a and b (over seeds and images), the gap a - b, and the bootstrap
    standard error of each (fractions of 1). ``samples`` bootstrap samples; ``seeds``: K of each model."""

    mean_a: float
    mean_b: float
    se_a: float
    se_b: float
    gap: float
    gap_se: float
    samples: int
    seeds: tuple[int, int]
    paired_seeds: bool = False

    @property
    def resolved(self) -> bool:
        """Whether the gap exceeds two standard errors."""
        return abs(self.gap) > 2 * self.gap_se

    def __str__(self) -> str:
        size = "more than" if self.resolved else "within"
        (ka, kb), pa, pb = self.seeds, 100 * self.mean_a, 100 * self.mean_b
        over = "images and seed pairs" if self.paired_seeds else "images and seeds"
        return (
            f"a {pa:.2f}% ({ka} seeds) - b {pb:.2f}% ({kb} seeds) = {100 * self.gap:+.2f} points; standard "
            f"errors (paired bootstrap over {over}, {self.samples} samples): a "
            f"{100 * self.se_a:.2f}, b {100 * self.se_b:.2f}, gap {100 * self.gap_se:.2f} points: the gap is "
            f"{size} two standard errors ({200 * self.gap_se:.2f})"
        )

    def to_dict(self) -> dict[str, float | int | bool | list[int]]:
        return {"mean_a": self.mean_a, "mean_b": self.mean_b, "se_a": self.se_a, "se_b": self.se_b,
                "gap": self.gap, "gap_se": self.gap_se, "gap_two_se": 2 * self.gap_se,
                "resolved": self.resolved, "samples": self.samples, "seeds": list(self.seeds),
                "paired_seeds": self.paired_seeds}  # fmt: skip


def _as_correct(name: str, value) -> np.ndarray:
    correct = np.asarray(value)
    if correct.ndim == 1:
        correct = correct[None]
    if correct.ndim != 2 or correct.shape[0] < 1 or correct.shape[1] < 1:
        raise ValueError(f"{name} must be a [seeds, images] (or [images]) array of 0/1, got {correct.shape}")
    if not np.isin(correct, (0, 1)).all():
        raise ValueError(f"{name} must hold 0/1 (or bool) per image: whether the model was right")
    return correct.astype(np.float32)


def paired(correct_a, correct_b, *, samples: int = 2000, seed: int = 0, paired_seeds: bool = False) -> Paired:
    """The paired bootstrap of models a and b: ``correct_a [Ka, N]``, ``correct_b [Kb, N]`` (0/1 or bool:
    was seed k right on image n; a 1-D array is one seed), the same N images in the same order. With
    ``paired_seeds`` row k of both is the same training seed, and each sample redraws one set of seed
    indices for both (module docstring); otherwise each model's seeds are redrawn on their own."""
    a, b = _as_correct("correct_a", correct_a), _as_correct("correct_b", correct_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"correct_a has {a.shape[1]} images and correct_b {b.shape[1]}: a paired bootstrap needs the "
            "same test images for both"
        )
    if paired_seeds and len(a) != len(b):
        raise ValueError(
            f"paired_seeds=True needs the same seeds for both models; correct_a has {len(a)} seeds and "
            f"correct_b {len(b)}: give rows of the same seeds in the same order, or paired_seeds=False"
        )
    check_int("samples", samples, 2)
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    acc = {"a": [], "b": []}
    for start in range(0, samples, 250):  # image weights [chunk, N] in float32: bounded memory
        chunk = min(250, samples - start)
        draws = rng.integers(0, n, (chunk, n))
        weights = np.stack([np.bincount(row, minlength=n) for row in draws]).astype(np.float32) / n
        shared = rng.integers(0, len(a), (chunk, len(a))) if paired_seeds else None
        for key, c in (("a", a), ("b", b)):
            per_seed = c @ weights.T  # [K, chunk]: each seed's accuracy on each redrawn set
            pick = shared if paired_seeds else rng.integers(0, len(c), (chunk, len(c)))  # seeds redrawn
            acc[key].append(np.take_along_axis(per_seed.T, pick, axis=1).mean(axis=1))
    acc_a, acc_b = np.concatenate(acc["a"]), np.concatenate(acc["b"])
    return Paired(
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        se_a=float(acc_a.std(ddof=1)),
        se_b=float(acc_b.std(ddof=1)),
        gap=float(a.mean() - b.mean()),
        gap_se=float((acc_a - acc_b).std(ddof=1)),
        samples=samples,
        seeds=(len(a), len(b)),
        paired_seeds=paired_seeds,
    )


def gain_kept(
    correct_cheap, correct_full, correct_base, *, samples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """The fraction of the full method's gain over a baseline that a cheap method keeps, with its bootstrap
    standard error: ``(acc(cheap) - acc(base)) / (acc(full) - acc(base))``, each a ``[K, N]`` correct matrix
    whose row k is training seed k of every method (paired seeds) on the same N images. Each sample redraws
    the images and one set of seed indices for all three. Returns ``{"fraction", "se", "gain_full",
    "gain_cheap"}`` (gains as fractions of 1); the fraction is NaN when the full gain is 0, and samples whose
    full gain is 0 are left out of the error."""
    cheap, full, base = (_as_correct(n, v) for n, v in (("correct_cheap", correct_cheap),
                                                          ("correct_full", correct_full),
                                                          ("correct_base", correct_base)))  # fmt: skip
    if not (cheap.shape == full.shape == base.shape):
        raise ValueError(
            f"correct_cheap {cheap.shape}, correct_full {full.shape} and correct_base {base.shape} must be "
            "[seeds, images] of the same seeds and images"
        )
    check_int("samples", samples, 2)
    rng = np.random.default_rng(seed)
    K, n = base.shape
    ratios = []
    for start in range(0, samples, 250):
        chunk = min(250, samples - start)
        weights = np.stack([np.bincount(row, minlength=n) for row in rng.integers(0, n, (chunk, n))])
        weights = weights.astype(np.float32) / n
        pick = rng.integers(0, K, (chunk, K))
        acc = {name: np.take_along_axis((c @ weights.T).T, pick, axis=1).mean(axis=1)
               for name, c in (("cheap", cheap), ("full", full), ("base", base))}  # fmt: skip
        gain = acc["full"] - acc["base"]
        ok = gain != 0
        ratios.append((acc["cheap"][ok] - acc["base"][ok]) / gain[ok])
    ratios = np.concatenate(ratios)
    gain_full, gain_cheap = float(full.mean() - base.mean()), float(cheap.mean() - base.mean())
    fraction = gain_cheap / gain_full if gain_full else float("nan")
    se = float(ratios.std(ddof=1)) if len(ratios) > 1 else float("nan")
    return {"fraction": fraction, "se": se, "gain_full": gain_full, "gain_cheap": gain_cheap}


def correct_matrix(predictions: Mapping[int, np.ndarray], labels: np.ndarray) -> np.ndarray:
    """``{seed: predicted class [N]}`` and the true ``labels [N]`` -> bool [K, N] in seed order."""
    labels = np.asarray(labels)
    rows = []
    for s in sorted(predictions):
        pred = np.asarray(predictions[s])
        if pred.shape != labels.shape:
            raise ValueError(f"predictions of seed {s} have shape {pred.shape}; the labels {labels.shape}")
        rows.append(pred == labels)
    if not rows:
        raise ValueError("predictions is empty: give at least one seed's predictions")
    return np.stack(rows)

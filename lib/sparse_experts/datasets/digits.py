"""scikit-learn's 8x8 handwritten digits (1,797 real images, shipped inside scikit-learn: no download)."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

DIGITS_SEED = 0
DIGITS_SIZES = {"train": 1257, "validation": 270, "test": 270}
DIGITS_CLASS_NAMES = tuple(str(d) for d in range(10))


def digits_splits(seed: int = DIGITS_SEED) -> dict[str, dict[str, np.ndarray]]:
    """Split -> {"image": uint8 [N, 8, 8, 1] (grey levels 0..16 scaled to 0..255), "label": int32 [N]}.

    Stratified: per class, the examples are permuted with ``np.random.default_rng(seed)`` and dealt out so
    that each split gets its share of every digit (rounded, the remainder going to train); order shuffled.
    """
    data = load_digits()
    images = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = data.target.astype(np.int32)
    rng = np.random.default_rng(seed)
    n = len(labels)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in DIGITS_SIZES}
    # Largest-remainder allocation of the validation and test quotas over the classes.
    classes = np.unique(labels)
    counts = np.array([np.sum(labels == c) for c in classes])
    quota = {}
    for split in ("validation", "test"):
        exact = counts * DIGITS_SIZES[split] / n
        alloc = np.floor(exact).astype(int)
        short = DIGITS_SIZES[split] - alloc.sum()
        alloc[np.argsort(-(exact - alloc), kind="stable")[:short]] += 1
        quota[split] = alloc
    for ci, c in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        nv, nt = quota["validation"][ci], quota["test"][ci]
        parts["validation"].append(idx[:nv])
        parts["test"].append(idx[nv : nv + nt])
        parts["train"].append(idx[nv + nt :])
    out = {}
    for split, chunks in parts.items():
        order = rng.permutation(np.concatenate(chunks))
        out[split] = {"image": images[order], "label": labels[order]}
    return out

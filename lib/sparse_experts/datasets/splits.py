"""Which part of a TFDS catalog dataset each of the workbook's three splits reads.

Every notebook trains on ``train``, picks by ``validation`` and reports ``test``. Catalog datasets often lack
one of these: CIFAR has no validation split, and ImageNet's test labels are not public. :func:`plan` maps the
three names onto TFDS split expressions, following the usual practice of the papers' code bases:

- CIFAR-10/100: the last 2% of train is held out as validation ("minival"), test is test.
- ImageNet-2012: the last 1% of train is validation, the official validation split is the test split.
- VTAB-style downstream tasks: a held-out slice of train where the dataset has no validation split
  (pets 80/20, SVHN 90/10), and EuroSAT (train only) cut 60 / 20 / 20.
- Any other dataset: its own splits when it has all three; otherwise the same rules applied generically
  (:data:`FALLBACK_VALIDATION` of train as validation; with no test split, validation as test; with train
  alone, 60 / 20 / 20).

Slices are TFDS's (``"train[:98%]"``: percent boundaries rounded to the closest example), so the same plan
gives the same examples on every machine. This module's code is part of every cache key
(``cache.CODE_MODULES``): changing a plan retrains what was trained on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow_datasets as tfds

SPLITS = ("train", "validation", "test")

FALLBACK_VALIDATION = 10
"""Percent of train held out as validation for a catalog dataset with no plan and no validation split."""

_MINIVAL_2 = {"train": "train[:98%]", "validation": "train[98%:]", "test": "test"}

KNOWN: dict[str, dict[str, str]] = {
    "cifar10": _MINIVAL_2,
    "cifar100": _MINIVAL_2,
    "imagenet2012": {"train": "train[:99%]", "validation": "train[99%:]", "test": "validation"},
    "oxford_iiit_pet": {"train": "train[:80%]", "validation": "train[80%:]", "test": "test"},
    "svhn_cropped": {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"},
    "eurosat": {"train": "train[:60%]", "validation": "train[60%:80%]", "test": "train[80%:]"},
    "dtd": {"train": "train", "validation": "validation", "test": "test"},
    "oxford_flowers102": {"train": "train", "validation": "validation", "test": "test"},
}
"""Catalog dataset (name without config or version) -> workbook split -> TFDS split expression."""

RAW_SIZES: dict[str, dict[str, int]] = {
    "cifar10": {"train": 50_000, "test": 10_000},
    "cifar100": {"train": 50_000, "test": 10_000},
    "imagenet2012": {"train": 1_281_167, "validation": 50_000},
    "oxford_iiit_pet": {"train": 3_680, "test": 3_669},
    "svhn_cropped": {"train": 73_257, "test": 26_032, "extra": 531_131},
    "eurosat": {"train": 27_000},
    "dtd": {"train": 1_880, "validation": 1_880, "test": 1_880},
    "oxford_flowers102": {"train": 1_020, "validation": 1_020, "test": 6_149},
}
"""The TFDS catalog's published split sizes of the datasets in :data:`KNOWN`, so split sizes (and the
presets' evaluation batches) can be checked before the data is prepared. :func:`plan` and :func:`sizes`
use the prepared dataset's own sizes when it has them."""


def base_name(name: str) -> str:
    """``"eurosat/rgb:2.0.0"`` -> ``"eurosat"``."""
    return name.split("/")[0].split(":")[0]


def plan(name: str, available: Sequence[str] = ()) -> dict[str, str]:
    """The TFDS split expression behind each workbook split of catalog dataset ``name``.

    Args:
      name: TFDS catalog name (config and version allowed: ``"eurosat/rgb"``).
      available: the dataset's own split names once prepared; empty when unknown (then only datasets in
        :data:`KNOWN` have a plan).

    Returns:
      ``{"train": expr, "validation": expr, "test": expr}``.

    Raises:
      ValueError: the plan reads a split the dataset does not have, or no rule fits its splits.
    """
    available = tuple(available) or tuple(RAW_SIZES.get(base_name(name), ()))
    known = KNOWN.get(base_name(name))
    if known is not None:
        missing = sorted({_split_of(e) for e in known.values()} - set(available))
        if missing:
            raise ValueError(
                f"dataset={name!r}: the workbook's split plan {known} reads split(s) {missing}, but the "
                f"prepared dataset has {list(available)}"
            )
        return dict(known)
    have = set(available)
    v = 100 - FALLBACK_VALIDATION
    if {"train", "validation", "test"} <= have:
        return {"train": "train", "validation": "validation", "test": "test"}
    if {"train", "test"} <= have:
        return {"train": f"train[:{v}%]", "validation": f"train[{v}%:]", "test": "test"}
    if {"train", "validation"} <= have:
        return {"train": f"train[:{v}%]", "validation": f"train[{v}%:]", "test": "validation"}
    if "train" in have:
        return {"train": "train[:60%]", "validation": "train[60%:80%]", "test": "train[80%:]"}
    raise ValueError(
        f"dataset={name!r}: no split plan fits its splits {sorted(have) or '(unknown: not prepared)'}; "
        f"the workbook needs a 'train' split (known plans: {sorted(KNOWN)})"
    )


def _split_of(expression: str) -> str:
    return expression.split("[")[0]


def sizes(split_plan: Mapping[str, str], raw_sizes: Mapping[str, int]) -> dict[str, int]:
    """Examples in each planned split, from the raw split sizes (TFDS's own slice arithmetic)."""

    infos = {
        k: tfds.core.SplitInfo(name=k, shard_lengths=[int(n)], num_bytes=0) for k, n in raw_sizes.items()
    }
    out = {}
    for split, expression in split_plan.items():
        (absolute,) = tfds.core.ReadInstruction.from_spec(expression).to_absolute(infos)
        total = int(raw_sizes[absolute.splitname])
        lo = 0 if absolute.from_ is None else absolute.from_
        hi = total if absolute.to is None else absolute.to
        out[split] = max(0, hi - lo)
    return out

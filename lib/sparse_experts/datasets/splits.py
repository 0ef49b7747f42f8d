"""Which part of a TFDS catalog dataset each of the workbook's train / validation / test splits reads.

Catalog datasets often lack one of the three (CIFAR has no validation split, ImageNet's test labels are not
public): :func:`plan` maps them onto TFDS split expressions as the papers' code bases do (``KNOWN``, and
generic rules for other datasets; the table is in ``data/README.md``). TFDS slices round percent boundaries
to the closest example, so a plan gives the same examples on every machine. This module is part of every
cache key (``cache.CODE_MODULES``): changing a plan retrains what was trained on it.
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
"""The TFDS catalog's published split sizes of the datasets in :data:`KNOWN`, so split sizes can be checked
before the data is prepared (the prepared dataset's own sizes win)."""


def base_name(name: str) -> str:
    """``"eurosat/rgb:2.0.0"`` -> ``"eurosat"``."""
    return name.split("/")[0].split(":")[0]


def plan(name: str, available: Sequence[str] = ()) -> dict[str, str]:
    """``{"train": expr, "validation": expr, "test": expr}``: the TFDS split expressions of catalog dataset
    ``name`` (config and version allowed: ``"eurosat/rgb"``) with its own splits ``available`` (empty when not
    prepared: then :data:`RAW_SIZES`'s). ValueError when the plan reads a missing split or no rule fits."""
    available = tuple(available) or tuple(RAW_SIZES.get(base_name(name), ()))
    known = KNOWN.get(base_name(name))
    if known is not None:
        missing = sorted({e.split("[")[0] for e in known.values()} - set(available))
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

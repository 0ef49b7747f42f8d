"""What every notebook config is made of: ``preset`` and ``seed``, knobs with their checks, one error type.

A notebook's config is a frozen dataclass deriving from :class:`NotebookConfig` whose fields are knobs,
each declared with :func:`knob`: what it means and the check its value must pass, side by side (see
``configs/tour.py``). Constructing a config checks every field in order, then any rule across fields in the
config's own ``__post_init__``, so an invalid config cannot exist. A check takes (knob name, value) and
returns the value normalised (a list becomes a tuple, an int a float) or raises :class:`ParameterError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, NoReturn

import tensorflow_datasets as tfds

from sparse_experts import datasets
from sparse_experts.models import vit_config

# gpu_embedded: one GPU on the embedded data (no network needed; what the GPU CI runs, .ci/gpu).
PRESET_NAMES: tuple[str, ...] = ("smoke", "cpu", "gpu", "tpu", "gpu_embedded")
DEFAULT_PRESET = "cpu"

Check = Callable[[str, Any], Any]


class ParameterError(ValueError):
    """A notebook knob has a value outside what is allowed. The message names knob, value and allowed."""


def fail(name: str, value: Any, allowed: str) -> NoReturn:
    raise ParameterError(f"parameter {name}={value!r} is not allowed; expected {allowed}")


def one_of(*allowed: Any) -> Check:
    def check(name: str, value: Any) -> Any:
        if value not in allowed:
            fail(name, value, "one of " + ", ".join(repr(a) for a in allowed))
        return value

    return check


def integer(low: int, high: int) -> Check:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            fail(name, value, f"an integer in [{low}, {high}]")
        return int(value)

    return check


def real(low: float, high: float, *, low_open: bool = False) -> Check:
    """A finite number in [low, high], or in (low, high] when ``low_open``."""

    def check(name: str, value: Any) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not (low < value if low_open else low <= value) or value > high:
            fail(name, value, f"a finite number in {'(' if low_open else '['}{low}, {high}]")
        return float(value)

    return check


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        fail(name, value, "True or False")
    return value


def dataset_name(name: str, value: Any) -> str:
    """An embedded dataset name, or a TFDS catalog name (checked against the TFDS registry, offline)."""
    embedded = datasets.list_datasets()
    builder = value.split(":")[0].split("/")[0] if isinstance(value, str) else None  # name[:version][/config]
    if value in embedded or builder in tfds.list_builders(with_community_datasets=False):
        return value
    fail(name, value, f"an embedded dataset ({', '.join(embedded)}) or a TFDS catalog dataset name")


def dataset_list(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) == 0:
        fail(name, value, "a non-empty list of dataset names")
    return tuple(dataset_name(f"{name}[{i}]", v) for i, v in enumerate(value))


def vit_size(name: str, value: Any) -> str:
    """A ViT size string such as 'mu/4', 'Ti/16', 'B/16' (checked by decoding it)."""
    try:
        vit_config(value)
    except (ValueError, TypeError) as err:
        fail(name, value, f"a ViT size string ({err})")
    return value


def names_from(allowed: Sequence[str]) -> Check:
    """A non-empty list of distinct names, each one of ``allowed``."""

    def check(name: str, value: Any) -> tuple[str, ...]:
        ok = not isinstance(value, str) and isinstance(value, Sequence) and len(value) > 0
        if not ok or not all(v in allowed for v in value) or len(set(value)) != len(value):
            fail(name, value, "a non-empty list of distinct names from " + ", ".join(map(repr, allowed)))
        return tuple(value)

    check.allowed = tuple(allowed)  # type: ignore[attr-defined]
    return check


def positive_list(min_length: int, high: float, min_spread: float = 1.0) -> Check:
    """At least ``min_length`` distinct finite numbers in (0, high] whose largest is at least ``min_spread``
    times the smallest; returned sorted."""

    def check(name: str, value: Any) -> tuple[float, ...]:
        ok = not isinstance(value, str) and isinstance(value, Sequence) and len(value) >= min_length
        ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        ok = ok and all(math.isfinite(v) and 0 < v <= high for v in value) and len(set(value)) == len(value)
        if not ok or max(value) < min_spread * min(value):
            spread = f" whose largest is >= {min_spread:g}x the smallest" if min_spread > 1 else ""
            fail(name, value, f"a list of >= {min_length} distinct numbers in (0, {high:g}]{spread}")
        return tuple(float(v) for v in sorted(value))

    return check


def knob(doc: str, check: Check, **field_options: Any) -> Any:
    """A config field: what the knob means and the check its value passes."""
    return field(metadata={"doc": doc, "check": check}, **field_options)


@dataclass(frozen=True, kw_only=True)
class NotebookConfig(Mapping[str, Any]):
    """``preset`` and ``seed``, the first two knobs of every notebook; subclasses add theirs.

    Read a knob as ``config.width``; the config is also a read-only mapping of its knobs (``config["width"]``,
    ``dict(config)``), for code such as the zoo's that takes knobs from any mapping.
    """

    notebook: ClassVar[str] = ""

    preset: str = knob(
        "bundle of knob values: " + ", ".join(PRESET_NAMES), one_of(*PRESET_NAMES), default=DEFAULT_PRESET
    )
    seed: int = knob(
        "seed of everything random (initialisation, batch order, router noise)",
        integer(0, 2**31 - 1),
        default=0,
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, f.metadata["check"](f.name, getattr(self, f.name)))

    @classmethod
    def knob_names(cls) -> tuple[str, ...]:
        """Every knob in order: ``preset``, ``seed``, then the notebook's."""
        return tuple(f.name for f in fields(cls))

    def __getitem__(self, name: str) -> Any:
        if name not in self.knob_names():
            raise KeyError(f"{self.notebook} has no parameter {name!r}")
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.knob_names())

    def __len__(self) -> int:
        return len(self.knob_names())

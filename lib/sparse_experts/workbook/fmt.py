"""How the notebooks and the index page print numbers: one helper, so a table never shows ``0.100000``,
``644286.062500`` or an entropy without its unit.

- :func:`number`: about ``digits`` significant digits, thousands separators, no trailing zeros;
  integers (and whole floats such as parameter counts) in full; scientific only beyond 1e9 or below 1e-3.
- :func:`percent`, :func:`points`, :func:`nats`: a fraction, a difference of fractions and an entropy,
  each with its unit.
- :func:`style`: a pandas ``Styler`` whose every cell and index label goes through :func:`number` unless a
  column is given its own formatter.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any


def number(value: Any, digits: int = 3) -> str:
    """``value`` for a reader: ``0.1`` -> "0.1", ``0.225974`` -> "0.226", ``2187.76`` -> "2,188",
    ``644286.06`` -> "644,286", ``202186.0`` -> "202,186", ``3e-5`` -> "3.00e-05". ``None`` is "-",
    booleans and strings are returned as they are."""
    if value is None:
        return "-"
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if not isinstance(value, numbers.Real):
        return str(value)
    x = float(value)
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    size = abs(x)
    if size >= 1e9 and not x.is_integer() or size >= 1e15 or size < 1e-3:
        return f"{x:.{digits - 1}e}"
    if x.is_integer() or size >= 10 ** (digits - 1):
        return f"{round(x):,}"
    decimals = digits - 1 - math.floor(math.log10(size))
    text = f"{x:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def percent(fraction: Any, decimals: int = 1) -> str:
    """A fraction as a percentage: ``0.8712`` -> "87.1%"; ``None`` is "-"."""
    if fraction is None:
        return "-"
    return f"{100 * float(fraction):.{decimals}f}%"


def points(difference: Any, decimals: int = 1) -> str:
    """A difference of two fractions in signed percentage points: ``0.0102`` -> "+1.0 points"."""
    if difference is None:
        return "-"
    return f"{100 * float(difference):+.{decimals}f} points"


def nats(entropy: Any) -> str:
    """An entropy in nats (natural log), with its unit: ``2.0794`` -> "2.08 nats"."""
    return "-" if entropy is None else f"{float(entropy):.2f} nats"


def style(frame, columns: Mapping[Any, Callable[[Any], str]] | None = None):
    """``frame.style`` with every cell and index label through :func:`number`, except the ``columns``
    given their own formatter (e.g. ``{"accuracy": fmt.percent}``). One call, so a later format cannot
    reset an earlier one."""
    columns = dict(columns or {})
    unknown = [c for c in columns if c not in frame.columns]
    if unknown:
        raise ValueError(f"columns {unknown} are not in the table; its columns are {list(frame.columns)}")
    formats = {c: columns.get(c, number) for c in frame.columns}
    return frame.style.format(formats, na_rep="-").format_index(number, axis=0)

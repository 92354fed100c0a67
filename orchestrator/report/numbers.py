"""Small number helpers shared by the plots and the renderer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def mean_and_half_width(values: Sequence[float], confidence: float) -> tuple[float, float | None]:
    """Mean and ``t_{confidence, n-1} * sd / sqrt(n)``: mean -/+ the half width are the
    one-sided ``confidence`` lower and upper bounds, the same interval the judge uses
    (together a central ``2 * confidence - 1`` interval). None for fewer than 2 values."""
    from scipy import special

    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(special.stdtrit(n - 1, confidence)) * sd / math.sqrt(n)


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers to 4 significant digits, integers as integers, None and NaN as '-'."""
    if value is None or isinstance(value, bool):
        return "-" if value is None else str(value)
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            return "-" if math.isnan(value) else str(value)
        if float(value).is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.{digits}g}"
    return str(value)


def pct(level: float) -> str:
    return f"{100 * level:.3g}%"

"""Whether a reported value is a usable number.

Metrics arrive from trials, MLflow and archives as JSON-ish values: a float, an int, a
bool (which Python counts as an int), None, or NaN/inf for a diverged or failed trial.
The search, the scheduler and the report all ask the same question of them, so it is
answered here once.
"""

from __future__ import annotations

import math
from typing import TypeGuard


def is_finite_number(value: object) -> TypeGuard[float]:
    """True for an int or float that is neither NaN nor infinite; False for bools,
    None, strings and everything else.

    >>> [is_finite_number(v) for v in (1, 0.5, float("nan"), float("inf"), True, None, "1")]
    [True, True, False, False, False, False, False]

    A ``TypeGuard``: where it holds, mypy reads the value as a number (an int counts as a float).
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

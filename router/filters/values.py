"""Values in boosts and decays, pure: a number or an ISO date as epoch milliseconds, and a scale or offset as a number
or a duration. Shared by the request models (validation) and the stages (scoring)."""
from __future__ import annotations

import math
from typing import Any

from router.filters.dsl import _DATE_RE, epoch_ms

_DURATION = {"ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3, "d": 86400e3, "w": 7 * 86400e3}


def number(value: Any) -> float | None:
    """A number, or an ISO date as epoch milliseconds; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if isinstance(value, str) and _DATE_RE.match(value):
        return epoch_ms(value)
    return None


def distance(value: Any) -> float | None:
    """A scale or offset: a number, or a duration such as "7d", "12h", "30m" (milliseconds)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        for unit in ("ms", "s", "m", "h", "d", "w"):
            head = value[: -len(unit)]
            if value.endswith(unit) and head.replace(".", "", 1).isdigit():
                return float(head) * _DURATION[unit]
    return None

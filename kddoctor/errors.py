"""The one exception type that means "the user's input is wrong" (exit status 2), and its validators."""

import math
import numbers


class UserError(Exception):
    """Bad input: the message says what is wrong and how to fix it, in one line."""


def check_number(flag: str, value: object) -> float:
    """A real, finite number (NaN and Inf would only crash the report at the very end)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise UserError(f"{flag} must be a finite number, got {value!r}")
    return float(value)


def check_int(flag: str, value: object, low: int, high: float = math.inf) -> int:
    """An integer in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        bound = f">= {low}" if high == math.inf else f"in [{low}, {high}]"
        raise UserError(f"{flag} must be an integer {bound}, got {value!r}")
    return int(value)

"""Checks for the numeric fields of option objects, made where the options are made.

Each raises ValueError naming the field, what it must be and what it got, so that an option
that cannot be right (NaN, a negative width, 0 steps) never reaches a run that would say "ok".
"""

from __future__ import annotations

import math
import numbers

__all__ = ["check_number", "check_integer", "per_level_values"]


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_number(owner: str, name: str, value, *, minimum: float | None = None, above: float | None = None,
                 maximum: float | None = None, allow_none: bool = False) -> None:
    """`value` must be a finite real number, >= `minimum`, > `above` and <= `maximum` where given."""
    if value is None and allow_none:
        return
    limits = [f">= {minimum:g}" if minimum is not None else "", f"> {above:g}" if above is not None else "",
              f"<= {maximum:g}" if maximum is not None else ""]
    expected = "a finite number" + "".join(f" {limit}" for limit in limits if limit) + (" or None" if allow_none else "")
    ok = _is_number(value) and math.isfinite(float(value))
    ok = ok and (minimum is None or value >= minimum) and (above is None or value > above)
    ok = ok and (maximum is None or value <= maximum)
    if not ok:
        raise ValueError(f"{owner}.{name} must be {expected}, got {value!r}")


def check_integer(owner: str, name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> None:
    """`value` must be an int (not a bool) within [minimum, maximum] where given."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        bounds = " ".join(b for b in (f">= {minimum}" if minimum is not None else "",
                                      f"<= {maximum}" if maximum is not None else "") if b)
        raise ValueError(f"{owner}.{name} must be an int {bounds}".rstrip() + f", got {value!r}")


def per_level_values(value) -> tuple:
    """The values of a "one value or one per level" field."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)

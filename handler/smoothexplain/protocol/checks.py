"""The checks of one option value: the options table's types and ranges, judged the same way
in the client (before any network call), `make_spec` and the model-config. Free of torch.
Every error is `InvalidArgument` naming the field it was given.
"""

from __future__ import annotations

import math
import numbers
from enum import StrEnum
from typing import TypeVar

import numpy as np

from .errors import InvalidArgument
from .options import FLOAT32_MAX, Option, finite

__all__ = [
    "MAX_NAME",
    "check_choice",
    "check_integer",
    "check_option",
    "check_real",
    "finite_float32",
]

E = TypeVar("E", bound=StrEnum)
MAX_NAME = 256  # a string option (a module name): longer is no name of a real model's module


def check_choice(field: str, value: object, kind: type[E]) -> E:
    allowed = [m.value for m in kind]
    if isinstance(value, kind):
        return value
    if isinstance(value, str) and value in allowed:
        return kind(value)
    raise InvalidArgument(f"{field} must be one of {allowed}, got {value!r}", field=field)


def check_integer(field: str, value: object, low: int, high: int | None = None) -> int:
    """`value` as an int if it is an integer (a numpy one too, not a bool) in [low, high], else
    `InvalidArgument` naming `field`: the one integer check of options, call sizes, budgets."""
    upper = "" if high is None else f" and <= {high}"
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise InvalidArgument(
            f"{field} must be an integer >= {low}{upper}, got {value!r}", field=field
        )
    value = int(value)  # a numpy integer too
    if value < low or (high is not None and value > high):
        raise InvalidArgument(f"{field} must be >= {low}{upper}, got {value}", field=field)
    return value


def finite_float32(value: float, field: str) -> float:
    """`value` if float32 holds it as a finite number, else `InvalidArgument` naming `field`.

    The engine computes in float32: a double above its range (an IG baseline of 1e39) is
    finite here but becomes inf there, and every gradient after it NaN.
    """
    if not finite(value):
        raise InvalidArgument(
            f"{field} must be a finite float32 number (|x| <= {FLOAT32_MAX!r}), got {value!r}",
            field=field,
        )
    return value


def check_real(
    field: str,
    value: object,
    *,
    low: float,
    open_low: bool = False,
    high: float | None = None,
    open_high: bool = False,
    why: str = "",
) -> float:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise InvalidArgument(f"{field} must be a number, got {value!r}", field=field)
    try:
        number = finite_float32(float(value), field)
    except OverflowError:  # an int beyond any float
        number = finite_float32(math.inf, field)
    too_low = number <= low if open_low else number < low
    too_high = high is not None and (number >= high if open_high else number > high)
    if too_low or too_high:
        left = "(" if open_low else "["
        right = ")" if open_high else "]"
        span = f"{left}{low}, {'inf' if high is None else f'{high:g}'}{right}"
        raise InvalidArgument(
            f"{field} must be a finite number in {span}{why}, got {value!r}", field=field
        )
    return number


def check_option(entry: Option, value: object, field: str = "") -> object:
    """`value` checked against its table entry: the enum member, the bool, the string, the int
    or the float32-finite float within the entry's range, or None where the default is None.
    `InvalidArgument` names `field` (default: the option's name)."""
    field = field or entry.name
    if value is None and entry.default is None:
        return None
    if entry.choices:
        return check_choice(field, value, entry.kind)
    if entry.kind is bool:
        if not isinstance(value, bool):
            raise InvalidArgument(f"{field} must be a bool", field=field)
        return value
    if entry.kind is str:
        if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME:
            raise InvalidArgument(
                f"{field} must be a non-empty string of at most {MAX_NAME} characters, "
                f"got {value!r:.80}",
                field=field,
            )
        return value
    if entry.kind is int:
        low = None if entry.low is None else int(entry.low)
        high = None if entry.high is None else int(entry.high)
        return check_integer(field, value, low if low is not None else -(2**63), high)
    return check_real(
        field,
        value,
        low=-FLOAT32_MAX if entry.low is None else entry.low,
        open_low=entry.open_low,
        high=entry.high,
        open_high=entry.open_high,
        why=f" ({entry.unit})" if entry.unit else "",
    )

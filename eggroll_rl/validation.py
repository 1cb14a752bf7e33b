"""Argument checks shared by the strategy, the kernels' launchers, the env adapters and the training config.

Every check raises with one message shape, ``name=value is invalid: expected ...``, so a bad input names the
argument, the value given and what was expected wherever it enters. ``TypeError`` for a value of the wrong kind,
``ValueError`` for one out of range.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["check_choice", "check_int", "check_number", "invalid"]


def invalid(name: str, value: Any, expected: str, error: type[Exception] = ValueError) -> Exception:
    """The exception for ``name=value`` when ``expected`` was wanted (raise it)."""
    return error(f"{name}={value!r} is invalid: expected {expected}")


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int (not a bool) in ``[lo, hi]``; either bound may be ``None``."""
    expected = "an integer" + (f" >= {lo}" if lo is not None else "") + (f" <= {hi}" if hi is not None else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(name, value, expected, TypeError)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise invalid(name, value, expected)
    return value


def check_number(name: str, value: Any, lo: float | None = None, lo_inclusive: bool = True) -> float:
    """``value`` as a finite real number (int or float, not a bool), ``>= lo`` (``> lo`` if not inclusive)."""
    bound = "" if lo is None else f" {'>=' if lo_inclusive else '>'} {lo:g}"
    expected = f"a finite number{bound}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(name, value, expected, TypeError)
    if not math.isfinite(value) or (lo is not None and (value < lo or (value == lo and not lo_inclusive))):
        raise invalid(name, value, expected)
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices`` (e.g. ``typing.get_args`` of a ``Literal`` from ``eggroll_rl.choices``)."""
    choices = tuple(choices)
    if value not in choices:
        raise invalid(name, value, f"one of {list(choices)}")
    return value

"""Checks of scalar arguments and configuration fields, with one-line messages naming the range.

Each check takes the name to report (``"steps"``, ``"UNetConfig.base_channels"``,
``"schedule.beta_start"``), the value and the allowed range (or, for :func:`check_choice`, the
allowed values), and returns the value as a plain ``int`` or ``float`` (or the chosen value);
anything else raises ``ValueError`` saying what was given and what is allowed.
Booleans are not numbers here, and floats are not integers (``2.0`` steps is refused, not rounded).
The offending value is shown abbreviated (:func:`reprlib.repr`), so a message stays one short line
whatever was passed.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any, TypeVar

__all__ = ["check_int", "check_float", "check_float_list", "check_bool", "check_choice", "describe_range", "OPEN_UNIT"]

T = TypeVar("T")

#: the open interval (0, 1) as keywords of :func:`check_float` and :func:`check_float_list` (betas, ᾱ)
OPEN_UNIT: dict[str, Any] = {"low": 0.0, "high": 1.0, "low_open": True, "high_open": True}


def _show(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def describe_range(low: float | None, high: float | None, *, low_open: bool = False, high_open: bool = False) -> str:
    """``"in [1, 1024]"``, ``"in (0, 1)"``, ``">= 0"``, ``"> 0"``, ``"<= 5"`` or ``""`` (no bound)."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_show(low)}, {_show(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_show(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_show(high)}"
    return ""


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) in ``[low, high]``; else ``ValueError``."""
    ok = isinstance(value, Integral) and not isinstance(value, bool)
    if ok and (low is not None and value < low or high is not None and value > high):
        ok = False
    if not ok:
        bounds = describe_range(low, high)
        raise ValueError(f"{name} must be an integer{' ' + bounds if bounds else ''}, got {reprlib.repr(value)}")
    return int(value)


def check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a ``float`` if it is a finite real number (not a bool) within the bounds; else ``ValueError``.

    ``low_open``/``high_open`` exclude the bound itself: ``check_float("lr", lr, 0, low_open=True)``
    asks for ``lr > 0``.
    """
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        v = float(value)
        if low is not None and (v <= low if low_open else v < low):
            ok = False
        if high is not None and (v >= high if high_open else v > high):
            ok = False
    if not ok:
        bounds = describe_range(low, high, low_open=low_open, high_open=high_open)
        raise ValueError(f"{name} must be a finite number{' ' + bounds if bounds else ''}, got {reprlib.repr(value)}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a ``bool``; else ``ValueError`` (``1`` or ``"yes"`` are not switches)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {reprlib.repr(value)}")
    return value


def check_float_list(
    name: str, value: Any, *, min_len: int = 1, max_len: int | None = None, **bounds: Any
) -> list[float]:
    """``value`` as a list of floats: a flat list or tuple of ``min_len`` to ``max_len`` numbers, each
    within ``bounds`` (the keywords of :func:`check_float`); the first bad entry is named (``betas[3]``)."""
    if not isinstance(value, (list, tuple)) or len(value) < min_len or (max_len is not None and len(value) > max_len):
        count = f"{min_len} to {max_len}" if max_len is not None else f"at least {min_len}"
        raise ValueError(f"{name} must be a list of {count} numbers, got {reprlib.repr(value)}")
    return [check_float(f"{name}[{i}]", v, **bounds) for i, v in enumerate(value)]


def _is(value: Any, choice: Any) -> bool:
    """``value`` equals ``choice`` and both or neither are booleans (``True`` is not the choice ``1``)."""
    if isinstance(value, bool) != isinstance(choice, bool):
        return False
    try:
        return bool(value == choice)
    except (TypeError, ValueError, RuntimeError):  # e.g. an array, whose comparison has no single truth value
        return False


def check_choice(name: str, value: T, allowed: Sequence[T]) -> T:
    """``value`` if it is one of ``allowed``; else ``ValueError("unknown <name> <value>; allowed: a, b, c")``.

    ``name`` says what is chosen (``"divergence"``, ``"UniPC order"``, ``"schedule.time_shift_type"``).
    """
    if not any(_is(value, choice) for choice in allowed):
        raise ValueError(f"unknown {name} {reprlib.repr(value)}; allowed: {', '.join(str(c) for c in allowed)}")
    return value

"""Checks of solver constructor options, with one message format for every solver."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

__all__ = ["check_choice"]

T = TypeVar("T")


def check_choice(label: str, value: T, allowed: Sequence[T]) -> T:
    """``value`` if it is one of ``allowed``, else ``ValueError("<label> must be a, b or c, got <value>")``."""
    if value not in allowed:
        names = [repr(v) for v in allowed]
        listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        raise ValueError(f"{label} must be {listed}, got {value!r}")
    return value

"""Checks of solver constructor options: every solver family checks a choice among allowed values
with the package's one choice check, :func:`ddim_ode.ranges.check_choice`, imported here."""

from __future__ import annotations

from ..ranges import check_choice

__all__ = ["check_choice"]

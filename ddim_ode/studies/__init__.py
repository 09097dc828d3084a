"""Reproducible studies: round trip, accuracy vs NFE, measured orders, exact inversion, inversion under
guidance, sample quality, speed, consistency.

Each is a library function that writes a JSON of every number (with the environment) and its plots
or tables, and is exposed as ``ddim-ode bench <study>``; :func:`replot` redraws them from the JSON
alone. Every study takes a :class:`StudyRun` (output folder, device, seed, quick, progress bars).
Studies call only the public API (``integrate``/``encode``/``decode``/``solve``, the solver registry).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._files import read_json
from .accuracy import SUITES, accuracy_study
from .accuracy_report import render_accuracy
from .common import StudyRun
from .consistency import consistency_study
from .fewstep import fewstep_study, render_fewstep
from .guided_inversion import guided_inversion_study, render_guided_inversion
from .inversion import inversion_study, write_inversion_table
from .orders import orders_study, write_orders_table
from .quality import plot_quality, quality_study
from .roundtrip import plot_roundtrip, roundtrip_study
from .speed import plot_speed, speed_study

__all__ = [
    "STUDIES",
    "SUITES",
    "StudyRun",
    "accuracy_study",
    "consistency_study",
    "guided_inversion_study",
    "fewstep_study",
    "inversion_study",
    "orders_study",
    "quality_study",
    "roundtrip_study",
    "speed_study",
    "replot",
]

STUDIES: dict[str, Callable[..., dict[str, Any]]] = {
    "roundtrip": roundtrip_study,
    "accuracy": accuracy_study,
    "orders": orders_study,
    "inversion": inversion_study,
    "quality": quality_study,
    "speed": speed_study,
    "consistency": consistency_study,
    "guided-inversion": guided_inversion_study,
    "fewstep": fewstep_study,
}

_REPLOT: dict[str, Callable[[dict[str, Any], Path], Path]] = {
    "roundtrip": plot_roundtrip,
    "accuracy": render_accuracy,
    "orders": write_orders_table,
    "inversion": write_inversion_table,
    "quality": plot_quality,
    "speed": plot_speed,
    "guided-inversion": render_guided_inversion,
    "fewstep": render_fewstep,
}


def replot(json_path: str | Path) -> Path:
    """Redraw the plots (and tables) of a study from its JSON, without recomputing anything."""
    doc = read_json(json_path)
    study = doc.get("study") if isinstance(doc, dict) else None
    if study not in _REPLOT:
        raise ValueError(
            f"{json_path} is not a re-plottable study result (study={study!r}); allowed: {', '.join(_REPLOT)}"
        )
    return _REPLOT[study](doc, Path(json_path).parent)

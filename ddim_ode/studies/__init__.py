"""Reproducible studies: round trip, accuracy vs NFE, sample quality, speed, consistency.

Each is a library function that writes a JSON of every number (with the environment) and a PNG,
and is exposed as ``ddim-ode bench <study>``; :func:`replot` redraws a plot from its JSON alone.
Studies call only the public API (``integrate``/``encode``/``decode``, the solver registry).
"""

from __future__ import annotations

from pathlib import Path

from . import accuracy, quality, roundtrip, speed
from .accuracy import accuracy_study
from .common import read_json
from .consistency import consistency_study
from .quality import quality_study
from .roundtrip import roundtrip_study
from .speed import speed_study

__all__ = [
    "STUDIES",
    "accuracy_study",
    "consistency_study",
    "quality_study",
    "roundtrip_study",
    "speed_study",
    "replot",
]

STUDIES = {
    "roundtrip": roundtrip_study,
    "accuracy": accuracy_study,
    "quality": quality_study,
    "speed": speed_study,
    "consistency": consistency_study,
}

_REPLOT = {
    "roundtrip": roundtrip.plot_roundtrip,
    "accuracy": accuracy.plot_accuracy,
    "quality": quality.plot_quality,
    "speed": speed.plot_speed,
}


def replot(json_path: str | Path) -> Path:
    """Redraw the PNG of a study from its JSON, without recomputing anything."""
    doc = read_json(json_path)
    study = doc.get("study")
    if study not in _REPLOT:
        raise ValueError(
            f"{json_path} is not a re-plottable study result (study={study!r}); allowed: {', '.join(_REPLOT)}"
        )
    return _REPLOT[study](doc, Path(json_path).parent)

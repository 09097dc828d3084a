"""What :func:`~ddim_ode.tune_grid` returns, and its JSON file.

The file is a JSON object with ``format`` ``"ddim_ode.tuned_grid"``, ``format_version`` 1,
``sigmas`` (the decoding grid, decreasing, ending at 0; floats written with full precision so they
read back bit for bit; a grid of a flow path that starts at pure noise, σ = ∞, starts with the
string ``"inf"``) and the record of how the grid was tuned (see :class:`TunedGrid`; an error
that is infinite because a solve blew up is written as ``null``).
:func:`read_sigmas` reads the grid from such a file or from a plain JSON list of σ values.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._files import read_json, write_json

__all__ = ["TunedGrid", "read_sigmas", "FORMAT", "FORMAT_VERSION"]

FORMAT = "ddim_ode.tuned_grid"
FORMAT_VERSION = 1


#: the error fields, which are ``inf`` when a solve blew up (written as JSON ``null``)
_ERRORS = ("heldout_error", "tuned_heldout_error", "tuning_error", "reference_error")


#: how a grid's first σ = ∞ (pure noise on a flow path) is written: JSON has no infinity
INF = "inf"


def _to_null(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _from_null(x: float | None) -> float:
    return math.inf if x is None else float(x)


@dataclass(frozen=True, eq=False)
class TunedGrid:
    """A σ grid tuned for one model, solver and number of steps, with the record of its tuning.

    Attributes:
        sigmas: the float64 decoding grid (decreasing, ending at 0; on a flow path it may start at
            ``inf``, pure noise): ``decode(..., sigmas=sigmas)``.
        model: the model's source (``"default"``, a directory) or ``repr`` of a model object.
        schedule: ``repr`` of the model's schedule.
        solver: the solver's name; ``solver_options`` the options it was built with.
        n: number of steps of ``sigmas``; ``nfe``: network evaluations of one solve along it.
        chosen: ``"tuned"``, or the name of the standard grid returned because the tuned one was
            not better on the held-out noises.
        method: how the tuned grid was found: ``"dp"`` (dynamic programme on the candidates) or
            ``"dp+refine"`` (then Nelder–Mead on the global error).
        heldout_error: RMS error at σ = 0 of the returned grid on the held-out noises, against
            the accurate solution from the same noise; ``tuned_heldout_error`` that of the tuned
            grid (even when not returned); ``default_heldout_errors`` that of each standard grid
            with at most as many NFE (grid name → error).
        default_nfe: NFE of each standard grid at this n (a discrete "uniform" grid may take
            more than n steps; such grids are reported but not compared).
        tuning_error: RMS error of the tuned grid on the tuning noises.
        reference_error: upper estimate of the RMS error of the reference solutions (their
            distance from solves with half as many RK4 steps, on the tuning noises).
        tuning_nfe: network evaluations the tuning spent (each on a batch of ``num_samples`` or
            ``heldout_samples``); ``tuning_nfe_by_phase`` splits them by phase.
        tuning_seconds: wall time of the tuning.
        seed, heldout_seed, num_samples, heldout_samples, candidates: the tuning set-up.
    """

    sigmas: Tensor
    model: str
    schedule: str
    solver: str
    n: int
    nfe: int
    chosen: str
    method: str
    heldout_error: float
    tuned_heldout_error: float
    default_heldout_errors: dict[str, float]
    default_nfe: dict[str, int]
    tuning_error: float
    reference_error: float
    tuning_nfe: int
    tuning_seconds: float
    seed: int
    heldout_seed: int
    num_samples: int
    heldout_samples: int
    candidates: int
    solver_options: dict[str, Any] = field(default_factory=dict)
    tuning_nfe_by_phase: dict[str, int] = field(default_factory=dict)

    @property
    def best_default(self) -> str | None:
        """The compared standard grid with the least held-out error (``None`` if none was comparable)."""
        errs = self.default_heldout_errors
        return min(errs, key=errs.__getitem__) if errs else None

    @property
    def gain(self) -> float:
        """Held-out error of the best standard grid divided by that of the returned grid (≥ 1; NaN if none)."""
        best = self.best_default
        if best is None:
            return math.nan
        return self.default_heldout_errors[best] / self.heldout_error if self.heldout_error > 0 else math.inf

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the file format (``sigmas`` as a list of floats, an infinite error as ``null``)."""
        body = asdict(self)
        body["sigmas"] = _grid_json(self.sigmas)
        for name in _ERRORS:
            body[name] = _to_null(body[name])
        body["default_heldout_errors"] = {k: _to_null(v) for k, v in self.default_heldout_errors.items()}
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **body}

    @classmethod
    def from_json(cls, obj: Any) -> TunedGrid:
        """The :class:`TunedGrid` of a JSON object written by :meth:`to_json`."""
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise ValueError(f"not a tuned grid: expected a JSON object with format {FORMAT!r}")
        if obj.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported tuned-grid format_version {obj.get('format_version')!r}; allowed: 1")
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(obj) - {"solver_options", "tuning_nfe_by_phase"})
        if missing:
            raise ValueError(f"tuned grid is missing {', '.join(missing)}")
        values = {k: v for k, v in obj.items() if k in names}
        values["sigmas"] = _grid_tensor(obj["sigmas"], "sigmas")
        for name in _ERRORS:
            values[name] = _from_null(values[name])
        values["default_heldout_errors"] = {k: _from_null(v) for k, v in values["default_heldout_errors"].items()}
        return cls(**values)

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path`` atomically."""
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> TunedGrid:
        """The grid saved at ``path`` by :meth:`save`."""
        try:
            return cls.from_json(read_json(path))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def __repr__(self) -> str:
        sig = ", ".join(f"{s:.4g}" for s in self.sigmas.tolist())
        return (
            f"TunedGrid(solver={self.solver!r}, n={self.n}, nfe={self.nfe}, chosen={self.chosen!r}, "
            f"heldout_error={self.heldout_error:.3g}, gain={self.gain:.3g}, sigmas=[{sig}])"
        )


def _grid_json(sig: Tensor) -> list[float | str]:
    """A decoding grid as JSON: floats, and a first σ = ∞ (pure noise of a flow path) as the string ``"inf"``."""
    return [INF if math.isinf(s) else float(s) for s in sig.tolist()]


def _grid_tensor(values: Any, what: str) -> Tensor:
    if isinstance(values, list) and values and values[0] == INF:
        values = [math.inf, *values[1:]]
    if not isinstance(values, list) or len(values) < 2 or not all(isinstance(v, (int, float)) for v in values):
        raise ValueError(f"{what} must be a list of at least 2 numbers (the first may be {INF!r})")
    sig = torch.tensor(values, dtype=torch.float64)
    finite = bool(torch.isfinite(sig[1:]).all()) and not math.isnan(float(sig[0]))
    if not finite or not bool((sig[1:] < sig[:-1]).all()) or float(sig[-1]) != 0.0:
        raise ValueError(
            f"{what} must be strictly decreasing and end at 0, every value finite but a first {INF!r} (a decoding grid)"
        )
    return sig


def read_sigmas(path: str | Path) -> Tensor:
    """The decoding grid stored at ``path``: a tuned-grid file (:meth:`TunedGrid.save`) or a JSON list of σ."""
    obj = read_json(path)
    try:
        return TunedGrid.from_json(obj).sigmas if isinstance(obj, dict) else _grid_tensor(obj, "the grid")
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None

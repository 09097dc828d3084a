"""How a command of the ``ddim-ode`` command line integrates: solver, typed options and σ grid.

:func:`make_plan` turns ``--solver``, ``--solver-option``, ``-n``, ``--grid``, ``--sigmas`` and
``--timesteps`` (and, for latents read from a file, the settings recorded with them; see
:mod:`ddim_ode.cli_io`) into a :class:`Plan`: the solver, its options converted to the types its
constructor declares, and the decoding grid of σ values actually integrated along. Everything is
checked here, before any work, with ``ValueError`` messages that name the flag and the allowed
values; :func:`mismatches` says how a plan and the model that runs it differ from a latent
file's record.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .checks import as_float64, check_decoding_grid
from .cli_io import LatentFile, ModelRecord, decoding_arrays
from .grids import GRIDS, make_grid, sigmas_from_timesteps
from .schedules import Schedule
from .solvers import SOLVERS, get_solver

__all__ = ["Plan", "make_plan", "solver_options", "mismatches", "describe_record"]

_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def _kind(ann: Any) -> str:
    if ann is bool:
        return "true/false (or yes/no, 1/0)"
    if ann is int:
        return "an integer"
    if ann is float:
        return "a number"
    if ann is str:
        return "text"
    if ann is dict or typing.get_origin(ann) is dict:
        return "a JSON object"
    if typing.get_origin(ann) is typing.Literal:
        return "one of " + ", ".join(str(v) for v in typing.get_args(ann))
    return getattr(ann, "__name__", str(ann))


def _settable(ann: Any) -> bool:
    """Whether a value of type ``ann`` can be written on the command line."""
    return ann in (bool, int, float, str, dict) or typing.get_origin(ann) in (typing.Literal, dict)


def _typed(text: str, ann: Any, what: str) -> Any:
    """``text`` converted to the annotated type ``ann`` of a constructor argument."""
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        alts = [a for a in typing.get_args(ann) if a is not type(None)]
        nullable = len(alts) < len(typing.get_args(ann))
        if nullable and text.lower() in ("none", "null"):
            return None
        settable = [a for a in alts if _settable(a)]
        if not settable:
            raise ValueError(f"{what} cannot be set from the command line (it takes {_kind(alts[0])})")
        for alt in settable:
            with contextlib.suppress(ValueError):
                return _typed(text, alt, what)
        alts = settable
        kinds = " or ".join([_kind(a) for a in alts] + (["none"] if nullable else []))
        raise ValueError(f"bad {what} {text!r}: expected {kinds}")
    if origin is typing.Literal:
        for v in typing.get_args(ann):
            if str(v) == text:
                return v
        raise ValueError(f"bad {what} {text!r}; allowed: {', '.join(str(v) for v in typing.get_args(ann))}")
    if ann is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"bad {what} {text!r}: a boolean option takes true/false, yes/no or 1/0")
    if ann is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"bad {what} {text!r}: expected an integer") from None
    if ann is float:
        try:
            val = float(text)
        except ValueError:
            raise ValueError(f"bad {what} {text!r}: expected a number") from None
        if not math.isfinite(val):
            raise ValueError(f"bad {what} {text!r}: expected a finite number")
        return val
    if ann is str:
        return text
    if ann is dict or origin is dict:
        try:
            val = json.loads(text)
        except json.JSONDecodeError:
            val = None
        if not isinstance(val, dict):
            raise ValueError(f"bad {what} {text!r}: expected a JSON object, e.g. '{{\"key\": 1}}'")
        return val
    raise ValueError(f"{what} cannot be set from the command line (it takes {_kind(ann)})")


def solver_options(solver: str, pairs: Sequence[str]) -> dict[str, Any]:
    """``--solver-option KEY=VALUE`` pairs, each converted to the type its constructor declares."""
    factory = SOLVERS[solver]
    params = [
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    hints = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"bad --solver-option {pair!r}; use KEY=VALUE, e.g. order=3")
        if key not in params:
            allowed = f"allowed: {', '.join(params)}" if params else "it takes no options"
            raise ValueError(f"unknown --solver-option {key!r} for solver {solver!r}; {allowed}")
        if key in out:
            raise ValueError(f"--solver-option {key} given twice")
        out[key] = _typed(text.strip(), hints.get(key, str), f"--solver-option {key} (solver {solver!r})")
    return out


def _numbers(text: str, flag: str, top_inf: bool = False) -> list[float]:
    """Comma-separated numbers; with ``top_inf``, ``inf`` (pure noise) is read too (its place is checked
    with the grid, by :func:`~ddim_ode.checks.check_decoding_grid`)."""
    vals = []
    for part in text.replace(" ", ",").split(","):
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise ValueError(
                f"bad {flag} value {part!r}: give comma-separated numbers, e.g. {flag} 14.6,3,0.5,0"
            ) from None
        if not (math.isfinite(v) or (top_inf and v == math.inf)):
            also = " (or inf, pure noise, as the first value on a flow model)" if top_inf else ""
            raise ValueError(f"bad {flag} value {part!r}: values must be finite{also}")
        vals.append(v)
    if not vals:
        raise ValueError(f"{flag} is empty: give comma-separated numbers")
    return vals


@dataclass(frozen=True)
class Plan:
    """How to integrate: solver, its options and the decoding σ grid (float64, decreasing to 0)."""

    solver: str
    options: dict[str, Any]
    grid: str  # a grid name, or "sigmas" / "timesteps" when the grid was given explicitly
    sigmas: np.ndarray
    steps: int  # the n of a named grid (which may hold a step more, see ddim_ode.grids), else len(sigmas) - 1

    @property
    def reversible(self) -> bool:
        return get_solver(self.solver, **self.options).reversible

    @property
    def named(self) -> bool:
        """Whether the grid is one of :data:`~ddim_ode.grids.GRIDS` (else given as ``--sigmas``/``--timesteps``)."""
        return self.grid in GRIDS

    def grid_arguments(self) -> dict[str, Any]:
        """The grid as keyword arguments of the sharded runs (:mod:`ddim_ode.distributed`): ``n`` and
        ``grid`` for a named grid, ``sigmas`` for an explicit one."""
        return {"n": self.steps, "grid": self.grid} if self.named else {"sigmas": self.sigmas}

    def arrays(self, kind: Literal["noise", "encoded"]) -> dict[str, np.ndarray]:
        """This plan as the decoding settings a latents file records (:func:`~ddim_ode.cli_io.decoding_arrays`)."""
        return decoding_arrays(
            kind=kind,
            solver=self.solver,
            solver_options=self.options,
            grid=self.grid,
            steps=self.steps,
            sigmas=self.sigmas,
        )


def _sigmas_argument(text: str) -> Tensor:
    """``--sigmas``: comma-separated numbers, or a JSON file (a tuned grid from ``ddim-ode tune-grid``
    or a plain list of σ)."""
    if text.strip().lower().endswith(".json"):
        from .tuning import read_sigmas  # the tuned-grid reader, loaded when a file is named

        if not Path(text).is_file():
            raise FileNotFoundError(f"--sigmas: no such file: {text}")
        return read_sigmas(text)
    return as_float64(_numbers(text, "--sigmas", top_inf=True), "--sigmas")


def make_plan(
    schedule: Schedule,
    *,
    solver: str | None = None,
    solver_option: Sequence[str] | None = None,
    steps: int | None = None,
    grid: str | None = None,
    sigmas: str | None = None,
    timesteps: str | None = None,
    stored: LatentFile | None = None,
    encoding: bool = False,
) -> Plan:
    """The plan a command asks for; what it leaves open comes from ``stored``, else the defaults.

    Args:
        schedule: the model's schedule (the grids are built on it).
        solver, solver_option, steps, grid, sigmas, timesteps: ``--solver``, the
            ``--solver-option KEY=VALUE`` pairs, ``-n``, ``--grid``, and ``--sigmas`` /
            ``--timesteps`` as given (comma-separated text); ``None`` when not given.
        stored: the record of a latent file: its solver, options and grid are the defaults.
        encoding: the plan is also run towards noise (``encode``, ``roundtrip``), which not every
            solver can do.

    Defaults without a record: ``euler``, no options, the ``uniform`` grid with n = 20.
    """
    name = solver or (stored.solver if stored is not None and stored.solver else "euler")
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; available: {', '.join(sorted(SOLVERS))}")
    if solver_option:
        options = solver_options(name, solver_option)
    elif stored is not None and stored.solver == name:
        options = dict(stored.solver_options)
    else:
        options = {}
    slv = get_solver(name, **options)  # the solver checks its option values now, before any work
    if encoding and not slv.can_encode:
        raise ValueError(f"solver {name!r} cannot encode: {slv.why_no_encode}")
    if sigmas is not None:
        sig, kind = check_decoding_grid(_sigmas_argument(sigmas), schedule, "--sigmas").numpy(), "sigmas"
        n = len(sig) - 1
    elif timesteps is not None:
        ts = np.asarray(_numbers(timesteps, "--timesteps"), dtype=np.float64)
        lo, hi = float(schedule.t_min), float(schedule.t_max)
        if ts.min() < lo or ts.max() > hi:
            raise ValueError(f"--timesteps must lie in the model's range [{lo:g}, {hi:g}]")
        if not (np.diff(ts) < 0).all():
            raise ValueError("--timesteps must be strictly decreasing (decoding order, noise to data)")
        sig = torch.cat([sigmas_from_timesteps(schedule, ts), torch.zeros(1, dtype=torch.float64)])
        sig, kind = check_decoding_grid(sig, schedule, "--timesteps").numpy(), "timesteps"
        n = len(sig) - 1
    elif steps is None and grid is None and stored is not None and stored.sigmas is not None:
        sig, kind = stored.sigmas, stored.grid or "sigmas"
        n = stored.steps or len(sig) - 1
    else:
        kind = grid or (stored.grid if stored is not None and stored.grid in GRIDS else "uniform")
        n = steps or (stored.steps if stored is not None and stored.steps else 20)
        sig = make_grid(schedule, kind, n).numpy()
    return Plan(name, options, kind, np.asarray(sig, dtype=np.float64), n)


def mismatches(stored: LatentFile, plan: Plan, model: ModelRecord) -> list[str]:
    """How ``plan`` and ``model`` differ from the settings recorded with the latents.

    A model, prediction or schedule is compared only when the file records it (earlier versions
    did not); class labels and guidance are compared always (a file without them was made
    without them).
    """
    out = []
    if stored.solver is not None and plan.solver != stored.solver:
        out.append(f"solver {stored.solver} -> {plan.solver}")
    elif stored.solver is not None and plan.options != stored.solver_options:
        out.append(f"solver options {stored.solver_options} -> {plan.options}")
    if stored.steps is not None and plan.steps != stored.steps:
        out.append(f"n {stored.steps} -> {plan.steps}")
    elif stored.sigmas is not None and not np.allclose(plan.sigmas, stored.sigmas, rtol=1e-9, atol=1e-12):
        out.append(f"grid {stored.grid} -> {plan.grid} (other sigma values)")
    if stored.model is not None and model.model != stored.model:
        out.append(f"model {stored.model} -> {model.model}")
    if stored.prediction is not None and model.prediction != stored.prediction:
        out.append(f"prediction {stored.prediction} -> {model.prediction}")
    if stored.model is not None and model.schedule != stored.schedule:
        out.append(f"schedule {stored.schedule or 'of the model'} -> {model.schedule or 'of the model'}")
    if not _same_labels(stored.labels, model.labels):
        out.append(f"class labels {_labels_text(stored.labels)} -> {_labels_text(model.labels)}")
    if stored.guidance != model.guidance:
        out.append(f"guidance {_guidance_text(stored.guidance)} -> {_guidance_text(model.guidance)}")
    return out


def _same_labels(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def _labels_text(labels: np.ndarray | None) -> str:
    if labels is None:
        return "none"
    head = ",".join(str(int(v)) for v in labels[:8])
    return f"[{head}{',...' if len(labels) > 8 else ''}]"


def _guidance_text(w: float | None) -> str:
    return "none" if w is None else f"{w:g}"


def describe_record(stored: LatentFile) -> str:
    """The recorded settings of a latent file, as ``solver=…, n=…, grid=…``."""
    parts = [f"solver={stored.solver}"] if stored.solver else []
    parts += [f"n={stored.steps}"] if stored.steps is not None else []
    parts += [f"grid={stored.grid}"] if stored.grid else []
    parts += [f"class labels {_labels_text(stored.labels)}"] if stored.labels is not None else []
    parts += [f"guidance={stored.guidance:g}"] if stored.guidance is not None else []
    return ", ".join(parts) or "unrecorded settings"

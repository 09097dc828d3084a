"""Adaptive step-size solvers through torchdiffeq (Chen et al. 2018), with NFE counted by the field.

Integration variable (``variable``):

* ``"log"``: s = log σ, dx̄/ds = σ ε(x̄, σ). At small σ the Jacobian of dx̄/dσ grows like 1/σ, so
  steps in σ must shrink like σ, while in log σ it stays O(1). σ = 0 is log σ = −∞ and cannot be
  reached, so a piece of the grid with an endpoint at σ = 0 (the last step of a decoding grid, the
  first of an encoding grid: σ_min ↔ 0 on the default grids) is integrated adaptively in σ itself,
  where the field is finite and smooth for data with positive variance; the same tolerances apply.
* ``"sigma"``: the whole range in σ. At large σ the solution is nearly linear in σ (x̄ ≈ D + σ ε
  with D, ε almost constant) but exponential in log σ, which favours σ for low-order methods.

Measured (docs/solvers.md, DDPM linear schedule, 2-D ring and 64-D mixtures): to reach an RMS error
of 1e-3 when decoding, dopri5 needs 92–98 NFE in log σ against 193–247 in σ and dopri8 145–171
against 209–287, while adaptive_heun needs 429–453 in log σ against 225–238 in σ. The default
``variable`` is therefore ``"log"`` for ``dopri5`` and ``dopri8`` and ``"sigma"`` for ``bosh3``
and ``adaptive_heun``.

Each piece is integrated with torchdiffeq's ``step_t`` at its end, so that the end value comes from
a step and not from torchdiffeq's 4th-order dense-output interpolant, and with a first trial step
of a tenth of the piece (torchdiffeq's initial-step heuristic can probe σ far outside the schedule
in log σ). Values at interior grid points (``trajectory=True``, callbacks) are interpolated; the
grid does not constrain the step sizes. Step acceptance is decided on the host (one device sync per
step, inherent to adaptive stepping), and torchdiffeq casts time to the state's dtype inside its
steps, so a float32 state sees float32 log σ (relative error ~1e-7 in σ).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor
from torchdiffeq import odeint

from ..field import ProbabilityFlowODE
from .base import Solver, register

__all__ = ["TorchDiffEqSolver", "Dopri5", "Bosh3", "Dopri8", "AdaptiveHeun", "ADAPTIVE_METHODS"]

Variable = Literal["log", "sigma"]

#: torchdiffeq adaptive method → (order, NFE per accepted step, default integration variable)
ADAPTIVE_METHODS: dict[str, tuple[int, int, str]] = {
    "dopri5": (5, 6, "log"),
    "bosh3": (3, 3, "sigma"),
    "dopri8": (8, 13, "log"),
    "adaptive_heun": (2, 1, "sigma"),
}

_CHEN_2018 = "via torchdiffeq (Chen, Rubanova, Bettencourt & Duvenaud 2018, Neural Ordinary Differential Equations)"


class TorchDiffEqSolver(Solver):
    """An adaptive torchdiffeq method on the probability-flow ODE, in log σ or σ (default per method).

    Args:
        method: a torchdiffeq adaptive method: ``dopri5``, ``bosh3``, ``dopri8`` or ``adaptive_heun``
            (torchdiffeq's ``fehlberg2`` is left out: its global error was ~400× its tolerance
            on the mixture benchmark, its error estimate being that of the embedded first-order
            solution).
        rtol, atol: torchdiffeq's relative and absolute tolerances on x̄ (default 1e-4 each).
        variable: ``"log"`` (log σ, with a σ-piece next to σ = 0) or ``"sigma"``; default: the
            measured better choice for the method (see the module docstring).
        options: extra torchdiffeq options (e.g. ``{"max_num_steps": 10_000, "first_step": 0.1}``).

    The number of network evaluations (accepted and rejected steps, plus torchdiffeq's 2 for the
    initial step-size choice per integrated segment) is in ``Solution.nfe``.
    """

    adaptive = True
    method: ClassVar[str] = ""
    paper = _CHEN_2018

    def __init__(
        self,
        method: str | None = None,
        rtol: float = 1e-4,
        atol: float = 1e-4,
        variable: Variable | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        method = method or self.method
        if method not in ADAPTIVE_METHODS:
            raise ValueError(f"unknown adaptive method {method!r}; allowed: {', '.join(ADAPTIVE_METHODS)}")
        for label, tol in (("rtol", rtol), ("atol", atol)):
            if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0 or not math.isfinite(tol):
                raise ValueError(f"{label} must be a positive finite number, got {tol!r}")
        if variable is None:
            variable = ADAPTIVE_METHODS[method][2]  # type: ignore[assignment]
        if variable not in ("log", "sigma"):
            raise ValueError(f"variable must be 'log' or 'sigma', got {variable!r}")
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options must be a dict of torchdiffeq options, got {type(options).__name__}")
        self.method_name = method
        self.rtol, self.atol = float(rtol), float(atol)
        self.variable: Variable = variable
        self.options = dict(options or {})
        self.order, steps_nfe, _ = ADAPTIVE_METHODS[method]
        self.nfe_per_step = float(steps_nfe)

    def _segments(self, sig: list[float]) -> list[tuple[Variable, int, int]]:
        """(variable, first index, last index) of the pieces the grid is integrated in."""
        last = len(sig) - 1
        if self.variable == "sigma":
            return [("sigma", 0, last)]
        lo, hi = 0, last
        head: list[tuple[Variable, int, int]] = []
        tail: list[tuple[Variable, int, int]] = []
        if sig[0] == 0.0:
            head, lo = [("sigma", 0, 1)], 1
        if sig[-1] == 0.0 and hi > lo:
            tail, hi = [("sigma", last - 1, last)], last - 1
        middle: list[tuple[Variable, int, int]] = [("log", lo, hi)] if hi > lo else []
        return head + middle + tail

    def solve(
        self,
        field: ProbabilityFlowODE,
        xbar: Tensor,
        sigmas: Tensor,
        callback: Callable[[int, float, Tensor], None] | None = None,
        state: Any = None,
    ) -> tuple[Tensor, Any]:
        sig = [float(s) for s in sigmas.cpu()]
        for variable, i0, i1 in self._segments(sig):
            points = sig[i0 : i1 + 1]
            if variable == "log":
                times = [math.log(s) for s in points]

                def rhs(s: Tensor, y: Tensor) -> Tensor:
                    sigma = math.exp(float(s.detach()))
                    return sigma * field(y, sigma)

            else:
                times = points

                def rhs(s: Tensor, y: Tensor) -> Tensor:
                    return field(y, max(float(s.detach()), 0.0))

            t = torch.tensor(times, dtype=torch.float64, device=xbar.device)
            # Land a step exactly on the segment's end: torchdiffeq otherwise steps past it and returns a
            # (4th-order) interpolant there, far less accurate than dopri8's or dopri5's steps. Start with a
            # tenth of the segment: torchdiffeq's initial-step heuristic scales with |y|/|f|, which in log σ
            # near σ_min (f = σ ε small, |x̄| large) can probe σ ~ 1e29, far outside the schedule.
            span = abs(times[-1] - times[0])
            options = {"step_t": t[-1:], "first_step": span / 10, **self.options}
            ys = odeint(rhs, xbar, t, rtol=self.rtol, atol=self.atol, method=self.method_name, options=options)
            if callback is not None:
                for j in range(1, len(points)):
                    callback(i0 + j, points[j], ys[j])
            xbar = ys[-1]
        return xbar, state

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(method={self.method_name!r}, rtol={self.rtol:g}, atol={self.atol:g}, "
            f"variable={self.variable!r})"
        )


class _Named(TorchDiffEqSolver):
    def __init__(
        self,
        rtol: float = 1e-4,
        atol: float = 1e-4,
        variable: Variable | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(self.method, rtol=rtol, atol=atol, variable=variable, options=options)


@register("dopri5")
class Dopri5(_Named):
    """Dormand–Prince 5(4) (torchdiffeq ``dopri5``), adaptive. Order 5, 6 NFE per accepted step (FSAL)."""

    name = method = "dopri5"
    paper = "Dormand & Prince 1980, A family of embedded Runge-Kutta formulae (J. Comp. Appl. Math.); " + _CHEN_2018


@register("bosh3")
class Bosh3(_Named):
    """Bogacki–Shampine 3(2) (torchdiffeq ``bosh3``), adaptive. Order 3, 3 NFE per accepted step (FSAL)."""

    name = method = "bosh3"
    paper = "Bogacki & Shampine 1989, A 3(2) pair of Runge-Kutta formulas (Appl. Math. Lett.); " + _CHEN_2018


@register("dopri8")
class Dopri8(_Named):
    """Dormand–Prince 8(7) (torchdiffeq ``dopri8``), adaptive. Order 8, 13 NFE per accepted step."""

    name = method = "dopri8"
    paper = "Prince & Dormand 1981, High order embedded Runge-Kutta formulae (J. Comp. Appl. Math.); " + _CHEN_2018


@register("adaptive_heun")
class AdaptiveHeun(_Named):
    """Heun–Euler 2(1) (torchdiffeq ``adaptive_heun``), adaptive. Order 2, 1 NFE per accepted step.

    torchdiffeq reuses the ε of the Euler predictor as the next step's first stage, hence 1 NFE/step.
    """

    name = method = "adaptive_heun"
    paper = "Heun-Euler embedded pair, e.g. Hairer, Norsett & Wanner, Solving ODEs I, Sec. II.4; " + _CHEN_2018

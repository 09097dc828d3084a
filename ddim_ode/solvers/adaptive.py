"""Adaptive step-size solvers: embedded Runge–Kutta pairs, natively or through torchdiffeq (Chen et al. 2018).

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

Engines (``engine``). ``"native"`` (the default) is this module's embedded Runge–Kutta integrator,
:func:`integrate_embedded`: the pairs of :mod:`.pairs` stepped by the stage loop of
:mod:`.tableau` (each stage one fused linear combination,
:func:`~ddim_ode.solvers.base.lincomb`), t(σ) tabulated for all stages of a step in one call, time
a float64 host value, and the step sizes chosen by a
:class:`~ddim_ode.solvers.controller.StepSizeController`, torchdiffeq's controller. Steps land
exactly on each piece's end; interior grid points (trajectories, callbacks) come from a dense
output: Shampine's quartic with a midpoint estimate for ``dopri5`` and ``dopri8`` (as torchdiffeq),
cubic Hermite for ``bosh3``, quadratic for Heun–Euler, whose last stage is not at the new
solution. ``adaptive_heun`` reuses the ε at the Euler predictor as the next step's first stage,
as torchdiffeq's does (1 NFE per step). ``"torchdiffeq"`` calls ``torchdiffeq.odeint``; both
engines use the same pairs and the same controller, so they take the same steps (outputs equal
to rounding in float64). torchdiffeq is imported only on that path and by :meth:`solve_adjoint`.

With torchdiffeq each piece is integrated with its ``step_t`` at its end, so that the end value comes from
a step and not from torchdiffeq's 4th-order dense-output interpolant, and with a first trial step
of a tenth of the piece (torchdiffeq's initial-step heuristic can probe σ far outside the schedule
in log σ). Values at interior grid points (``trajectory=True``, callbacks) are interpolated; the
grid does not constrain the step sizes. Step acceptance is decided on the host (one device sync per
step, inherent to adaptive stepping), and torchdiffeq casts time to the state's dtype inside its
steps, so a float32 state sees float32 log σ (relative error ~1e-7 in σ).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from ..field import ProbabilityFlowODE
from ..ranges import check_choice
from .base import Solver, lincomb, register
from .controller import StepSizeController
from .pairs import EMBEDDED
from .tableau import ButcherTableau, embedded_error, rk_stages

__all__ = [
    "AdaptiveSolver",
    "Dopri5",
    "Bosh3",
    "Dopri8",
    "AdaptiveHeun",
    "ADAPTIVE_METHODS",
    "integrate_embedded",
]

Variable = Literal["log", "sigma"]
Engine = Literal["native", "torchdiffeq"]

_DEFAULT_VARIABLE: dict[str, Variable] = {"dopri5": "log", "bosh3": "sigma", "dopri8": "log", "adaptive_heun": "sigma"}

#: adaptive method (torchdiffeq's name) → (order, NFE per accepted step, default integration variable)
ADAPTIVE_METHODS: dict[str, tuple[int, int, Variable]] = {
    name: (pair.order, pair.nfe_per_step, _DEFAULT_VARIABLE[name]) for name, pair in EMBEDDED.items()
}


def _quartic_basis() -> np.ndarray:
    """Rows: coefficients of θ⁰…θ⁴ of the quartic with p(0), h p'(0), p(1), h p'(1), p(½) as weights."""
    conditions = np.array(
        [
            [1.0, 0.0, 0.0, 0.0, 0.0],  # p(0)
            [0.0, 1.0, 0.0, 0.0, 0.0],  # p'(0)
            [1.0, 1.0, 1.0, 1.0, 1.0],  # p(1)
            [0.0, 1.0, 2.0, 3.0, 4.0],  # p'(1)
            [1.0, 0.5, 0.25, 0.125, 0.0625],  # p(1/2)
        ]
    )
    return np.linalg.inv(conditions)


_QUARTIC = _quartic_basis()


def _dense_output(
    tableau: ButcherTableau, y0: Tensor, y1: Tensor, ks: list[Tensor], ws: list[float], h: float
) -> Callable[[float], Tensor]:
    """x̄ at fraction θ ∈ (0, 1) of an accepted step, from its stages (slopes are w_i k_i).

    Quartic through y0, y0', y(½), y1, y1' when the tableau has midpoint weights and its last stage
    is at y1; cubic Hermite with the end slope otherwise; quadratic (y0, y0', y1) without one. The
    slopes' σ factors enter the coefficients, so each value is one :func:`lincomb`.
    """
    exact_end = tableau.last_is_solution
    k0, w0 = ks[0], ws[0]
    if tableau.mid is not None and exact_end:
        y_mid = lincomb([(1.0, y0)] + [(h * m * w, k) for m, w, k in zip(tableau.mid, ws, ks) if m != 0.0])

        def quartic(theta: float) -> Tensor:
            c = np.array([1.0, theta, theta**2, theta**3, theta**4]) @ _QUARTIC  # weights of the 5 conditions
            return lincomb(
                [(float(c[0]), y0), (float(c[2]), y1), (float(c[4]), y_mid)]
                + [(float(c[1]) * h * w0, k0), (float(c[3]) * h * ws[-1], ks[-1])]
            )

        return quartic

    def hermite(theta: float) -> Tensor:
        t2, t3 = theta * theta, theta * theta * theta
        if not exact_end:  # y0 + θ h f0 + θ² (y1 − y0 − h f0)
            return lincomb([(1.0 - t2, y0), (t2, y1), ((theta - t2) * h * w0, k0)])
        h00, h10, h01, h11 = 2 * t3 - 3 * t2 + 1, t3 - 2 * t2 + theta, -2 * t3 + 3 * t2, t3 - t2
        return lincomb([(h00, y0), (h01, y1), (h10 * h * w0, k0), (h11 * h * ws[-1], ks[-1])])

    return hermite


def _report_interior(
    output: Callable[[int, Tensor], None],
    times: list[float],
    next_out: int,
    tau: float,
    h: float,
    interpolant: Callable[[], Callable[[float], Tensor]] | None,
    y_new: Tensor,
) -> int:
    """Report the interior grid points inside the accepted step (τ, τ + h]; returns the next one to report.

    Each gets ``interpolant()``'s value at its fraction of the step (built only for steps that
    contain grid points), or the step's end value when ``interpolant`` is ``None``.
    """
    direction = 1.0 if h > 0 else -1.0
    stop = next_out
    while stop < len(times) - 1 and (tau + h - times[stop]) * direction > 0:
        stop += 1
    dense = interpolant() if interpolant is not None and stop > next_out else None
    for j in range(next_out, stop):
        output(j, dense((times[j] - tau) / h) if dense is not None else y_new)
    return stop


def integrate_embedded(
    field: ProbabilityFlowODE,
    xbar: Tensor,
    times: list[float],
    tableau: ButcherTableau,
    variable: Variable,
    controller: StepSizeController,
    first_step: float,
    output: Callable[[int, Tensor], None] | None = None,
    dense_output: bool = True,
) -> Tensor:
    """Integrate x̄ adaptively in τ (τ = log σ or σ) from ``times[0]`` to ``times[-1]`` with an embedded pair.

    Each step runs the pair's stages (:func:`~ddim_ode.solvers.tableau.rk_stages`, slopes σ ε in
    log σ), and ``controller`` accepts or rejects it and sizes the next one (first trial step
    ``first_step``). ``output(j, x̄(times[j]))`` is called for j = 1, …, len(times) − 1 (interior
    points interpolated, the last one the final step's value; with ``dense_output=False`` an
    interior point gets the value at the end of the step that contains it, for callers that only
    test finiteness). Time stays a float64 host value; each step reads one error norm on the host.
    Raises as :meth:`StepSizeController.check` (step budget, step-size underflow).
    """
    log = variable == "log"

    def sig_of(t: float) -> float:
        return math.exp(t) if log else max(t, 0.0)

    def slope(sigma: float) -> float:  # dx̄/dτ = slope · ε
        return sigma if log else 1.0

    tau, tau_end = times[0], times[-1]
    span = tau_end - tau
    direction = 1.0 if span > 0 else -1.0
    dt = direction * abs(first_step)
    y = xbar
    eps0, w0 = field(y, sig_of(tau)), slope(sig_of(tau))
    next_out, steps = 1, 0
    while (tau_end - tau) * direction > 0:
        controller.check(steps, tau, dt, span, sig_of(tau))
        h, last = controller.clip(tau, dt, tau_end)
        s_stage = [sig_of(tau_end if (last and c == 1.0) else tau + c * h) for c in tableau.c]
        field.prepare(torch.tensor(s_stage[1:], dtype=torch.float64))
        ws = [w0] + [slope(s) for s in s_stage[1:]]
        y_new, ks = rk_stages(field, y, tableau, h, s_stage, ws, eps0)
        steps += 1
        accept, dt = controller.adapt(h, controller.error_ratio(embedded_error(tableau, h, ks, ws), y, y_new))
        if not accept:
            continue
        if output is not None:
            interpolant = functools.partial(_dense_output, tableau, y, y_new, ks, ws, h) if dense_output else None
            next_out = _report_interior(output, times, next_out, tau, h, interpolant, y_new)
        tau = tau_end if last else tau + h
        y = y_new
        if tableau.fsal:
            eps0, w0 = ks[-1], ws[-1]
        else:
            eps0 = field(y, sig_of(tau)) if (tau_end - tau) * direction > 0 else eps0
            w0 = slope(sig_of(tau))
    if output is not None:
        for j in range(next_out, len(times)):
            output(j, y)
    return y


_CHEN_2018 = "via torchdiffeq (Chen, Rubanova, Bettencourt & Duvenaud 2018, Neural Ordinary Differential Equations)"


class AdaptiveSolver(Solver):
    """An adaptive embedded Runge–Kutta pair on the probability-flow ODE, in log σ or σ (default per method).

    Args:
        method: ``dopri5``, ``bosh3``, ``dopri8`` or ``adaptive_heun`` (torchdiffeq's ``fehlberg2``
            is left out: its global error was ~400× its tolerance on the mixture benchmark, its
            error estimate being that of the embedded first-order solution).
        rtol, atol: relative and absolute tolerances on x̄ (default 1e-4 each).
        variable: ``"log"`` (log σ, with a σ-piece next to σ = 0) or ``"sigma"``; default: the
            measured better choice for the method (see the module docstring).
        engine: ``"native"`` (default; this module's integrator) or ``"torchdiffeq"``
            (``torchdiffeq.odeint``).
        options: ``first_step`` (trial step in the integration variable, default a tenth of the
            piece) and ``max_num_steps``; with torchdiffeq, any of its options.

    The number of network evaluations (accepted and rejected steps) is in ``Solution.nfe``.
    """

    adaptive = True
    adjoint_method = "continuous"
    method: ClassVar[str] = ""
    paper = _CHEN_2018

    def __init__(
        self,
        method: str | None = None,
        rtol: float = 1e-4,
        atol: float = 1e-4,
        variable: Variable | None = None,
        options: dict[str, Any] | None = None,
        engine: Engine | None = None,
    ) -> None:
        method = method or self.method
        if method not in EMBEDDED:
            raise ValueError(f"unknown adaptive method {method!r}; allowed: {', '.join(EMBEDDED)}")
        for label, tol in (("rtol", rtol), ("atol", atol)):
            if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0 or not math.isfinite(tol):
                raise ValueError(f"{label} must be a positive finite number, got {tol!r}")
        if variable is None:
            variable = _DEFAULT_VARIABLE[method]
        check_choice("variable", variable, ("log", "sigma"))
        engine = check_choice("engine", "native" if engine is None else engine, ("native", "torchdiffeq"))
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options must be a dict of solver options, got {type(options).__name__}")
        if engine == "native" and options:
            unknown = sorted(set(options) - {"first_step", "max_num_steps"})
            if unknown:
                raise ValueError(
                    f"unknown options {unknown} for the native engine; allowed: first_step, max_num_steps "
                    "(engine='torchdiffeq' takes torchdiffeq's options)"
                )
        self.method_name = method
        self.pair = EMBEDDED[method]
        self.engine: Engine = engine
        self.rtol, self.atol = float(rtol), float(atol)
        self.variable: Variable = variable
        self.options = dict(options or {})
        self.controller = StepSizeController(
            self.rtol, self.atol, self.pair.order, int(self.options.get("max_num_steps", 2**31 - 1))
        )
        self.order = self.pair.order
        self.nfe_per_step = float(self.pair.nfe_per_step)

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

    def _rhs(self, field: ProbabilityFlowODE, variable: Variable) -> Callable[[Tensor, Tensor], Tensor]:
        """The right-hand side in the integration variable, as torchdiffeq calls it: ``f(s, x̄)``."""
        if variable == "log":  # dx̄/d log σ = σ ε

            def rhs_log(s: Tensor, y: Tensor) -> Tensor:
                sigma = math.exp(float(s.detach()))
                return sigma * field(y, sigma)

            return rhs_log

        def rhs_sigma(s: Tensor, y: Tensor) -> Tensor:
            return field(y, max(float(s.detach()), 0.0))

        return rhs_sigma

    def _times(self, points: list[float], variable: Variable) -> list[float]:
        """The grid points of a piece in its integration variable (float64 host values)."""
        return [math.log(s) for s in points] if variable == "log" else points

    def _odeint(
        self,
        field: ProbabilityFlowODE,
        xbar: Tensor,
        points: list[float],
        variable: Variable,
        adjoint_params: list[Tensor] | None = None,
    ) -> Tensor:
        """x̄ at ``points`` by ``torchdiffeq.odeint``, or only at the ends by ``odeint_adjoint`` with ``adjoint_params``.

        ``odeint`` lands a step exactly on the piece's end (``step_t``): torchdiffeq otherwise steps
        past it and returns its (4th-order) interpolant there, far less accurate than dopri8's or
        dopri5's steps; and it starts with a tenth of the piece, as the native engine: torchdiffeq's
        initial-step heuristic scales with |y|/|f|, which in log σ near σ_min (f = σ ε small, |x̄|
        large) can probe σ ~ 1e29, far outside the schedule. ``odeint_adjoint`` gets the options as given.
        """
        import torchdiffeq  # only on this path: `import ddim_ode` does not load it

        t = torch.tensor(self._times(points, variable), dtype=torch.float64, device=xbar.device)
        common: dict[str, Any] = dict(rtol=self.rtol, atol=self.atol, method=self.method_name)
        if adjoint_params is not None:
            return torchdiffeq.odeint_adjoint(
                self._rhs(field, variable),
                xbar,
                t,
                options=dict(self.options),
                adjoint_params=tuple(adjoint_params),
                **common,
            )
        first = abs(float(t[-1]) - float(t[0])) / 10
        options = {"step_t": t[-1:], "first_step": first, **self.options}
        return torchdiffeq.odeint(self._rhs(field, variable), xbar, t, options=options, **common)

    def solve(
        self,
        field: ProbabilityFlowODE,
        xbar: Tensor,
        sigmas: Tensor,
        callback: Callable[[int, float, Tensor], None] | None = None,
        state: Any = None,
        *,
        dense: bool = True,
    ) -> tuple[Tensor, Any]:
        sig = [float(s) for s in sigmas.cpu()]
        for variable, i0, i1 in self._segments(sig):
            points = sig[i0 : i1 + 1]
            report: Callable[[int, Tensor], None] | None = None
            if callback is not None:
                report = lambda j, y, i0=i0, points=points: callback(i0 + j, points[j], y)  # noqa: E731
            if self.engine == "torchdiffeq":
                ys = self._odeint(field, xbar, points, variable)
                if report is not None:
                    for j in range(1, len(points)):
                        report(j, ys[j])
                xbar = ys[-1]
                continue
            times = self._times(points, variable)
            first_step = float(self.options.get("first_step", abs(times[-1] - times[0]) / 10))
            xbar = integrate_embedded(
                field, xbar, times, self.pair, variable, self.controller, first_step, report, dense_output=dense
            )
        return xbar, state

    def solve_adjoint(self, field: ProbabilityFlowODE, xbar: Tensor, sigmas: Tensor, params: list[Tensor]) -> Tensor:
        """torchdiffeq's ``odeint_adjoint`` over the same pieces, variables, method and tolerances as
        :meth:`solve` (its forward pass is torchdiffeq's method of the same name, whichever engine)."""
        sig = [float(s) for s in sigmas.cpu()]
        for variable, i0, i1 in self._segments(sig):
            xbar = self._odeint(field, xbar, [sig[i0], sig[i1]], variable, adjoint_params=params)[-1]
        return xbar

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(method={self.method_name!r}, rtol={self.rtol:g}, atol={self.atol:g}, "
            f"variable={self.variable!r}, engine={self.engine!r})"
        )


class _Named(AdaptiveSolver):
    def __init__(
        self,
        rtol: float = 1e-4,
        atol: float = 1e-4,
        variable: Variable | None = None,
        options: dict[str, Any] | None = None,
        engine: Engine | None = None,
    ) -> None:
        super().__init__(self.method, rtol=rtol, atol=atol, variable=variable, options=options, engine=engine)


@register("dopri5")
class Dopri5(_Named):
    """Dormand–Prince 5(4), adaptive (native; or torchdiffeq ``dopri5``). Order 5, 6 NFE per step (FSAL)."""

    name = method = "dopri5"
    paper = "Dormand & Prince 1980, A family of embedded Runge-Kutta formulae (J. Comp. Appl. Math.); " + _CHEN_2018


@register("bosh3")
class Bosh3(_Named):
    """Bogacki–Shampine 3(2), adaptive (native; or torchdiffeq ``bosh3``). Order 3, 3 NFE per step (FSAL)."""

    name = method = "bosh3"
    paper = "Bogacki & Shampine 1989, A 3(2) pair of Runge-Kutta formulas (Appl. Math. Lett.); " + _CHEN_2018


@register("dopri8")
class Dopri8(_Named):
    """Prince–Dormand 8(7), adaptive (native; or torchdiffeq ``dopri8``). Order 8, 13 NFE per step (FSAL)."""

    name = method = "dopri8"
    paper = "Prince & Dormand 1981, High order embedded Runge-Kutta formulae (J. Comp. Appl. Math.); " + _CHEN_2018


@register("adaptive_heun")
class AdaptiveHeun(_Named):
    """Heun–Euler 2(1), adaptive (native; or torchdiffeq ``adaptive_heun``). Order 2, 1 NFE per step.

    Each step reuses the ε at the previous step's Euler predictor (σ', x̄ + h ε) as its first stage
    instead of evaluating at the accepted solution, as torchdiffeq's ``adaptive_heun``; hence 1 NFE
    per step.
    """

    name = method = "adaptive_heun"
    paper = "Heun-Euler embedded pair, e.g. Hairer, Norsett & Wanner, Solving ODEs I, Sec. II.4; " + _CHEN_2018

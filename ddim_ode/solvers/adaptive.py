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

Engines (``engine``). ``"native"`` (the default; ``dopri8``'s coefficients are read from torchdiffeq) is
this module's embedded Runge–Kutta integrator: stages are single fused linear combinations
(:func:`~ddim_ode.solvers.base.lincomb`), t(σ) is tabulated for all stages of a step in one call,
time is a float64 host value, and the controller is the usual one (RMS norm of the error over the
whole state relative to ``atol + rtol·max(|x̄|, |x̄'|)``, accept at ≤ 1, step factor
``clip(0.9·r^(−1/order), 0.2, 10)``, no growth right after a rejection), as torchdiffeq's. Steps
land exactly on each piece's end; interior grid points (trajectories, callbacks) come from a dense
output: Shampine's quartic with a midpoint estimate for ``dopri5`` and ``dopri8`` (as torchdiffeq),
cubic Hermite for ``bosh3``, quadratic for Heun–Euler, whose last stage is not at the new
solution. ``adaptive_heun`` reuses the ε at the Euler predictor as the next step's first stage,
as torchdiffeq's does (1 NFE per step). ``"torchdiffeq"`` calls ``torchdiffeq.odeint``; both
engines use the same pairs and the same controller, so they take the same steps (outputs equal
to rounding in float64).

With torchdiffeq each piece is integrated with its ``step_t`` at its end, so that the end value comes from
a step and not from torchdiffeq's 4th-order dense-output interpolant, and with a first trial step
of a tenth of the piece (torchdiffeq's initial-step heuristic can probe σ far outside the schedule
in log σ). Values at interior grid points (``trajectory=True``, callbacks) are interpolated; the
grid does not constrain the step sizes. Step acceptance is decided on the host (one device sync per
step, inherent to adaptive stepping), and torchdiffeq casts time to the state's dtype inside its
steps, so a float32 state sees float32 log σ (relative error ~1e-7 in σ).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from ..field import ProbabilityFlowODE
from .base import Solver, lincomb, register

__all__ = [
    "AdaptiveSolver",
    "Dopri5",
    "Bosh3",
    "Dopri8",
    "AdaptiveHeun",
    "ADAPTIVE_METHODS",
    "EmbeddedTableau",
    "EMBEDDED",
]

Variable = Literal["log", "sigma"]
Engine = Literal["native", "torchdiffeq"]

#: torchdiffeq adaptive method → (order, NFE per accepted step, default integration variable)
ADAPTIVE_METHODS: dict[str, tuple[int, int, str]] = {
    "dopri5": (5, 6, "log"),
    "bosh3": (3, 3, "sigma"),
    "dopri8": (8, 13, "log"),
    "adaptive_heun": (2, 1, "sigma"),
}


@dataclass(frozen=True)
class EmbeddedTableau:
    """An explicit embedded Runge–Kutta pair: nodes ``c``, rows ``a``, solution weights ``b`` and
    error weights ``e = b − b̂`` (b̂ the embedded lower-order solution); ``order`` is the order of
    ``b`` (the controller's exponent is 1/order); ``fsal``: the ε of the last stage (at c = 1) is
    the next step's first stage. That is "first same as last" proper when the last stage is
    evaluated at the new solution (a[-1] = b, :attr:`last_is_solution`), as for Dormand–Prince and
    Bogacki–Shampine; for the Heun–Euler pair it reuses the ε at the Euler predictor (torchdiffeq's
    ``adaptive_heun``), 1 NFE per step. ``mid``: weights of an estimate of the solution at the
    step's midpoint, y(½) ≈ y + h Σ mid_i k_i, accurate to the method's order; with it the dense
    output is the quartic through y, y', y(½), y_new and y_new' (Shampine 1986), else cubic
    Hermite."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    e: tuple[float, ...]
    order: int
    fsal: bool
    mid: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        s = len(self.c)
        if not (len(self.a) == len(self.b) == len(self.e) == s) or any(len(r) != i for i, r in enumerate(self.a)):
            raise ValueError("embedded tableau sizes must agree (a strictly lower triangular)")
        for i, row in enumerate(self.a):
            if abs(sum(row) - self.c[i]) > 1e-12:
                raise ValueError(f"row sum of a[{i}] must equal c[{i}]")
        if abs(sum(self.b) - 1.0) > 1e-12 or abs(sum(self.e)) > 1e-12:
            raise ValueError("weights b must sum to 1 and error weights e to 0")
        if self.fsal and self.c[-1] != 1.0:
            raise ValueError("an FSAL tableau's last stage must be at c = 1")

    @property
    def last_is_solution(self) -> bool:
        """Whether the last stage is evaluated at the new solution (its ε is then the slope there)."""
        return self.c[-1] == 1.0 and tuple(self.a[-1]) == tuple(self.b[:-1]) and self.b[-1] == 0.0


def _pair(c, a, b, b_hat, order, fsal):  # type: ignore[no-untyped-def]
    return EmbeddedTableau(
        tuple(float(v) for v in c),
        tuple(tuple(float(v) for v in row) for row in a),
        tuple(float(v) for v in b),
        tuple(float(x) - float(y) for x, y in zip(b, b_hat)),
        order,
        fsal,
    )


F = Fraction
#: the native embedded pairs (exact rational coefficients, converted once to float64)
EMBEDDED: dict[str, EmbeddedTableau] = {
    # Dormand & Prince 1980, RK5(4)7M: 5th-order solution, FSAL; the 4th-order embedded solution
    # is Shampine's (1986), as in torchdiffeq (Dormand and Prince's own is 5179/57600, 0, 7571/16695,
    # 393/640, −92097/339200, 187/2100, 1/40: on the mixtures it took 5–13 % more NFE for the same error)
    "dopri5": _pair(
        c=(0, F(1, 5), F(3, 10), F(4, 5), F(8, 9), 1, 1),
        a=(
            (),
            (F(1, 5),),
            (F(3, 40), F(9, 40)),
            (F(44, 45), F(-56, 15), F(32, 9)),
            (F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)),
            (F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)),
            (F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84)),
        ),
        b=(F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), 0),
        b_hat=(F(1951, 21600), 0, F(22642, 50085), F(451, 720), F(-12231, 42400), F(649, 6300), F(1, 60)),
        order=5,
        fsal=True,
    ),
    # Bogacki & Shampine 1989: 3rd-order solution, 2nd-order embedded, FSAL
    "bosh3": _pair(
        c=(0, F(1, 2), F(3, 4), 1),
        a=((), (F(1, 2),), (0, F(3, 4)), (F(2, 9), F(1, 3), F(4, 9))),
        b=(F(2, 9), F(1, 3), F(4, 9), 0),
        b_hat=(F(7, 24), F(1, 4), F(1, 3), F(1, 8)),
        order=3,
        fsal=True,
    ),
    # Heun (trapezoidal, 2nd order) with Euler embedded; the next step starts from the ε at the
    # Euler predictor (as torchdiffeq's adaptive_heun): 1 NFE per step
    "adaptive_heun": _pair(c=(0, 1), a=((), (1,)), b=(F(1, 2), F(1, 2)), b_hat=(1, 0), order=2, fsal=True),
}


def _dopri8() -> EmbeddedTableau | None:
    """Prince & Dormand's 8(7) pair with the coefficients torchdiffeq ships (13 stages + FSAL), if present.

    Its 13×13 irrational-looking rationals are taken from the installed torchdiffeq rather than
    retyped; ``None`` (dopri8 then runs on torchdiffeq only) if that module is not there.
    """
    try:
        from torchdiffeq._impl.dopri8 import _DOPRI8_TABLEAU as tab
    except ImportError:  # pragma: no cover - depends on the torchdiffeq version
        return None
    try:
        from torchdiffeq._impl.dopri8 import _C_mid as c_mid

        mid: tuple[float, ...] | None = tuple(float(v) for v in c_mid)
    except ImportError:  # pragma: no cover - depends on the torchdiffeq version
        mid = None
    c = [0.0] + [float(v) for v in tab.alpha]
    a = [()] + [tuple(float(v) for v in row) for row in tab.beta]
    b = [float(v) for v in tab.c_sol]
    e = [float(v) for v in tab.c_error]
    try:
        return EmbeddedTableau(tuple(c), tuple(a), tuple(b), tuple(e), order=8, fsal=True, mid=mid)
    except ValueError:  # pragma: no cover - an unexpected layout: keep torchdiffeq
        return None


_DOP8 = _dopri8()
if _DOP8 is not None:
    EMBEDDED["dopri8"] = _DOP8


def _dopri5_mid() -> tuple[float, ...] | None:
    """Shampine's midpoint weights for Dormand–Prince 5(4) (its 4th-order dense output), from torchdiffeq."""
    try:
        from torchdiffeq._impl.dopri5 import DPS_C_MID
    except ImportError:  # pragma: no cover - depends on the torchdiffeq version
        return None
    return tuple(float(v) for v in DPS_C_MID)


EMBEDDED["dopri5"] = dataclasses.replace(EMBEDDED["dopri5"], mid=_dopri5_mid())


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

_SAFETY, _IFACTOR, _DFACTOR = 0.9, 10.0, 0.2


def _rms_ratio(err: Tensor, y0: Tensor, y1: Tensor, rtol: float, atol: float) -> float:
    """RMS over all elements of err / (atol + rtol·max(|y0|, |y1|)), read on the host (one sync)."""
    r = torch.maximum(y0.detach().abs(), y1.detach().abs()).mul_(rtol).add_(atol).reciprocal_().mul_(err.detach())
    return float(torch.linalg.vector_norm(r)) / math.sqrt(max(r.numel(), 1))


def _dense_output(
    tableau: EmbeddedTableau, y0: Tensor, y1: Tensor, ks: list[Tensor], ws: list[float], h: float
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


def integrate_embedded(
    field: ProbabilityFlowODE,
    xbar: Tensor,
    times: list[float],
    tableau: EmbeddedTableau,
    variable: Variable,
    rtol: float,
    atol: float,
    first_step: float,
    max_num_steps: int = 2**31 - 1,
    output: Callable[[int, Tensor], None] | None = None,
    dense_output: bool = True,
) -> Tensor:
    """Integrate x̄ adaptively in τ (τ = log σ or σ) from ``times[0]`` to ``times[-1]`` with an embedded pair.

    ``output(j, x̄(times[j]))`` is called for j = 1, …, len(times) − 1 (interior points interpolated,
    the last one the final step's value; with ``dense_output=False`` an interior point gets the value
    at the end of the step that contains it, for callers that only test finiteness). Time stays a
    float64 host value; each step reads one error norm on the host (accept/reject). Raises
    ``RuntimeError`` after ``max_num_steps`` steps and ``FloatingPointError`` when the step size
    underflows (a NaN/Inf state or a singular field).
    """
    log = variable == "log"
    tau, tau_end = times[0], times[-1]
    span = tau_end - tau
    direction = 1.0 if span > 0 else -1.0
    dt = direction * abs(first_step)
    stages = len(tableau.c)
    exact_fsal = tableau.last_is_solution
    prepare = getattr(field, "prepare", None)

    def sig_of(t: float) -> float:
        return math.exp(t) if log else max(t, 0.0)

    # k_j are raw ε; in log σ the slope is σ ε, so σ_j enters the coefficients (no extra pass)
    k0 = field(xbar, sig_of(tau))
    w0 = sig_of(tau) if log else 1.0
    next_out, steps = 1, 0
    y = xbar
    while (tau_end - tau) * direction > 0:
        if steps >= max_num_steps:
            raise RuntimeError(f"max_num_steps={max_num_steps} reached at sigma={sig_of(tau):.6g}")
        if abs(dt) < 1e-14 * max(abs(tau), abs(span), 1.0):
            raise FloatingPointError(
                f"adaptive step size underflow at sigma={sig_of(tau):.6g}: the state or the field is not finite"
            )
        last = (tau + dt - tau_end) * direction >= 0
        h = tau_end - tau if last else dt
        t_stage = [tau_end if (last and c == 1.0) else tau + c * h for c in tableau.c]
        s_stage = [sig_of(t) for t in t_stage]
        if prepare is not None:
            prepare(torch.tensor(s_stage[1:], dtype=torch.float64))
        ks, ws = [k0], [w0]
        for i in range(1, stages):
            y_i = lincomb([(1.0, y)] + [(h * a * w, k) for a, w, k in zip(tableau.a[i], ws, ks)])
            if exact_fsal and i == stages - 1:
                y_new = y_i
            ks.append(field(y_i, s_stage[i]))
            ws.append(s_stage[i] if log else 1.0)
        if not exact_fsal:
            y_new = lincomb([(1.0, y)] + [(h * b * w, k) for b, w, k in zip(tableau.b, ws, ks)])
        err = lincomb([(h * e * w, k) for e, w, k in zip(tableau.e, ws, ks) if e != 0.0])
        steps += 1
        ratio = _rms_ratio(err, y, y_new, rtol, atol)
        accept = ratio <= 1.0  # False for NaN
        if accept:
            t_new = tau + h
            if output is not None and next_out < len(times) - 1 and (t_new - times[next_out]) * direction > 0:
                # only for steps with grid points inside
                dense = _dense_output(tableau, y, y_new, ks, ws, h) if dense_output else None
                while next_out < len(times) - 1 and (t_new - times[next_out]) * direction > 0:
                    output(next_out, dense((times[next_out] - tau) / h) if dense is not None else y_new)
                    next_out += 1
            tau = tau_end if last else tau + h
            y = y_new
            if tableau.fsal:
                k0, w0 = ks[-1], ws[-1]
            else:
                k0 = field(y, sig_of(tau)) if (tau_end - tau) * direction > 0 else k0
                w0 = sig_of(tau) if log else 1.0
        if ratio == 0.0:
            factor = _IFACTOR
        elif math.isfinite(ratio):
            factor = min(_IFACTOR, max(_SAFETY * ratio ** (-1.0 / tableau.order), 1.0 if accept else _DFACTOR))
        else:
            factor = _DFACTOR
        dt = h * factor
    if output is not None:
        while next_out < len(times):
            output(next_out, y)
            next_out += 1
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
        if method not in ADAPTIVE_METHODS:
            raise ValueError(f"unknown adaptive method {method!r}; allowed: {', '.join(ADAPTIVE_METHODS)}")
        for label, tol in (("rtol", rtol), ("atol", atol)):
            if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0 or not math.isfinite(tol):
                raise ValueError(f"{label} must be a positive finite number, got {tol!r}")
        if variable is None:
            variable = ADAPTIVE_METHODS[method][2]  # type: ignore[assignment]
        if variable not in ("log", "sigma"):
            raise ValueError(f"variable must be 'log' or 'sigma', got {variable!r}")
        if engine is None:
            engine = "native" if method in EMBEDDED else "torchdiffeq"
        if engine not in ("native", "torchdiffeq"):
            raise ValueError(f"engine must be 'native' or 'torchdiffeq', got {engine!r}")
        if engine == "native" and method not in EMBEDDED:
            raise ValueError(
                f"{method!r} has no native engine (native: {', '.join(EMBEDDED)}); use engine='torchdiffeq'"
            )
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
        self.engine: Engine = engine
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

    def _times(self, points: list[float], variable: Variable, device: torch.device) -> Tensor:
        times = [math.log(s) for s in points] if variable == "log" else points
        return torch.tensor(times, dtype=torch.float64, device=device)

    def _torchdiffeq_options(self, times: Tensor) -> dict[str, Any]:
        # Land a step exactly on the segment's end: torchdiffeq otherwise steps past it and returns a
        # (4th-order) interpolant there, far less accurate than dopri8's or dopri5's steps. Start with a
        # tenth of the segment: torchdiffeq's initial-step heuristic scales with |y|/|f|, which in log σ
        # near σ_min (f = σ ε small, |x̄| large) can probe σ ~ 1e29, far outside the schedule.
        span = abs(float(times[-1]) - float(times[0]))
        return {"step_t": times[-1:], "first_step": span / 10, **self.options}

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
            if self.engine == "native":
                times = [math.log(s) for s in points] if variable == "log" else points
                out: Callable[[int, Tensor], None] | None = None
                if callback is not None:
                    out = lambda j, y, i0=i0, points=points: callback(i0 + j, points[j], y)  # noqa: E731
                xbar = integrate_embedded(
                    field,
                    xbar,
                    times,
                    EMBEDDED[self.method_name],
                    variable,
                    self.rtol,
                    self.atol,
                    float(self.options.get("first_step", abs(times[-1] - times[0]) / 10)),
                    int(self.options.get("max_num_steps", 2**31 - 1)),
                    out,
                    dense_output=dense,
                )
                continue
            from torchdiffeq import odeint  # imported on the torchdiffeq engine's path only

            t = self._times(points, variable, xbar.device)
            ys = odeint(
                self._rhs(field, variable),
                xbar,
                t,
                rtol=self.rtol,
                atol=self.atol,
                method=self.method_name,
                options=self._torchdiffeq_options(t),
            )
            if callback is not None:
                for j in range(1, len(points)):
                    callback(i0 + j, points[j], ys[j])
            xbar = ys[-1]
        return xbar, state

    def solve_adjoint(self, field: ProbabilityFlowODE, xbar: Tensor, sigmas: Tensor, params: list[Tensor]) -> Tensor:
        """torchdiffeq's ``odeint_adjoint`` over the same pieces, variables, method and tolerances as
        :meth:`solve` (its forward pass is torchdiffeq's method of the same name, whichever engine)."""
        from torchdiffeq import odeint_adjoint

        sig = [float(s) for s in sigmas.cpu()]
        for variable, i0, i1 in self._segments(sig):
            t = self._times([sig[i0], sig[i1]], variable, xbar.device)
            xbar = odeint_adjoint(
                self._rhs(field, variable),
                xbar,
                t,
                method=self.method_name,
                rtol=self.rtol,
                atol=self.atol,
                options=dict(self.options),
                adjoint_params=tuple(params),
            )[-1]
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
    """Dormand–Prince 8(7), adaptive (native with torchdiffeq's coefficients; or ``dopri8``). Order 8, 13 NFE/step."""

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

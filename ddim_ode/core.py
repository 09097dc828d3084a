"""The core of every integration: :func:`solve` along a σ grid in DDIM coordinates, and what it returns.

Everything above the solvers runs through here: the public driver (:mod:`ddim_ode.driver`),
the memory-free adjoints (:mod:`ddim_ode.adjoint`), the sharded sampler and the studies. The
module owns

* :class:`Solution`, the outcome of an integration;
* :func:`to_xbar` / :func:`from_xbar`, the map between the model's scale x_t = a(σ)·x̄ and DDIM
  coordinates (a = √ᾱ = 1/√(1 + σ²) on a variance-preserving path);
* :func:`tabulate`, which evaluates t(σ) once per solve at every point the solver will visit;
* :class:`Adjoint`, the strategy :func:`solve` uses to run the solver: :class:`DirectAdjoint`
  (plain autograd through the steps, the default) or one of :mod:`ddim_ode.adjoint`'s classes.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import torch
from torch import Tensor

from .field import ProbabilityFlowODE
from .schedules import Schedule
from .solvers import Solver, get_solver
from .solvers.reversible import ReversibleLatent

__all__ = [
    "Solution",
    "Adjoint",
    "DirectAdjoint",
    "solve",
    "solve_x",
    "step_from_noise",
    "tabulate",
    "to_xbar",
    "from_xbar",
]

Callback = Callable[[int, float, Tensor], None]


@dataclass
class Solution:
    """The outcome of an integration.

    Attributes:
        x: the final state in the model's scale, ``x = a(σ_end)·x̄`` (at σ = 0 this is x̄ = x0).
        xbar: the final state in DDIM coordinates.
        sigmas: the float64 σ grid actually integrated along (first value is the start).
        nfe: number of network evaluations made.
        trajectory: x̄ at every grid point (shape ``(len(sigmas), *x.shape)``), if requested.
        state: the solver's final state (e.g. the auxiliary state of a reversible solver).
        solver: the solver instance used.
    """

    x: Tensor
    xbar: Tensor
    sigmas: Tensor
    nfe: int
    trajectory: Tensor | None = None
    state: Any = None
    solver: Solver | None = dc_field(default=None, repr=False)


def _scale(sigma: float, schedule: Schedule | None) -> float:
    if schedule is None:
        return 1.0 / math.sqrt(1.0 + float(sigma) ** 2)
    return float(schedule.scale(float(sigma)))


def to_xbar(x: Tensor, sigma: float, schedule: Schedule | None = None) -> Tensor:
    """Model scale → DDIM coordinates: x̄ = x/a(σ) (default path VP: x̄ = x √(1 + σ²) = x/√ᾱ)."""
    return x / _scale(sigma, schedule)


def from_xbar(xbar: Tensor, sigma: float, schedule: Schedule | None = None) -> Tensor:
    """DDIM coordinates → model scale: x = a(σ)·x̄ (default path VP: x = x̄/√(1 + σ²))."""
    return xbar * _scale(sigma, schedule)


def tabulate(field: ProbabilityFlowODE, slv: Solver, sigmas: Tensor) -> None:
    """t(σ) at the grid points and the solver's stage points in one vectorised call, not one per evaluation."""
    extra = slv.stage_sigmas(sigmas.tolist())
    field.prepare(torch.cat([sigmas, torch.tensor(extra, dtype=torch.float64)]) if extra else sigmas)


def step_from_noise(field: ProbabilityFlowODE, x: Tensor, sigma_next: float) -> Tensor:
    """x̄ at ``sigma_next`` from pure noise ``x`` at σ = ∞ (a flow path's τ = 1, where x̄ is infinite).

    The exact limit of the DDIM (Euler) step from σ = ∞: x̄₁ = x̂0 + σ₁ ε̂ with (ε̂, x̂0) evaluated
    on the noise itself (one NFE; predictions ``x0``, ``v`` or ``flow``).
    """
    eps, x0 = field.evaluate_x(x, math.inf)
    return torch.add(x0, eps, alpha=float(sigma_next))


class Adjoint(ABC):
    """How :func:`solve` runs a solver and how gradients flow back through it.

    ``records_steps`` says whether the strategy can report every step to a callback (and so record
    a trajectory and locate the first non-finite step); one that cannot is checked at the end.
    """

    records_steps: bool = False

    def check(self, slv: Solver) -> None:  # noqa: B027 (optional hook; the default accepts every solver)
        """Refuse a solver this strategy cannot differentiate (default: every solver is fine)."""

    @abstractmethod
    def run(
        self,
        field: ProbabilityFlowODE,
        slv: Solver,
        xbar: Tensor,
        sigmas: Tensor,
        state: Any,
        callback: Callback | None,
        dense: bool,
    ) -> tuple[Tensor, Any]:
        """The end state and the solver's final state along ``sigmas`` (already tabulated)."""


class DirectAdjoint(Adjoint):
    """Plain autograd through every step: exact gradients of the discrete solver, memory O(n)."""

    records_steps = True

    def run(
        self,
        field: ProbabilityFlowODE,
        slv: Solver,
        xbar: Tensor,
        sigmas: Tensor,
        state: Any,
        callback: Callback | None,
        dense: bool,
    ) -> tuple[Tensor, Any]:
        return slv.solve(field, xbar, sigmas, callback, state, dense=dense)

    def __repr__(self) -> str:
        return "DirectAdjoint()"


def _step_recorder(traj: list[Tensor] | None, flags: list[Tensor] | None) -> Callback | None:
    """The per-step callback: append x̄ to ``traj`` and one sum (finite iff every element is) to ``flags``."""
    if traj is not None:

        def record(i: int, sigma: float, xb: Tensor) -> None:
            traj.append(xb)
            if flags is not None:
                flags.append(xb.detach().sum())

        return record
    if flags is None:
        return None
    if torch.is_grad_enabled():
        return lambda i, sigma, xb: flags.append(xb.detach().sum())
    return lambda i, sigma, xb: flags.append(xb.sum())


def _raise_first_nonfinite(flags: list[Tensor], sig: Tensor, slv: Solver) -> None:
    ok = torch.isfinite(torch.stack(flags)).cpu()
    if not bool(ok.all()):
        k = int((~ok).nonzero()[0])
        raise FloatingPointError(
            f"NaN/Inf appeared at step {k + 1} of {len(sig) - 1} "
            f"(sigma {float(sig[k]):.6g} -> {float(sig[k + 1]):.6g}) "
            f"with solver {slv.name!r}; try more steps, another solver or a float32/float64 state"
        )


def solve(
    field: ProbabilityFlowODE,
    xbar: Tensor,
    sigmas: Tensor,
    solver: str | Solver = "euler",
    *,
    solver_options: dict[str, Any] | None = None,
    trajectory: bool = False,
    check_finite: bool = True,
    state: Any = None,
    adjoint: Adjoint | None = None,
) -> Solution:
    """Integrate dx̄/dσ = field(x̄, σ) along the float64 grid ``sigmas`` (in DDIM coordinates).

    The one low-level entry under :func:`~ddim_ode.integrate`, :func:`~ddim_ode.decode` and
    :func:`~ddim_ode.encode`; it assumes validated inputs. ``adjoint`` chooses how gradients flow
    (default :class:`DirectAdjoint`, plain autograd; see :mod:`ddim_ode.adjoint` for memory-free
    ones). ``check_finite`` records, without a host–device sync per step, whether each step
    produced NaN/Inf and raises once at the end, naming the first bad step and σ (a strategy that
    does not record steps checks the end state).
    """
    slv = get_solver(solver, **(solver_options or {}))
    strategy = adjoint if adjoint is not None else DirectAdjoint()
    sig = sigmas.to(torch.float64).cpu()
    if not slv.can_encode and float(sig[-1]) > float(sig[0]):
        raise ValueError(f"solver {slv.name!r} cannot integrate towards larger sigma (encoding): {slv.why_no_encode}")
    if trajectory and not strategy.records_steps:
        raise ValueError(f"trajectory=True cannot be combined with {strategy!r} (it keeps no intermediate states)")
    strategy.check(slv)
    traj: list[Tensor] | None = [xbar] if trajectory else None
    flags: list[Tensor] | None = [] if check_finite and strategy.records_steps else None
    nfe0 = field.nfe
    tabulate(field, slv, sig)
    # only finiteness is read unless a trajectory is recorded: an adaptive solver may then pass the
    # value at the end of the step that contains a grid point instead of interpolating there
    out, final_state = strategy.run(field, slv, xbar, sig, state, _step_recorder(traj, flags), dense=trajectory)
    if flags:
        _raise_first_nonfinite(flags, sig, slv)
    elif check_finite and not strategy.records_steps and not bool(torch.isfinite(out).all()):
        raise FloatingPointError(
            f"NaN/Inf in the result of solver {slv.name!r} (sigma {float(sig[0]):.6g} -> {float(sig[-1]):.6g}); "
            "try more steps, another solver or a float64 state"
        )
    x_out = from_xbar(out, float(sig[-1]), field.schedule)
    if slv.reversible:  # the result carries the auxiliary state that makes the reverse pass exact
        x_out = ReversibleLatent.wrap(x_out, final_state)
    return Solution(
        x=x_out,
        xbar=out,
        sigmas=sig,
        nfe=field.nfe - nfe0,
        trajectory=torch.stack(traj) if traj is not None else None,
        state=final_state,
        solver=slv,
    )


def solve_x(field: ProbabilityFlowODE, x: Tensor, sig: Tensor, slv: Solver, state: Any = None, **kw: Any) -> Solution:
    """:func:`solve` from ``x`` (model scale at ``sig[0]``) along ``sig``; keywords go to :func:`solve`.

    An endpoint at σ = ∞ (pure noise on a flow path, where x̄ is infinite) is taken by the exact
    limit of the DDIM step: from σ = ∞ down to σ₁, x̄₁ = x̂0 + σ₁ ε̂ with (ε̂, x̂0) evaluated on the
    noise itself; from σ_n up to σ = ∞, the end is pure noise x = ε̂(x̄_n, σ_n). Either costs one NFE.
    """
    head, tail = math.isinf(float(sig[0])), math.isinf(float(sig[-1]))
    if not (head or tail):
        return solve(field, to_xbar(x, float(sig[0]), field.schedule), sig, slv, state=state, **kw)
    if slv.reversible:
        raise ValueError(
            f"solver {slv.name!r} inverts exactly only between finite noise levels; the grid reaches sigma = inf "
            "(pure noise): start it below the top (e.g. sigmas=grid[1:] or t_start < t_max)"
        )
    if head:
        nfe0 = field.nfe
        sol = solve(field, step_from_noise(field, x, float(sig[1])), sig[1:], slv, state=state, **kw)
        sol.sigmas, sol.nfe = sig, field.nfe - nfe0
        return sol
    sol = solve(field, to_xbar(x, float(sig[0]), field.schedule), sig[:-1], slv, state=state, **kw)
    noise = field(sol.xbar, float(sig[-2]))
    return Solution(
        x=noise,
        xbar=torch.full_like(noise, math.inf),
        sigmas=sig,
        nfe=sol.nfe + 1,
        trajectory=sol.trajectory,
        state=sol.state,
        solver=slv,
    )

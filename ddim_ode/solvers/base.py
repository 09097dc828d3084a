"""The solver interface and the registry that looks solvers up by name.

A solver is a pure step ``step(field, xbar, sigma, sigma_next, state) -> (xbar_next, state)``:
all history lives in ``state`` (created by :meth:`Solver.init` from the grid actually used), never
in hidden attributes. Steps are signed (``h = sigma_next − sigma`` is negative when decoding and
positive when encoding), so one code path serves both directions. Solvers that do not fit the
fixed-grid loop (adaptive ones) override :meth:`Solver.solve`.

Conventions shared by every solver of this package:

* σ values are Python floats (float64) taken from the grid; tensors keep the caller's dtype.
* A step with an endpoint at σ = 0 (the last step of a decoding grid, the first of an encoding
  grid) is where the λ = −log σ parametrisation ends (λ = ∞). Unless a solver says otherwise it
  takes a first-order (DDIM) step there; see each solver's docstring.
* ``order`` is the *global* order of convergence of the configured instance, as measured by
  ``tests/test_solvers.py`` (warm-up steps of lower order can lower it below the order of the
  steady-state step; docstrings say when).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from ..field import ProbabilityFlowODE

__all__ = [
    "Solver",
    "SolverInfo",
    "Evaluation",
    "register",
    "get_solver",
    "list_solvers",
    "SOLVERS",
    "touches_zero",
    "lincomb",
]


class Solver:
    """Base class of all solvers.

    Attributes describe the method: ``name`` (registry key), ``order`` (global order of
    convergence of this instance), ``nfe_per_step`` (network evaluations per step, away from
    warm-up and final-step special cases), ``paper`` (source), ``can_encode`` (whether it may
    integrate towards larger σ), ``adaptive`` (step sizes chosen by an error controller),
    ``reversible`` (encode → decode is exact up to rounding when the final state is passed on),
    ``stochastic`` (draws random noise: a sampler of an SDE, not an ODE solver), ``why_no_encode``
    (the reason, when ``can_encode`` is false) and ``adjoint_method`` (how gradients are computed
    memory-free: ``"discrete"``, by re-running :meth:`step` backwards through the grid, or
    ``"continuous"``, by :meth:`solve_adjoint`). ``order``, ``nfe_per_step``, ``can_encode`` and
    ``stochastic`` may depend on constructor options and are then set per instance.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    adaptive: ClassVar[bool] = False
    reversible: ClassVar[bool] = False
    order: int = 0
    nfe_per_step: float = 1.0
    can_encode: bool = True
    stochastic: bool = False
    why_no_encode: str = "it is not defined in that direction"
    adjoint_method: ClassVar[Literal["discrete", "continuous"]] = "discrete"

    def init(self, field: ProbabilityFlowODE, xbar: Tensor, sigmas: Tensor) -> Any:
        """The initial state for integrating along ``sigmas`` (default: ``None``)."""
        return None

    def step(
        self, field: ProbabilityFlowODE, xbar: Tensor, sigma: float, sigma_next: float, state: Any
    ) -> tuple[Tensor, Any]:
        """One step from ``sigma`` to ``sigma_next``; returns the new x̄ and state."""
        raise NotImplementedError

    def stage_sigmas(self, sigmas: list[float]) -> list[float]:
        """The off-grid σ at which the steps along ``sigmas`` will evaluate the field (default: none).

        The driver tabulates t(σ) at these points together with the grid, in one vectorised
        schedule call; the values must be computed exactly as :meth:`step` computes them.
        """
        return []

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
        """Integrate along the float64 grid ``sigmas``; ``callback(i, sigma_i, xbar_i)`` after each step.

        ``state`` overrides :meth:`init` (used to resume, or to pass an auxiliary state).
        ``dense=False`` tells solvers that choose their own steps that the callback only inspects
        the values (e.g. for finiteness), so they may pass the state at the end of the step that
        contains grid point i instead of interpolating at σ_i.
        """
        sig = [float(s) for s in sigmas.cpu()]  # time values stay on the host: no device syncs
        if state is None:
            state = self.init(field, xbar, sigmas)
        for i in range(len(sig) - 1):
            xbar, state = self.step(field, xbar, sig[i], sig[i + 1], state)
            if callback is not None:
                callback(i + 1, sig[i + 1], xbar)
        return xbar, state

    def solve_adjoint(self, field: ProbabilityFlowODE, xbar: Tensor, sigmas: Tensor, params: list[Tensor]) -> Tensor:
        """The end state along ``sigmas`` with gradients by the continuous adjoint (``adjoint_method ==
        "continuous"`` only); the discrete adjoint needs nothing beyond :meth:`step`."""
        raise NotImplementedError(f"solver {self.name!r} has no continuous adjoint; its adjoint is discrete")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@dataclass(frozen=True)
class Evaluation:
    """One network evaluation kept in a multistep solver's history.

    ``eps`` is ε(x̄_eval, σ) and ``x0`` the denoiser D = x̄_eval − σ ε at the point ``x̄_eval``
    where it was evaluated (for predictor–corrector methods that is the predicted point).
    """

    sigma: float
    eps: Tensor
    x0: Tensor

    @property
    def lam(self) -> float:
        """λ = −log σ (``inf`` at σ = 0)."""
        return -math.log(self.sigma) if self.sigma > 0 else math.inf


def evaluate(field: ProbabilityFlowODE, xbar: Tensor, sigma: float) -> Evaluation:
    """ε and D at (x̄, σ): one NFE."""
    eps = field(xbar, sigma)
    return Evaluation(sigma, eps, torch.add(xbar, eps, alpha=-sigma))


def lincomb(terms: list[tuple[float, Tensor]]) -> Tensor:
    """Σ c_j T_j with one new tensor: a scaled (or fused ``T₀ + c₁T₁``) first result, then in place.

    One pass over the state per term, and a single allocation whatever the number of terms (what
    costs at large batch). Terms with a zero coefficient after the first are dropped; a first
    coefficient of 1 is not multiplied. Only the fresh result is modified in place, never an input,
    so autograd is unaffected. Coefficients are host floats: nothing syncs with the device.
    """
    c0, first = terms[0]
    out = None if c0 == 1.0 else first * c0
    for c, t in terms[1:]:
        if c != 0.0:
            if out is None:
                out = torch.add(first, t, alpha=c)
            else:
                out.add_(t, alpha=c)
    return first if out is None else out


def touches_zero(sigma: float, sigma_next: float) -> bool:
    """Whether a step has an endpoint at σ = 0 (where λ = −log σ is infinite)."""
    return sigma == 0.0 or sigma_next == 0.0


@dataclass(frozen=True)
class SolverInfo:
    """What :func:`list_solvers` reports about one registered solver (with default options)."""

    name: str
    order: int
    nfe_per_step: float
    can_encode: bool
    adaptive: bool
    paper: str
    summary: str
    reversible: bool = False
    stochastic: bool = False


SOLVERS: dict[str, Callable[..., Solver]] = {}


def register(name: str) -> Callable[[Callable[..., Solver]], Callable[..., Solver]]:
    """Class/factory decorator adding a solver to the registry under ``name``."""

    def deco(factory: Callable[..., Solver]) -> Callable[..., Solver]:
        if name in SOLVERS:
            raise ValueError(f"solver {name!r} is already registered")
        SOLVERS[name] = factory
        return factory

    return deco


def get_solver(solver: str | Solver, **options: Any) -> Solver:
    """The solver named ``solver`` (built with ``options``), or ``solver`` itself if an instance."""
    if isinstance(solver, Solver):
        if options:
            raise ValueError("solver options can only be given together with a solver name")
        return solver
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; available: {', '.join(sorted(SOLVERS))}")
    try:
        return SOLVERS[solver](**options)
    except TypeError as err:
        raise ValueError(f"bad options {options} for solver {solver!r}: {err}") from None


def list_solvers() -> list[SolverInfo]:
    """Every registered solver with its order, NFE per step and source paper (default options)."""
    out = []
    for name, factory in sorted(SOLVERS.items()):
        s = factory()
        doc = (type(s).__doc__ or "").strip().splitlines()
        out.append(
            SolverInfo(
                name,
                s.order,
                s.nfe_per_step,
                s.can_encode,
                s.adaptive,
                s.paper,
                doc[0] if doc else "",
                s.reversible,
                s.stochastic,
            )
        )
    return out

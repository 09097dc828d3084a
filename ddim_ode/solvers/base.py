"""The solver interface and the registry that looks solvers up by name.

A solver is a pure step ``step(field, xbar, sigma, sigma_next, state) -> (xbar_next, state)``:
all history lives in ``state`` (created by :meth:`Solver.init` from the grid actually used), never
in hidden attributes. Steps are signed (``h = sigma_next − sigma`` is negative when decoding and
positive when encoding), so one code path serves both directions. Solvers that do not fit the
fixed-grid loop (adaptive ones) override :meth:`Solver.solve`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from ..field import ProbabilityFlowODE

__all__ = ["Solver", "SolverInfo", "register", "get_solver", "solvers", "SOLVERS"]


class Solver:
    """Base class of all solvers.

    Class attributes describe the method: ``name`` (registry key), ``order`` (global order of
    convergence), ``nfe_per_step`` (network evaluations per step), ``paper`` (source),
    ``can_encode`` (whether it may integrate towards larger σ).
    """

    name: ClassVar[str] = ""
    order: ClassVar[int] = 0
    nfe_per_step: ClassVar[float] = 1.0
    paper: ClassVar[str] = ""
    can_encode: ClassVar[bool] = True
    adaptive: ClassVar[bool] = False

    def init(self, field: ProbabilityFlowODE, xbar: Tensor, sigmas: Tensor) -> Any:
        """The initial state for integrating along ``sigmas`` (default: ``None``)."""
        return None

    def step(
        self, field: ProbabilityFlowODE, xbar: Tensor, sigma: float, sigma_next: float, state: Any
    ) -> tuple[Tensor, Any]:
        """One step from ``sigma`` to ``sigma_next``; returns the new x̄ and state."""
        raise NotImplementedError

    def solve(
        self,
        field: ProbabilityFlowODE,
        xbar: Tensor,
        sigmas: Tensor,
        callback: Callable[[int, float, Tensor], None] | None = None,
        state: Any = None,
    ) -> tuple[Tensor, Any]:
        """Integrate along the float64 grid ``sigmas``; ``callback(i, sigma_i, xbar_i)`` after each step.

        ``state`` overrides :meth:`init` (used to resume, or to pass an auxiliary state).
        """
        sig = [float(s) for s in sigmas.cpu()]  # time values stay on the host: no device syncs
        if state is None:
            state = self.init(field, xbar, sigmas)
        for i in range(len(sig) - 1):
            xbar, state = self.step(field, xbar, sig[i], sig[i + 1], state)
            if callback is not None:
                callback(i + 1, sig[i + 1], xbar)
        return xbar, state

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@dataclass(frozen=True)
class SolverInfo:
    """What :func:`solvers` reports about one registered solver."""

    name: str
    order: int
    nfe_per_step: float
    can_encode: bool
    adaptive: bool
    paper: str
    summary: str


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


def solvers() -> list[SolverInfo]:
    """Every registered solver with its order, NFE per step and source paper."""
    out = []
    for name, factory in sorted(SOLVERS.items()):
        s = factory()
        doc = (type(s).__doc__ or "").strip().splitlines()
        out.append(
            SolverInfo(name, s.order, s.nfe_per_step, s.can_encode, s.adaptive, s.paper, doc[0] if doc else "")
        )
    return out

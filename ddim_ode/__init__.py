"""ddim_ode: deterministic diffusion sampling and inversion as the probability-flow ODE.

In the coordinates x̄ = x/√ᾱ and σ = √((1 − ᾱ)/ᾱ) a DDPM ε-network defines
dx̄/dσ = ε_θ(x̄/√(1 + σ²), t(σ)); DDIM is its Euler discretisation. Every Gaussian path
x_t = a x0 + s ε (variance-preserving, variance-exploding/EDM, rectified flow) gives the same ODE
in x̄ = x_t/a, σ = s/a. :func:`integrate`,
:func:`decode` (noise → data) and :func:`encode` (data → noise) integrate it with any
registered solver (:func:`list_solvers`).
"""

from typing import Any

from . import adjoint, grids, likelihood, solvers
from .adjoint import ContinuousAdjoint, DiscreteAdjoint
from .core import Solution, from_xbar, solve, to_xbar
from .field import PREDICTIONS, NullConditionModel, ProbabilityFlowODE, SigmaModel
from .grids import GRIDS, make_grid
from .integrate import decode, encode, integrate
from .likelihood import LikelihoodResult, log_likelihood
from .models import ResolvedModel, resolve_model
from .precond import EDMPrecond
from .schedules import ContinuousSchedule, DiscreteSchedule, FlowSchedule, Schedule, VESchedule
from .solvers import ReversibleLatent, Solver, SolverInfo, get_solver, list_solvers, register

__version__ = "0.1.0"

#: submodules imported on first use (they pull in scipy), e.g. ``ddim_ode.analytic``
_LAZY_SUBMODULES = ("analytic",)


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "adjoint",
    "analytic",
    "likelihood",
    "solvers",
    "LikelihoodResult",
    "log_likelihood",
    "DiscreteAdjoint",
    "ContinuousAdjoint",
    "grids",
    "ContinuousSchedule",
    "DiscreteSchedule",
    "Schedule",
    "VESchedule",
    "FlowSchedule",
    "EDMPrecond",
    "NullConditionModel",
    "ProbabilityFlowODE",
    "SigmaModel",
    "PREDICTIONS",
    "GRIDS",
    "make_grid",
    "Solution",
    "integrate",
    "decode",
    "encode",
    "solve",
    "to_xbar",
    "from_xbar",
    "ReversibleLatent",
    "Solver",
    "SolverInfo",
    "get_solver",
    "register",
    "list_solvers",
    "resolve_model",
    "ResolvedModel",
    "__version__",
]

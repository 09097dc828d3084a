"""ddim_ode: deterministic diffusion sampling and inversion as the probability-flow ODE.

In the coordinates x̄ = x/√ᾱ and σ = √((1 − ᾱ)/ᾱ) a DDPM ε-network defines
dx̄/dσ = ε_θ(x̄/√(1 + σ²), t(σ)); DDIM is its Euler discretisation. :func:`integrate`,
:func:`decode` (noise → data) and :func:`encode` (data → noise) integrate it with any
registered solver (:func:`list_solvers`).
"""

from . import adjoint, analytic, grids, likelihood, solvers
from .adjoint import ContinuousAdjoint, DiscreteAdjoint
from .core import Solution, from_xbar, solve, to_xbar
from .field import PREDICTIONS, ProbabilityFlowODE, SigmaModel
from .grids import GRIDS, make_grid
from .integrate import decode, encode, integrate
from .likelihood import LikelihoodResult, log_likelihood
from .models import ResolvedModel, resolve_model
from .schedules import ContinuousSchedule, DiscreteSchedule, Schedule
from .solvers import ReversibleLatent, Solver, SolverInfo, get_solver, list_solvers, register
from .tuning import TunedGrid, tune_grid

__version__ = "0.1.0"

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
    "tune_grid",
    "TunedGrid",
    "__version__",
]

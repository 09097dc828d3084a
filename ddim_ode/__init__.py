"""ddim_ode: deterministic diffusion sampling and inversion as the probability-flow ODE.

In the coordinates x̄ = x/√ᾱ and σ = √((1 − ᾱ)/ᾱ) a DDPM ε-network defines
dx̄/dσ = ε_θ(x̄/√(1 + σ²), t(σ)); DDIM is its Euler discretisation. Every Gaussian path
x_t = a x0 + s ε (variance-preserving, variance-exploding/EDM, rectified flow) gives the same ODE
in x̄ = x_t/a, σ = s/a. :func:`integrate`, :func:`decode` (noise → data) and :func:`encode`
(data → noise) integrate it with any registered solver (:func:`list_solvers`).

The names below are imported on first use (PEP 562), so ``import ddim_ode`` costs nothing and the
command line can set up its threads before PyTorch loads (:mod:`ddim_ode.threads`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes

__version__ = "0.1.0"

#: public name -> the submodule that defines it
_EXPORTS = {
    "DiscreteAdjoint": "adjoint",
    "ContinuousAdjoint": "adjoint",
    "Adjoint": "core",
    "Solution": "core",
    "from_xbar": "core",
    "solve": "core",
    "to_xbar": "core",
    "decode": "driver",
    "encode": "driver",
    "integrate": "driver",
    "PREDICTIONS": "field",
    "NullConditionModel": "field",
    "ProbabilityFlowODE": "field",
    "SigmaModel": "field",
    "GRIDS": "grids",
    "make_grid": "grids",
    "LikelihoodResult": "likelihood",
    "log_likelihood": "likelihood",
    "ResolvedModel": "models",
    "resolve_model": "models",
    "EDMPrecond": "precond",
    "ContinuousSchedule": "schedules",
    "DiscreteSchedule": "schedules",
    "FlowSchedule": "schedules",
    "Schedule": "schedules",
    "VESchedule": "schedules",
    "ReversibleLatent": "solvers",
    "Solver": "solvers",
    "SolverInfo": "solvers",
    "get_solver": "solvers",
    "list_solvers": "solvers",
    "register": "solvers",
    "TunedGrid": "tuning",
    "tune_grid": "tuning",
}
_SUBMODULES = ("adjoint", "analytic", "grids", "likelihood", "solvers")

if TYPE_CHECKING:
    from . import adjoint, analytic, grids, likelihood, solvers
    from .adjoint import ContinuousAdjoint, DiscreteAdjoint
    from .core import Adjoint, Solution, from_xbar, solve, to_xbar
    from .driver import decode, encode, integrate
    from .field import PREDICTIONS, NullConditionModel, ProbabilityFlowODE, SigmaModel
    from .grids import GRIDS, make_grid
    from .likelihood import LikelihoodResult, log_likelihood
    from .models import ResolvedModel, resolve_model
    from .precond import EDMPrecond
    from .schedules import ContinuousSchedule, DiscreteSchedule, FlowSchedule, Schedule, VESchedule
    from .solvers import ReversibleLatent, Solver, SolverInfo, get_solver, list_solvers, register
    from .tuning import TunedGrid, tune_grid

__all__ = [
    "adjoint",
    "analytic",
    "grids",
    "likelihood",
    "solvers",
    "DiscreteAdjoint",
    "ContinuousAdjoint",
    "Adjoint",
    "Solution",
    "from_xbar",
    "solve",
    "to_xbar",
    "decode",
    "encode",
    "integrate",
    "PREDICTIONS",
    "NullConditionModel",
    "ProbabilityFlowODE",
    "SigmaModel",
    "GRIDS",
    "make_grid",
    "LikelihoodResult",
    "log_likelihood",
    "ResolvedModel",
    "resolve_model",
    "EDMPrecond",
    "ContinuousSchedule",
    "DiscreteSchedule",
    "FlowSchedule",
    "Schedule",
    "VESchedule",
    "ReversibleLatent",
    "Solver",
    "SolverInfo",
    "get_solver",
    "list_solvers",
    "register",
    "TunedGrid",
    "tune_grid",
    "__version__",
]


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _EXPORTS, _SUBMODULES)

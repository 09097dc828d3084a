"""ddim_ode: deterministic diffusion sampling and inversion as the probability-flow ODE.

In the coordinates x̄ = x/√ᾱ and σ = √((1 − ᾱ)/ᾱ) a DDPM ε-network defines
dx̄/dσ = ε_θ(x̄/√(1 + σ²), t(σ)); DDIM is its Euler discretisation. :func:`integrate`,
:func:`decode` (noise → data) and :func:`encode` (data → noise) integrate it with any
registered solver (:func:`list_solvers`).

The names below are imported on first use (PEP 562), so ``import ddim_ode`` costs nothing and the
command line can set up its threads before PyTorch loads (:mod:`ddim_ode.threads`).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the submodule that defines it
_EXPORTS = {
    "decode_adjoint": "adjoint",
    "encode_adjoint": "adjoint",
    "integrate_adjoint": "adjoint",
    "solve_adjoint": "adjoint",
    "PREDICTIONS": "field",
    "ProbabilityFlowODE": "field",
    "SigmaModel": "field",
    "GRIDS": "grids",
    "make_grid": "grids",
    "Solution": "integrate",
    "decode": "integrate",
    "encode": "integrate",
    "from_xbar": "integrate",
    "integrate": "integrate",
    "solve": "integrate",
    "to_xbar": "integrate",
    "LikelihoodResult": "likelihood",
    "log_likelihood": "likelihood",
    "ResolvedModel": "models",
    "resolve_model": "models",
    "ContinuousSchedule": "schedules",
    "DiscreteSchedule": "schedules",
    "Schedule": "schedules",
    "ReversibleLatent": "solvers",
    "Solver": "solvers",
    "SolverInfo": "solvers",
    "get_solver": "solvers",
    "list_solvers": "solvers",
    "register": "solvers",
}
_SUBMODULES = ("adjoint", "analytic", "grids", "likelihood", "solvers")

if TYPE_CHECKING:
    from . import adjoint, analytic, grids, likelihood, solvers
    from .adjoint import decode_adjoint, encode_adjoint, integrate_adjoint, solve_adjoint
    from .field import PREDICTIONS, ProbabilityFlowODE, SigmaModel
    from .grids import GRIDS, make_grid
    from .integrate import Solution, decode, encode, from_xbar, integrate, solve, to_xbar
    from .likelihood import LikelihoodResult, log_likelihood
    from .models import ResolvedModel, resolve_model
    from .schedules import ContinuousSchedule, DiscreteSchedule, Schedule
    from .solvers import ReversibleLatent, Solver, SolverInfo, get_solver, list_solvers, register

__all__ = [
    "adjoint",
    "analytic",
    "likelihood",
    "solvers",
    "LikelihoodResult",
    "log_likelihood",
    "decode_adjoint",
    "encode_adjoint",
    "integrate_adjoint",
    "solve_adjoint",
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
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """The package module: binds ``integrate`` to the function, not to the submodule of that name."""

    def __setattr__(self, name: str, value: Any) -> None:
        # importing ddim_ode.integrate sets it as an attribute of the package once it has loaded
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

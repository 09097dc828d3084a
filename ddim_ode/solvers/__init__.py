"""Solvers of the probability-flow ODE, looked up by name through a registry.

Importing this package registers every solver; :func:`list_solvers` lists them with order, NFE per
step and source paper, :func:`get_solver` builds one by name with constructor options.
"""

from .adaptive import ADAPTIVE_METHODS, AdaptiveHeun, AdaptiveSolver, Bosh3, Dopri5, Dopri8
from .base import SOLVERS, Evaluation, Solver, SolverInfo, get_solver, list_solvers, register
from .exponential import (
    DPMSolver,
    DPMSolver1,
    DPMSolver2,
    DPMSolver3,
    DPMSolverPlusPlus,
    DPMSolverPlusPlus2M,
    DPMSolverPlusPlus3M,
    UniPC,
    UniPCState,
    dpm_solver_step,
)
from .multistep import PLMS, adams_bashforth_weights
from .reversible import BELM, BELMState, ReversibleHeun, ReversibleHeunState, ReversibleLatent, latent_state
from .rk import RK4, ButcherTableau, Euler, ExplicitRK, Heun, Midpoint, rk_step
from .stochastic import DDIM, DDPM, ancestral_sigmas

__all__ = [
    "SOLVERS",
    "Solver",
    "SolverInfo",
    "Evaluation",
    "get_solver",
    "register",
    "list_solvers",
    "ButcherTableau",
    "ExplicitRK",
    "Euler",
    "Heun",
    "Midpoint",
    "RK4",
    "rk_step",
    "DPMSolver",
    "DPMSolver1",
    "DPMSolver2",
    "DPMSolver3",
    "DPMSolverPlusPlus",
    "DPMSolverPlusPlus2M",
    "DPMSolverPlusPlus3M",
    "UniPC",
    "UniPCState",
    "dpm_solver_step",
    "PLMS",
    "adams_bashforth_weights",
    "AdaptiveSolver",
    "ADAPTIVE_METHODS",
    "Dopri5",
    "Bosh3",
    "Dopri8",
    "AdaptiveHeun",
    "BELM",
    "BELMState",
    "ReversibleHeun",
    "ReversibleHeunState",
    "ReversibleLatent",
    "latent_state",
    "DDIM",
    "DDPM",
    "ancestral_sigmas",
]

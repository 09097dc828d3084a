"""Solvers of the probability-flow ODE, looked up by name through a registry."""

from .base import SOLVERS, Solver, SolverInfo, get_solver, register, solvers
from .rk import ButcherTableau, Euler, ExplicitRK

__all__ = ["SOLVERS", "Solver", "SolverInfo", "get_solver", "register", "solvers", "ButcherTableau", "Euler", "ExplicitRK"]

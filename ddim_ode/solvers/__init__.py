"""Solvers of the probability-flow ODE, looked up by name through a registry.

Importing this package registers every solver; :func:`list_solvers` lists them with order, NFE per
step and source paper, :func:`get_solver` builds one by name with constructor options. The public
names are those of the modules: :mod:`.base` (the interface and the registry), :mod:`.tableau`
(Runge–Kutta tableaux and their stage loop), :mod:`.rk`, :mod:`.dpm_solver`, :mod:`.dpm_solver_pp`,
:mod:`.unipc` (exponential integrators, sharing :mod:`.exponential`), :mod:`.multistep`,
:mod:`.reversible`, :mod:`.stochastic` (fixed-grid solvers), :mod:`.pairs`, :mod:`.controller`
and :mod:`.adaptive` (adaptive solvers).
"""

from . import (
    adaptive,
    base,
    controller,
    dpm_solver,
    dpm_solver_pp,
    multistep,
    pairs,
    reversible,
    rk,
    stochastic,
    tableau,
    unipc,
)
from .adaptive import *  # noqa: F403
from .base import *  # noqa: F403
from .controller import *  # noqa: F403
from .dpm_solver import *  # noqa: F403
from .dpm_solver_pp import *  # noqa: F403
from .multistep import *  # noqa: F403
from .pairs import *  # noqa: F403
from .reversible import *  # noqa: F403
from .rk import *  # noqa: F403
from .stochastic import *  # noqa: F403
from .tableau import *  # noqa: F403
from .unipc import *  # noqa: F403

__all__ = [
    *base.__all__,
    *tableau.__all__,
    *rk.__all__,
    *dpm_solver.__all__,
    *dpm_solver_pp.__all__,
    *unipc.__all__,
    *multistep.__all__,
    *reversible.__all__,
    *stochastic.__all__,
    *pairs.__all__,
    *controller.__all__,
    *adaptive.__all__,
]

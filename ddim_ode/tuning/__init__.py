"""Time grids tuned to a model: :func:`tune_grid` and the :class:`TunedGrid` it returns.

The cost of sampling is NFE × network time; at 4–10 NFE the grid is what is left to choose. A grid
tuned to the model and solver at hand (Chen et al. 2024, "On the Trajectory Regularity of
ODE-based Diffusion Sampling" (GITS); Xue et al. 2024, "Accelerating Diffusion Sampling with
Optimized Time Steps"; Sabour, Fidler & Kreis 2024, "Align Your Steps") cuts the error at a
one-off cost of a few hundred to a few thousand network evaluations:

1. :mod:`.reference` — accurate solutions of seeded noises along a fine candidate grid;
2. :mod:`.search` — the solver's own step errors against them and a dynamic programme that picks
   the n steps of least total error;
3. :mod:`.refine` — Nelder–Mead on the interior points with the global error of full solves;
4. :mod:`.tune` — the entry point, which also checks the result on held-out noise against the
   standard grids and returns the best standard grid when tuning did not beat it;
5. :mod:`.result` — :class:`TunedGrid` and its JSON file (``--sigmas grid.json``).

Every Gaussian path is served: VP and VE schedules, and flow paths, whose pure noise at σ = ∞ is
a candidate of its own, left by the exact limit of the DDIM step as :func:`~ddim_ode.decode`
leaves it.
"""

from .result import TunedGrid, read_sigmas
from .tune import DEFAULT_GRIDS, grid_nfe, steps_for_nfe, tune_grid

__all__ = ["tune_grid", "TunedGrid", "read_sigmas", "grid_nfe", "steps_for_nfe", "DEFAULT_GRIDS"]

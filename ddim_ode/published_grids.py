"""Published time grids: the Align Your Steps σ tables for Stable Diffusion 1.5 and SDXL, as named grids.

Source: Sabour, Fidler & Kreis 2024, "Align Your Steps: Optimizing Sampling Schedules in Diffusion
Models" (ICML; arXiv:2404.14507), and its quick-start page
(research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html). The paper optimises 10-step
schedules per model and publishes them as timesteps of the model's discrete schedule:

* Stable Diffusion 1.5: 999, 850, 736, 645, 545, 455, 343, 233, 124, 24, 0
* SDXL:                 999, 845, 730, 587, 443, 310, 193, 116, 53, 13, 0

and as the noise levels of those timesteps, σ̄ = √((1 − ᾱ)/ᾱ) of Stable Diffusion's discrete VP
schedule (T = 1000, "scaled linear" β = linspace(√0.00085, √0.012, T)²), which is exactly the σ of
this package (:data:`AYS_LEVELS`, 10 decimals as distributed with the authors' reference sampler
nodes; ``tests/test_tuning.py`` checks them against σ̄ at the published timesteps).

Other step counts, as the authors prescribe: interpolate log σ linearly over the normalised step
index (:func:`loglinear_interp`), which maps the 11 levels of the table to ``n + 1`` levels.

As a decoding grid of this package (:func:`ays_grid`): the ``n + 1`` levels run from σ_max to
σ_min = σ̄(t = 0); a decoding grid ends at σ = 0, so the last level is replaced by 0 (as the
authors' sampler nodes do), which gives ``n`` steps whose last goes straight to clean data. At
n = 10 the grid is the published table with 0.0292 replaced by 0.

On another schedule or range the table is transferred by its shape in log σ: the levels' positions
u = (log σ − log σ_min)/(log σ_max − log σ_min) ∈ [0, 1] are kept and mapped onto the requested
[σ_lo, σ_hi]. On Stable Diffusion's own schedule (full range) this is the identity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .schedules import Schedule

__all__ = [
    "AYS_TIMESTEPS",
    "AYS_LEVELS",
    "PUBLISHED_GRIDS",
    "loglinear_interp",
    "published_levels",
    "ays_grid",
]

#: the published 10-step schedules as timesteps of Stable Diffusion's discrete schedule (T = 1000)
AYS_TIMESTEPS: dict[str, tuple[int, ...]] = {
    "ays-sd15": (999, 850, 736, 645, 545, 455, 343, 233, 124, 24, 0),
    "ays-sdxl": (999, 845, 730, 587, 443, 310, 193, 116, 53, 13, 0),
}

#: the published 10-step schedules as noise levels σ̄ (11 values, σ_max down to σ_min; no trailing 0)
AYS_LEVELS: dict[str, tuple[float, ...]] = {
    "ays-sd15": (
        14.6146412293,
        6.4745760956,
        3.8636745985,
        2.6946151520,
        1.8841921177,
        1.3943805092,
        0.9642583904,
        0.6523686016,
        0.3977456272,
        0.1515232662,
        0.0291671582,
    ),
    "ays-sdxl": (
        14.6146412293,
        6.3184485287,
        3.7681790315,
        2.1811480769,
        1.3405244945,
        0.8620721141,
        0.5550693289,
        0.3798540708,
        0.2332364134,
        0.1114188177,
        0.0291671582,
    ),
}


def loglinear_interp(levels: Sequence[float], count: int) -> np.ndarray:
    """``count`` decreasing values whose log interpolates log ``levels`` linearly over the normalised index.

    The rule of Sabour et al. for other step counts: the table's k-th of K levels sits at
    k/(K − 1) ∈ [0, 1], the new values at j/(count − 1). With ``count == len(levels)`` the table
    itself is returned (bit for bit).
    """
    table = np.asarray(levels, dtype=np.float64)
    if count == table.size:
        return table.copy()
    if count < 2:
        raise ValueError(f"need at least 2 levels (1 step), got {count}")
    nodes = np.linspace(0.0, 1.0, table.size)
    return np.exp(np.interp(np.linspace(0.0, 1.0, count), nodes, np.log(table)))


def _check_name(name: str) -> None:
    if name not in AYS_LEVELS:
        raise ValueError(f"unknown published grid {name!r}; allowed: {', '.join(AYS_LEVELS)}")


def published_levels(name: str, n: int) -> Tensor:
    """The ``n + 1`` noise levels of the published table ``name`` for ``n`` steps (float64, σ_max → σ_min).

    For n = 10 these are the published values themselves; otherwise :func:`loglinear_interp`.
    """
    _check_name(name)
    if n < 1:
        raise ValueError(f"n (number of steps) must be >= 1, got {n}")
    return torch.from_numpy(loglinear_interp(AYS_LEVELS[name], n + 1))


def ays_grid(name: str, schedule: Schedule, n: int, t_hi: float | None = None, t_lo: float | None = None) -> Tensor:
    """The decoding σ grid of the published table ``name`` on ``schedule`` (see the module docstring).

    Over the full range: ``n`` noisy levels and a trailing 0 (the last level σ_min is replaced by
    0). With an explicit ``[t_lo, t_hi]``: ``n + 1`` levels from σ(t_hi) to σ(t_lo), both included.
    """
    levels = published_levels(name, n).numpy()
    top, bottom = levels[0], levels[-1]
    u = (np.log(levels) - np.log(bottom)) / (np.log(top) - np.log(bottom))
    sigma_hi = float(schedule.sigma(schedule.t_max if t_hi is None else float(t_hi)))
    sigma_lo = float(schedule.sigma(schedule.t_min if t_lo is None else float(t_lo)))
    sig = np.exp(np.log(sigma_lo) + u * (np.log(sigma_hi) - np.log(sigma_lo)))
    sig[0], sig[-1] = sigma_hi, sigma_lo  # the ends exactly
    if t_lo is None:
        sig[-1] = 0.0
    return torch.from_numpy(sig)


def _named(name: str) -> Callable[..., Tensor]:
    def grid(schedule: Schedule, n: int, t_hi: float | None = None, t_lo: float | None = None) -> Tensor:
        return ays_grid(name, schedule, n, t_hi, t_lo)

    grid.__name__ = grid.__qualname__ = name.replace("-", "_") + "_grid"
    grid.__doc__ = (
        f"Align Your Steps' published {name[4:].upper()} schedule (Sabour et al. 2024), see :func:`ays_grid`."
    )
    return grid


#: the named grids this module adds to :data:`ddim_ode.grids.GRIDS`
PUBLISHED_GRIDS: dict[str, Callable[..., Tensor]] = {name: _named(name) for name in AYS_LEVELS}

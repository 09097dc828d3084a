"""Continuous refinement of a grid's points against the actual global error.

The n noisy points of an n-step grid σ_max ≥ σ_0 > σ_1 > … > σ_{n−1} > σ_n = 0 (the first may sit
below σ_max: see :mod:`.search`) are written as gaps in log σ: with L = log σ_max − log σ_min and
g = softmax(a, 0) ∈ Δ^n (n + 1 gaps, the first above σ_0, the last between σ_{n−1} and σ_min),

    log σ_k = log σ_max − L (g_0 + … + g_k),   k = 0 … n − 1,

so every parameter vector a ∈ ℝ^n is a valid strictly decreasing grid inside [σ_min, σ_max]. A
grid held at σ_0 = σ_max moves only its n − 1 other points (n gaps, a ∈ ℝ^{n−1}).
A grid of a flow path that starts at pure noise (σ_0 = ∞) keeps that point and moves the others
in [σ_min, σ_top] (σ_top the schedule's largest finite σ, passed as σ_max).

Nelder–Mead (scipy) minimises the objective (the RMS error of a full solve on the tuning noises,
as in Xue et al. 2024, "Accelerating Diffusion Sampling with Optimized Time Steps", who optimise
the steps directly) within a fixed number of evaluations; it is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

__all__ = ["refine_grid"]

#: smallest gap (as a fraction of the log-σ range) an initial grid is lifted to, so that its logits are finite
_MIN_GAP = 1e-4
#: initial simplex size in the logits
_SIMPLEX_STEP = 0.4


class _Gaps:
    """The map between a grid's free points and the logits a of their log-σ gaps (see the module docstring).

    With ``keep_top`` the first point stays at σ_max and only the n − 1 after it move.
    """

    def __init__(self, sigma_max: float, sigma_min: float, keep_top: bool) -> None:
        self.sigma_max = sigma_max
        self.log_hi, self.log_lo = math.log(sigma_max), math.log(sigma_min)
        self.keep_top = keep_top

    def grid(self, a: np.ndarray) -> Tensor:
        z = np.concatenate([a, [0.0]])
        g = np.exp(z - z.max())
        g /= g.sum()
        free = np.exp(self.log_hi - (self.log_hi - self.log_lo) * np.cumsum(g)[:-1])
        top = [self.sigma_max] if self.keep_top else []
        return torch.from_numpy(np.concatenate([top, free, [0.0]]))

    def logits(self, sigmas: Tensor) -> np.ndarray:
        free = np.log(sigmas[1 if self.keep_top else 0 : -1].numpy())
        gaps = -np.diff(np.concatenate([[self.log_hi], free, [self.log_lo]])) / (self.log_hi - self.log_lo)
        gaps = np.maximum(gaps, _MIN_GAP)
        gaps /= gaps.sum()
        return np.log(gaps[:-1]) - np.log(gaps[-1])


def refine_grid(
    objective: Callable[[Tensor], float],
    sigmas: Tensor,
    sigma_max: float,
    sigma_min: float,
    evaluations: int,
    keep_top: bool = False,
) -> tuple[Tensor, float, int]:
    """The best grid Nelder–Mead finds from ``sigmas`` in ``evaluations`` calls of ``objective``.

    ``sigmas`` is a decoding grid (ending at 0) whose noisy points lie in [``sigma_min``,
    ``sigma_max``] (``sigma_max`` finite), but for a first point ``inf``, which stays; with
    ``keep_top`` its first point is ``sigma_max`` and stays there. Returns (grid,
    objective value, evaluations used); the grid is ``sigmas`` itself when nothing better was found.
    """
    if math.isinf(float(sigmas[0])):
        head = sigmas[:1]
        tail, value, used = refine_grid(
            lambda g: objective(torch.cat([head, g])), sigmas[1:], sigma_max, sigma_min, evaluations
        )
        return torch.cat([head, tail]), value, used
    start = float(objective(sigmas))
    gaps = _Gaps(sigma_max, sigma_min, keep_top)
    a0 = gaps.logits(sigmas)
    dim = a0.size
    if evaluations < 1 or dim == 0:
        return sigmas, start, 1
    simplex = np.vstack([a0] + [a0 + _SIMPLEX_STEP * np.eye(dim)[k] for k in range(dim)])
    used = [1]

    def f(a: np.ndarray) -> float:
        used[0] += 1
        value = float(objective(gaps.grid(a)))
        return value if math.isfinite(value) else math.inf

    res = minimize(
        f,
        a0,
        method="Nelder-Mead",
        options={"maxfev": evaluations, "initial_simplex": simplex, "xatol": 1e-4, "fatol": 0.0},
    )
    if float(res.fun) < start:
        return gaps.grid(res.x), float(res.fun), used[0]
    return sigmas, start, used[0]

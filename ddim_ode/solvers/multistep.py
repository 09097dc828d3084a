"""Linear multistep methods in σ: PLMS, the variable-step Adams–Bashforth method on ε.

The Adams–Bashforth step of order k integrates the polynomial through the last k values of ε:

    x̄' = x̄ + Σ_j β_j ε_j,   β_j = ∫_σ^σ' ℓ_j(s) ds,

with ℓ_j the Lagrange basis on the σ's where the ε_j were evaluated. The weights are computed
from the actual grid (Gauss–Legendre quadrature, exact for these polynomials), so they are
correct on any non-uniform grid and in both directions; on a uniform σ grid they are the classical
(55, −59, 37, −9)/24 of PNDM's PLMS, whose "DDIM transfer" is exactly this Euler-type update in x̄
coordinates. σ = 0 is an ordinary point for a polynomial in σ, so no special final step is needed
(the step to σ = 0 only uses ε at σ > 0).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import numpy as np
from torch import Tensor

from ..field import ProbabilityFlowODE
from .base import Solver, lincomb, register, touches_zero
from .rk import RK4_CLASSIC, rk_step

__all__ = ["PLMS", "adams_bashforth_weights"]

_LIU_2022 = "Liu, Ren, Lin & Zhao 2022, Pseudo Numerical Methods for Diffusion Models on Manifolds (ICLR)"


@functools.lru_cache(maxsize=8)
def _gauss_legendre(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes and weights on [−1, 1] (exact for polynomials of degree < 2k), cached."""
    return np.polynomial.legendre.leggauss(k)


def adams_bashforth_weights(nodes: list[float], sigma: float, sigma_next: float) -> list[float]:
    """β_j = ∫_σ^σ' ℓ_j(s) ds for the Lagrange basis ℓ_j on ``nodes`` (float64, any spacing)."""
    return list(_ab_weights(tuple(float(v) for v in nodes), float(sigma), float(sigma_next)))


@functools.lru_cache(maxsize=4096)
def _ab_weights(nodes: tuple[float, ...], sigma: float, sigma_next: float) -> tuple[float, ...]:
    """:func:`adams_bashforth_weights`, memoised: a grid used again costs no quadrature."""
    k = len(nodes)
    xg, wg = _gauss_legendre(max(k, 1))
    half = 0.5 * (sigma_next - sigma)
    s = 0.5 * (sigma + sigma_next) + half * xg
    w = half * wg
    out = []
    for j, node_j in enumerate(nodes):
        ell = np.ones_like(s)
        for m, node_m in enumerate(nodes):
            if m != j:
                ell *= (s - node_m) / (node_j - node_m)
        out.append(float(w @ ell))
    return tuple(out)


@register("plms")
class PLMS(Solver):
    """PLMS: variable-step Adams–Bashforth (k = 4) on ε in σ. Order 2 (k with RK4 warm-up), 1 NFE/step.

    Args:
        order: k, the number of ε values combined (1 = Euler/DDIM, 4 = PLMS).
        warmup: ``"lower-order"`` (default, as k-diffusion's ``lms``): steps 1, …, k − 1 use
            Adams–Bashforth of order 1, …, k − 1 (1 NFE each); the first-order first step limits
            the *global* order to 2 for k ≥ 2, which is what ``order`` reports.
            ``"singlestep"``: those steps are classical RK4 steps (4 NFE each), as PNDM's
            Runge–Kutta warm-up (Liu et al. 2022, Alg. 1 uses the same count), restoring global
            order k at 3(k − 1) extra NFE. A warm-up step touching σ = 0 stays Adams–Bashforth.

    On a non-uniform grid PNDM's constant coefficients would be wrong; these are the
    variable-step ones. NFE = n for n steps with the default warm-up.
    """

    name = "plms"
    paper = _LIU_2022

    def __init__(self, order: int = 4, warmup: Literal["lower-order", "singlestep"] = "lower-order") -> None:
        if order not in (1, 2, 3, 4):
            raise ValueError(f"PLMS order must be 1..4, got {order!r}")
        if warmup not in ("lower-order", "singlestep"):
            raise ValueError(f"warmup must be 'lower-order' or 'singlestep', got {warmup!r}")
        self.steps_order = order
        self.warmup = warmup
        self.order = order if warmup == "singlestep" else min(order, 2)
        self.nfe_per_step = 1.0

    def step(
        self, field: ProbabilityFlowODE, xbar: Tensor, sigma: float, sigma_next: float, state: Any
    ) -> tuple[Tensor, Any]:
        k = self.steps_order
        history = state or ()
        # entries behind σ in the direction of travel (a state from the other direction restarts);
        # a history made along one direction is monotone, so checking its ends suffices
        h = sigma_next - sigma
        if history and not ((history[0][0] - sigma) * h < 0.0 and (history[-1][0] - sigma) * h < 0.0):
            history = tuple((s, e) for s, e in history if (s - sigma) * h < 0.0)
        eps = field(xbar, sigma)
        history = (history + ((sigma, eps),))[-k:]
        if len(history) < k and self.warmup == "singlestep" and not touches_zero(sigma, sigma_next):
            return rk_step(field, xbar, sigma, sigma_next, RK4_CLASSIC, eps=eps), history
        weights = _ab_weights(tuple(s for s, _ in history), sigma, sigma_next)
        # most recent first: the largest weight enters first
        return lincomb([(1.0, xbar)] + [(w, e) for w, (_, e) in zip(weights[::-1], history[::-1])]), history

    def __repr__(self) -> str:
        return f"PLMS(order={self.steps_order}, warmup={self.warmup!r})"

"""Explicit Runge–Kutta methods from Butcher tableaux, in σ.

Euler here *is* DDIM: x̄_next = x̄ + (σ_next − σ) ε(x̄, σ) is the DDIM update divided by √ᾱ
(Song, Meng & Ermon 2021, eq. 13–14). Every tableau is checked against the order conditions of
its declared order when it is built, so a new method is a validated ~5-line tableau.

Steps with an endpoint at σ = 0. The field *is* defined there (an ε-network is evaluated at the
schedule's smallest timestep, an exact oracle at σ = 0 itself), but a trained ε-network has never
seen σ = 0 (its smallest training noise is σ_min ≈ 0.01 for the DDPM linear schedule), and the
denoiser form (x̄ − D)/σ used by EDM is singular there. With ``final_step="euler"`` (default, as
EDM's Algorithm 1) such a step is a single Euler (= DDIM) step, 1 NFE: a decoding grid of n steps
ending at 0 costs ``stages·(n − 1) + 1`` NFE. ``final_step="full"`` takes the full method there
too (``stages·n`` NFE), which is more accurate when the field is smooth at σ = 0 (exact Gaussian
oracles) and evaluates the network at σ = 0 otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from ..field import ProbabilityFlowODE
from .base import Solver, lincomb, register, touches_zero

__all__ = [
    "ButcherTableau",
    "ExplicitRK",
    "Euler",
    "Heun",
    "Midpoint",
    "RK4",
    "EULER",
    "HEUN",
    "MIDPOINT",
    "KUTTA3",
    "RK4_CLASSIC",
    "rk_step",
]

FinalStep = Literal["euler", "full"]


def _order_conditions(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> list[tuple[int, float, float]]:
    """(order, value, required value) of every rooted-tree order condition up to order 4."""
    ac = a @ c
    return [
        (1, b.sum(), 1.0),
        (2, b @ c, 1 / 2),
        (3, b @ c**2, 1 / 3),
        (3, b @ ac, 1 / 6),
        (4, b @ c**3, 1 / 4),
        (4, b @ (c * ac), 1 / 8),
        (4, b @ (a @ c**2), 1 / 12),
        (4, b @ (a @ ac), 1 / 24),
    ]


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Butcher tableau: ``c`` nodes, ``a`` strictly lower-triangular rows, ``b`` weights.

    ``order`` (1–4) is verified against the order conditions on construction (Hairer, Nørsett &
    Wanner, *Solving ODEs I*, §II.2), so a wrong coefficient raises instead of silently lowering
    the order.
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int = 1

    def __post_init__(self) -> None:
        s = len(self.b)
        if len(self.c) != s or len(self.a) != s:
            raise ValueError("tableau sizes of c, a and b must agree")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"row {i} of an explicit tableau must have {i} entries")
            if abs(sum(row) - self.c[i]) > 1e-12:
                raise ValueError(f"row sum of a[{i}] must equal c[{i}]")
        if not 1 <= self.order <= 4:
            raise ValueError(f"tableau order must be 1..4 (higher orders are not verified here), got {self.order}")
        am = np.zeros((s, s))
        for i, row in enumerate(self.a):
            am[i, :i] = row
        for p, value, want in _order_conditions(np.asarray(self.c, float), am, np.asarray(self.b, float)):
            if p <= self.order and abs(value - want) > 1e-12:
                raise ValueError(f"tableau fails an order-{p} condition: {float(value)!r} != {want!r}")

    @property
    def stages(self) -> int:
        return len(self.b)


EULER = ButcherTableau(c=(0.0,), a=((),), b=(1.0,), order=1)
HEUN = ButcherTableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2)
MIDPOINT = ButcherTableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), order=2)
KUTTA3 = ButcherTableau(c=(0.0, 0.5, 1.0), a=((), (0.5,), (-1.0, 2.0)), b=(1 / 6, 2 / 3, 1 / 6), order=3)
RK4_CLASSIC = ButcherTableau(
    c=(0.0, 0.5, 0.5, 1.0),
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    order=4,
)


def _stage_sigma(sigma: float, sigma_next: float, c: float) -> float:
    """σ + c h of a stage (exactly σ' at c = 1)."""
    return sigma_next if c == 1.0 else sigma + c * (sigma_next - sigma)


def rk_step(
    field: ProbabilityFlowODE,
    xbar: Tensor,
    sigma: float,
    sigma_next: float,
    tableau: ButcherTableau,
    eps: Tensor | None = None,
) -> Tensor:
    """One explicit Runge–Kutta step in σ; ``eps`` = ε(x̄, σ) if already known (saves the first stage).

    Each stage and the update are one :func:`~ddim_ode.solvers.base.lincomb` (one pass over the
    state per nonzero coefficient, one new tensor); a stage at ``c = 1`` is evaluated at exactly
    ``sigma_next``.
    """
    h = sigma_next - sigma
    ks: list[Tensor] = []
    for i in range(tableau.stages):
        if i == 0 and eps is not None and tableau.c[0] == 0.0:
            ks.append(eps)
            continue
        x_i = lincomb([(1.0, xbar)] + [(h * a_ij, k_j) for a_ij, k_j in zip(tableau.a[i], ks)])
        ks.append(field(x_i, _stage_sigma(sigma, sigma_next, tableau.c[i])))
    return lincomb([(1.0, xbar)] + [(h * b_i, k_i) for b_i, k_i in zip(tableau.b, ks)])


class ExplicitRK(Solver):
    """A generic explicit Runge–Kutta step in σ from a :class:`ButcherTableau` (``stages`` NFE/step).

    Args:
        final_step: ``"euler"`` (default): a step with an endpoint at σ = 0 is one Euler (DDIM)
            step (1 NFE), as in EDM; ``"full"``: the full method there too (see the module docstring).
    """

    tableau: ClassVar[ButcherTableau] = EULER

    def __init__(self, final_step: FinalStep = "euler") -> None:
        if final_step not in ("euler", "full"):
            raise ValueError(f"final_step must be 'euler' or 'full', got {final_step!r}")
        self.final_step: FinalStep = final_step
        self.order = self.tableau.order
        self.nfe_per_step = float(self.tableau.stages)

    def step(
        self, field: ProbabilityFlowODE, xbar: Tensor, sigma: float, sigma_next: float, state: Any
    ) -> tuple[Tensor, Any]:
        if self.final_step == "euler" and touches_zero(sigma, sigma_next):
            return rk_step(field, xbar, sigma, sigma_next, EULER), state
        return rk_step(field, xbar, sigma, sigma_next, self.tableau), state

    def stage_sigmas(self, sigmas: list[float]) -> list[float]:
        out = []
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            if not (self.final_step == "euler" and touches_zero(sigma, sigma_next)):
                out += [_stage_sigma(sigma, sigma_next, c) for c in self.tableau.c if c not in (0.0, 1.0)]
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(final_step={self.final_step!r})"


@register("euler")
class Euler(ExplicitRK):
    """Euler in σ, i.e. deterministic DDIM (η = 0): x̄' = x̄ + (σ' − σ) ε(x̄, σ). Order 1, 1 NFE/step."""

    name = "euler"
    paper = "Song, Meng & Ermon 2021, Denoising Diffusion Implicit Models (ICLR), eq. 13-14"
    tableau = EULER

    def __init__(self) -> None:
        super().__init__("euler")

    def step(
        self, field: ProbabilityFlowODE, xbar: Tensor, sigma: float, sigma_next: float, state: Any
    ) -> tuple[Tensor, Any]:
        return torch.add(xbar, field(xbar, sigma), alpha=sigma_next - sigma), state

    def __repr__(self) -> str:
        return "Euler()"


@register("heun")
class Heun(ExplicitRK):
    """Heun's method (explicit trapezoidal rule) in σ, EDM's sampler. Order 2, 2 NFE/step.

    x̄' = x̄ + h/2 [ε(x̄, σ) + ε(x̄ + h ε(x̄, σ), σ')], h = σ' − σ. With the default
    ``final_step="euler"`` a step touching σ = 0 is an Euler step, exactly as EDM's Algorithm 1:
    2n − 1 NFE for a decoding grid of n steps ending at 0.
    """

    name = "heun"
    paper = (
        "Karras, Aittala, Aila & Laine 2022, Elucidating the Design Space of Diffusion-Based Generative Models "
        "(NeurIPS), Alg. 1"
    )
    tableau = HEUN


@register("midpoint")
class Midpoint(ExplicitRK):
    """Explicit midpoint method in σ (arithmetic midpoint). Order 2, 2 NFE/step.

    x̄' = x̄ + h ε(x̄ + h/2 ε(x̄, σ), σ + h/2). Final-step rule as :class:`Heun`.
    """

    name = "midpoint"
    paper = "Runge 1895; Hairer, Norsett & Wanner, Solving Ordinary Differential Equations I, Sec. II.1"
    tableau = MIDPOINT


@register("rk4")
class RK4(ExplicitRK):
    """The classical fourth-order Runge–Kutta method in σ. Order 4, 4 NFE/step.

    Final-step rule as :class:`Heun`: a step touching σ = 0 is an Euler step by default
    (4(n − 1) + 1 NFE for a decoding grid ending at 0).
    """

    name = "rk4"
    paper = "Kutta 1901; Hairer, Norsett & Wanner, Solving Ordinary Differential Equations I, Sec. II.1"
    tableau = RK4_CLASSIC

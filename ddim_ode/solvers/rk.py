"""Explicit Runge–Kutta methods from Butcher tableaux, in σ.

Euler here *is* DDIM: x̄_next = x̄ + (σ_next − σ) ε(x̄, σ) is the DDIM update divided by √ᾱ
(Song, Meng & Ermon 2021, eq. 13–14). Every tableau (:class:`~ddim_ode.solvers.tableau.ButcherTableau`)
is checked against the order conditions of its declared order when it is built, so a new method is a
validated ~5-line tableau.

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

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from ..field import ProbabilityFlowODE
from ..ranges import check_choice
from .base import Solver, register, touches_zero
from .tableau import ButcherTableau, rk_stages

__all__ = [
    "ExplicitRK",
    "Euler",
    "Heun",
    "Midpoint",
    "RK4",
    "EULER",
    "HEUN",
    "MIDPOINT",
    "RK4_CLASSIC",
    "rk_step",
]

FinalStep = Literal["euler", "full"]

EULER = ButcherTableau(c=(0.0,), a=((),), b=(1.0,), order=1)
HEUN = ButcherTableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2)
MIDPOINT = ButcherTableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), order=2)
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

    The stages run through :func:`~ddim_ode.solvers.tableau.rk_stages` (each stage and the update
    one fused linear combination); a stage at ``c = 1`` is evaluated at exactly ``sigma_next``.
    """
    stage_sigmas = [_stage_sigma(sigma, sigma_next, c) for c in tableau.c]
    eps0 = eps if tableau.c[0] == 0.0 else None
    return rk_stages(field, xbar, tableau, sigma_next - sigma, stage_sigmas, eps0=eps0)[0]


class ExplicitRK(Solver):
    """A generic explicit Runge–Kutta step in σ from a :class:`ButcherTableau` (``stages`` NFE/step).

    Args:
        final_step: ``"euler"`` (default): a step with an endpoint at σ = 0 is one Euler (DDIM)
            step (1 NFE), as in EDM; ``"full"``: the full method there too (see the module docstring).
    """

    tableau: ClassVar[ButcherTableau] = EULER

    def __init__(self, final_step: FinalStep = "euler") -> None:
        self.final_step: FinalStep = check_choice("final_step", final_step, ("euler", "full"))
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

"""Explicit Runge–Kutta methods from Butcher tableaux, in σ.

Euler here *is* DDIM: x̄_next = x̄ + (σ_next − σ) ε(x̄, σ) is the DDIM update divided by √ᾱ
(Song, Meng & Ermon 2021, eq. 13–14).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from ..field import ProbabilityFlowODE
from .base import Solver, register

__all__ = ["ButcherTableau", "ExplicitRK", "Euler", "EULER"]


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Butcher tableau: ``c`` nodes, ``a`` strictly lower-triangular rows, ``b`` weights."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]

    def __post_init__(self) -> None:
        s = len(self.b)
        if len(self.c) != s or len(self.a) != s:
            raise ValueError("tableau sizes of c, a and b must agree")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"row {i} of an explicit tableau must have {i} entries")
            if abs(sum(row) - self.c[i]) > 1e-12:
                raise ValueError(f"row sum of a[{i}] must equal c[{i}]")
        if abs(sum(self.b) - 1.0) > 1e-12:
            raise ValueError("weights b must sum to 1")

    @property
    def stages(self) -> int:
        return len(self.b)


EULER = ButcherTableau(c=(0.0,), a=((),), b=(1.0,))


class ExplicitRK(Solver):
    """A generic explicit Runge–Kutta step in σ from a :class:`ButcherTableau` (``stages`` NFE/step)."""

    tableau: ClassVar[ButcherTableau] = EULER

    def step(
        self, field: ProbabilityFlowODE, xbar: Tensor, sigma: float, sigma_next: float, state: Any
    ) -> tuple[Tensor, Any]:
        h = sigma_next - sigma
        tab = self.tableau
        ks: list[Tensor] = []
        for i in range(tab.stages):
            x_i = xbar
            for a_ij, k_j in zip(tab.a[i], ks):
                if a_ij != 0.0:
                    x_i = x_i + (h * a_ij) * k_j
            ks.append(field(x_i, sigma + tab.c[i] * h))
        out = xbar
        for b_i, k_i in zip(tab.b, ks):
            if b_i != 0.0:
                out = out + (h * b_i) * k_i
        return out, state


@register("euler")
class Euler(ExplicitRK):
    """Euler in σ, i.e. deterministic DDIM (η = 0): x̄' = x̄ + (σ' − σ) ε(x̄, σ). Order 1, 1 NFE/step."""

    name = "euler"
    order = 1
    nfe_per_step = 1.0
    paper = "Song, Meng & Ermon 2021, Denoising Diffusion Implicit Models (ICLR), eq. 13-14"
    tableau = EULER

"""Explicit Runge–Kutta tableaux, with an optional embedded error estimate, and the one stage loop.

A :class:`ButcherTableau` is checked when it is built (row sums equal the nodes, the rooted-tree
order conditions up to order 4 for its weights and, for an embedded pair, for its lower-order
weights), so a wrong coefficient raises at import instead of silently lowering the order.
:func:`rk_stages` runs the stages of one step; the fixed-step methods (:mod:`.rk`) and the adaptive
integrator (:mod:`.adaptive`) both step with it, the latter in log σ as well as in σ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from torch import Tensor

from ..field import ProbabilityFlowODE
from .base import lincomb

__all__ = ["ButcherTableau", "rk_stages", "embedded_error"]

#: the highest order whose conditions are verified (the 8 rooted trees up to order 4)
CHECKED_ORDER = 4
_TOL = 1e-12


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
    """An explicit Runge–Kutta method: nodes ``c``, strictly lower-triangular rows ``a``, weights ``b``.

    ``order`` is the order of ``b``; the order conditions are verified up to ``min(order, 4)``
    (Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.2). An embedded pair adds:

    * ``e``: error weights b − b̂, b̂ the embedded solution of order ``order − 1`` (verified the
      same way); the error estimate of a step is h Σ e_i k_i and the step-size controller's
      exponent is 1/``order``.
    * ``fsal``: the ε of the last stage (at c = 1) is the next step's first stage. That is "first
      same as last" proper when the last stage is evaluated at the new solution (a[-1] = b,
      :attr:`last_is_solution`), as for Dormand–Prince and Bogacki–Shampine; for the Heun–Euler
      pair it reuses the ε at the Euler predictor (1 NFE per step).
    * ``mid``: weights of an estimate of the solution at the step's midpoint,
      y(½) ≈ y + h Σ mid_i k_i, accurate to the method's order; with it the dense output is the
      quartic through y, y', y(½), y_new and y_new' (Shampine 1986), else cubic Hermite.
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int = 1
    e: tuple[float, ...] | None = None
    fsal: bool = False
    mid: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        s = len(self.b)
        if len(self.c) != s or len(self.a) != s:
            raise ValueError("tableau sizes of c, a and b must agree")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"row {i} of an explicit tableau must have {i} entries")
            if abs(sum(row) - self.c[i]) > _TOL:
                raise ValueError(f"row sum of a[{i}] must equal c[{i}]")
        if not isinstance(self.order, int) or self.order < 1:
            raise ValueError(f"tableau order must be a positive integer, got {self.order!r}")
        for name, weights in (("e", self.e), ("mid", self.mid)):
            if weights is not None and len(weights) != s:
                raise ValueError(f"tableau weights {name} must have {s} entries, one per stage")
        if self.fsal and (self.e is None or self.c[-1] != 1.0):
            raise ValueError("an FSAL tableau must be an embedded pair whose last stage is at c = 1")
        self._check_order(self.b, self.order, "")
        if self.e is not None:
            if abs(sum(self.e)) > _TOL:
                raise ValueError("error weights e must sum to 0")
            self._check_order(tuple(b - e for b, e in zip(self.b, self.e)), self.order - 1, "embedded ")

    def _check_order(self, weights: tuple[float, ...], order: int, what: str) -> None:
        s = self.stages
        am = np.zeros((s, s))
        for i, row in enumerate(self.a):
            am[i, :i] = row
        for p, value, want in _order_conditions(np.asarray(self.c, float), am, np.asarray(weights, float)):
            if p <= min(order, CHECKED_ORDER) and abs(value - want) > _TOL:
                raise ValueError(f"{what}tableau fails an order-{p} condition: {float(value)!r} != {want!r}")

    @classmethod
    def exact(
        cls,
        c: Sequence[Fraction | int],
        a: Sequence[Sequence[Fraction | int]],
        b: Sequence[Fraction | int],
        order: int,
        b_hat: Sequence[Fraction | int] | None = None,
        fsal: bool = False,
        mid: Sequence[Fraction | int] | None = None,
    ) -> ButcherTableau:
        """A tableau from exact rational coefficients, each rounded once to float64.

        ``b_hat`` is the embedded solution; the error weights are b − b̂ taken after rounding, so
        they are the differences of the weights the two solutions actually use.
        """

        def floats(values: Sequence[Fraction | int]) -> tuple[float, ...]:
            return tuple(float(v) for v in values)

        e = None if b_hat is None else tuple(float(x) - float(y) for x, y in zip(b, b_hat))
        return cls(
            floats(c), tuple(floats(row) for row in a), floats(b), order, e, fsal, None if mid is None else floats(mid)
        )

    @property
    def stages(self) -> int:
        return len(self.b)

    @property
    def nfe_per_step(self) -> int:
        """Network evaluations per step: the stages, less the first one of an FSAL pair (reused)."""
        return self.stages - 1 if self.fsal else self.stages

    @property
    def last_is_solution(self) -> bool:
        """Whether the last stage is evaluated at the new solution (its ε is then the slope there)."""
        return self.c[-1] == 1.0 and tuple(self.a[-1]) == tuple(self.b[:-1]) and self.b[-1] == 0.0


def rk_stages(
    field: ProbabilityFlowODE,
    xbar: Tensor,
    tableau: ButcherTableau,
    h: float,
    sigmas: Sequence[float],
    slopes: Sequence[float] | None = None,
    eps0: Tensor | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """One explicit Runge–Kutta step of size ``h`` in an integration variable τ: (x̄ at its end, the stages' ε).

    Stage i evaluates ε at σ = ``sigmas[i]``; its slope dx̄/dτ is ``slopes[i]``·ε (default 1: τ = σ;
    σ_i in τ = log σ), so the factor enters the coefficients and each stage and the update are one
    :func:`~ddim_ode.solvers.base.lincomb`. ``eps0`` is the first stage's ε if already known (it
    must be at c = 0 or be an FSAL pair's reused value). When the last stage is evaluated at the
    new solution, that point is the result (no extra pass). NFE: the stages, less one with ``eps0``.
    """
    w = [1.0] * tableau.stages if slopes is None else slopes
    ks: list[Tensor] = [] if eps0 is None else [eps0]
    end: Tensor | None = None
    for i in range(len(ks), tableau.stages):
        x_i = lincomb([(1.0, xbar)] + [(h * a_ij * w_j, k_j) for a_ij, w_j, k_j in zip(tableau.a[i], w, ks)])
        if i == tableau.stages - 1 and tableau.last_is_solution:
            end = x_i
        ks.append(field(x_i, sigmas[i]))
    if end is None:
        end = lincomb([(1.0, xbar)] + [(h * b_i * w_i, k_i) for b_i, w_i, k_i in zip(tableau.b, w, ks)])
    return end, ks


def embedded_error(tableau: ButcherTableau, h: float, ks: list[Tensor], slopes: Sequence[float]) -> Tensor:
    """The embedded pair's error estimate h Σ e_i slope_i ε_i of a step (one :func:`lincomb`)."""
    if tableau.e is None:
        raise ValueError("the tableau has no error weights: it is not an embedded pair")
    return lincomb([(h * e_i * w_i, k_i) for e_i, w_i, k_i in zip(tableau.e, slopes, ks) if e_i != 0.0])

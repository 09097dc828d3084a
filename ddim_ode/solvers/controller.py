"""The step-size controller of the adaptive solvers: accept or reject a step, and size the next one.

It is torchdiffeq's controller (and diffrax's ``PIDController`` with only its integral term): the
error of a step is the RMS over the whole state of err / (atol + rtol·max(|x̄|, |x̄'|)); a step is
accepted at a ratio r ≤ 1; the next step is h·clip(0.9·r^(−1/order), lower, 10) with lower = 1
after an accepted step (an accepted step never shrinks the next one) and 0.2 after a rejected one;
r = 0 multiplies the step by 10 and a non-finite r divides it by 5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["StepSizeController"]


@dataclass(frozen=True)
class StepSizeController:
    """Integral step-size control for an embedded pair of ``order`` with tolerances ``rtol``, ``atol``.

    ``max_num_steps`` bounds the number of steps (accepted and rejected) of one integration;
    ``safety``, ``ifactor`` and ``dfactor`` are the usual safety factor and the bounds of the
    step-size ratio (see the module docstring).
    """

    rtol: float
    atol: float
    order: int
    max_num_steps: int = 2**31 - 1
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2

    def error_ratio(self, err: Tensor, y0: Tensor, y1: Tensor) -> float:
        """RMS over all elements of err / (atol + rtol·max(|y0|, |y1|)), read on the host (one sync)."""
        r = torch.maximum(y0.detach().abs(), y1.detach().abs()).mul_(self.rtol).add_(self.atol)
        r = r.reciprocal_().mul_(err.detach())
        return float(torch.linalg.vector_norm(r)) / math.sqrt(max(r.numel(), 1))

    def adapt(self, h: float, ratio: float) -> tuple[bool, float]:
        """Whether the step of size ``h`` with error ``ratio`` is accepted, and the next step size (signed)."""
        accept = ratio <= 1.0  # False for NaN
        if ratio == 0.0:
            factor = self.ifactor
        elif math.isfinite(ratio):
            lower = 1.0 if accept else self.dfactor
            factor = min(self.ifactor, max(self.safety * ratio ** (-1.0 / self.order), lower))
        else:
            factor = self.dfactor
        return accept, h * factor

    def clip(self, tau: float, dt: float, tau_end: float) -> tuple[float, bool]:
        """The step to take from ``tau`` when ``dt`` is proposed: ``dt``, or what is left up to
        ``tau_end`` when ``dt`` would reach or pass it; and whether it is the last step."""
        direction = 1.0 if tau_end > tau else -1.0
        last = (tau + dt - tau_end) * direction >= 0
        return (tau_end - tau if last else dt), last

    def check(self, steps: int, tau: float, dt: float, span: float, sigma: float) -> None:
        """Raise when the step budget is spent (``RuntimeError``) or the step size ``dt`` has underflowed
        relative to the position ``tau`` and the integration's ``span`` (``FloatingPointError``: a
        NaN/Inf state or a singular field); ``sigma`` is where, for the message."""
        if steps >= self.max_num_steps:
            raise RuntimeError(f"max_num_steps={self.max_num_steps} reached at sigma={sigma:.6g}")
        if abs(dt) < 1e-14 * max(abs(tau), abs(span), 1.0):
            raise FloatingPointError(
                f"adaptive step size underflow at sigma={sigma:.6g}: the state or the field is not finite"
            )

"""The accuracy study's problems and their float64 reference solutions.

A :class:`Problem` is an ε-model (or exact oracle) with its schedule, seeded N(0, I) noise x_T and
data samples x0, all in float64. Built in (:func:`make_problem`):

* ``ring``: the 2-D 8-mode ring ``GaussianMixture.ring()`` on ``DiscreteSchedule.linear()``;
* ``mixture64``: ``GaussianMixture.random(k=8, dim=64, seed=0)``, 8 diagonal components in 64-D;
* ``model``: the built-in digits network, cast to float64, with held-out digits as data.

:class:`References` solves the same ODE with scipy's DOP853 (:func:`ddim_ode.analytic.reference_solve`)
at the problem's tolerance and caches each solution by the σ it starts from or ends at.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..analytic import GaussianMixture, reference_solve
from ..core import to_xbar
from ..field import EpsModel, Prediction, ProbabilityFlowODE, SigmaModel
from ..models import resolve_model
from ..schedules import DiscreteSchedule, Schedule

__all__ = ["PROBLEMS", "MODEL_NUM", "Problem", "make_problem", "References"]

PROBLEMS = ("ring", "mixture64", "model")
#: at most this many digits for the network problem: its float64 reference solve is the expensive part
MODEL_NUM = 8
#: DOP853 tolerance (rtol = atol) of the network's reference; its field has a kink at every integer timestep
#: (t is piecewise linear in log σ), which makes 1e-10 cost ~15k NFE, and at 1e-8 the reference differs
#: from a 1e-6 solve by 6e-6 RMS, far below the errors measured
MODEL_REF_RTOL = 1e-8


@dataclass
class Problem:
    """An ε-model with its schedule, noise ``x_T`` (VP scale) and data ``x0``, both float64.

    ``ref_rtol`` is the tolerance (rtol = atol) of the reference solves; any model can be a
    problem, the reference only needs its field.
    """

    name: str
    model: EpsModel | SigmaModel
    schedule: Schedule
    x_T: Tensor
    x0: Tensor
    prediction: Prediction = "eps"
    ref_rtol: float = 1e-10
    label: str = ""

    def field(self) -> ProbabilityFlowODE:
        """A fresh field (its NFE counter at zero)."""
        return ProbabilityFlowODE(self.model, self.schedule, prediction=self.prediction)

    def describe(self) -> dict[str, Any]:
        """What the JSON records about the problem."""
        return {
            "name": self.name,
            "num": len(self.x0),
            "label": self.label,
            "schedule": repr(self.schedule),
            "ref_rtol": self.ref_rtol,
        }


def make_problem(
    name: str, num: int, *, data_seed: int, noise_seed: int, device: str | torch.device = "cpu"
) -> Problem:
    """The built-in problem ``name`` with ``num`` data samples (drawn with ``data_seed``) and noises
    (drawn with ``noise_seed``); the network problem keeps at most :data:`MODEL_NUM` of them."""
    dev = torch.device(device)
    g = torch.Generator().manual_seed(data_seed)
    if name in ("ring", "mixture64"):
        oracle = GaussianMixture.ring() if name == "ring" else GaussianMixture.random(k=8, dim=64, seed=0)
        x0 = oracle.sample(num, g).to(dev)
        model: EpsModel | SigmaModel = oracle
        schedule: Schedule = DiscreteSchedule.linear()
        prediction: Prediction = "eps"
        ref_rtol, label = 1e-10, repr(oracle)
    elif name == "model":
        from ..data import load_digits

        resolved = resolve_model(None, device=dev)
        model = copy.deepcopy(resolved.model).double().eval().requires_grad_(False)  # type: ignore[union-attr]
        schedule, prediction = resolved.schedule, resolved.prediction
        data = load_digits("heldout")
        num = min(num, MODEL_NUM)
        x0 = data[torch.randperm(len(data), generator=g)[:num]].to(dev, torch.float64)
        ref_rtol, label = MODEL_REF_RTOL, "built-in digits model"
    else:
        raise ValueError(f"unknown problem {name!r}; allowed: {', '.join(PROBLEMS)}")
    noise = torch.Generator().manual_seed(noise_seed)
    x_T = torch.randn(x0.shape, generator=noise, dtype=torch.float64).to(dev)
    return Problem(name, model, schedule, x_T, x0, prediction, ref_rtol, label)


class References:
    """Float64 DOP853 solutions of a problem's ODE, cached by the σ they start from (decoding) or
    end at (encoding); :attr:`records` lists each solve's NFE and time for the JSON."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.field = problem.field()
        self.records: list[dict[str, Any]] = []
        self._cache: dict[tuple[str, float], Tensor] = {}

    def decode(self, sigma0: float) -> Tensor:
        """x̄ at σ = 0 from the problem's noise at ``sigma0``."""
        return self._solve("decode", to_xbar(self.problem.x_T, sigma0), sigma0, 0.0)

    def encode(self, sigma_top: float) -> Tensor:
        """x̄ at ``sigma_top`` from the problem's data."""
        return self._solve("encode", self.problem.x0, 0.0, sigma_top)

    def solve(self, xbar: Tensor, sigma0: float, sigma1: float) -> Tensor:
        """An uncached reference solve from ``xbar`` at ``sigma0`` to ``sigma1``."""
        rtol = self.problem.ref_rtol
        out, _ = reference_solve(self.field, xbar, sigma0, sigma1, rtol=rtol, atol=rtol)
        return out

    def _solve(self, direction: str, xbar: Tensor, sigma0: float, sigma1: float) -> Tensor:
        key = (direction, sigma0 if direction == "decode" else sigma1)
        if key not in self._cache:
            t0 = time.perf_counter()
            rtol = self.problem.ref_rtol
            self._cache[key], nfe = reference_solve(self.field, xbar, sigma0, sigma1, rtol=rtol, atol=rtol)
            self.records.append(
                {
                    "problem": self.problem.name,
                    "direction": direction,
                    "sigma": key[1],
                    "nfe": nfe,
                    "seconds": time.perf_counter() - t0,
                }
            )
        return self._cache[key]

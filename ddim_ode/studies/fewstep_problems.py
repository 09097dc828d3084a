"""The few-step study's problems: a model, its noise batch and the accurate solution from that noise.

* ``mixture64``: the exact 64-D mixture ``GaussianMixture.random(k=8, dim=64, seed=0)`` on the DDPM
  linear schedule (no solver or grid in the package was designed on it; the tuned grids of
  docs/fewstep.md were tuned on a 16-D mixture of another seed);
* ``digits``: the built-in VP ε-model;
* ``digits-cond``: the class-conditional model with classifier-free guidance (:class:`GuidedNetwork`,
  labels 0..9 in turn along the batch);
* ``digits-flow``: the rectified-flow model, decoded from σ̄ = ∞.

The reference is classical RK4 on a fine grid (log-SNR spaced from σ_max on a VP path, uniform in
τ from pure noise on a flow path) from the same noise; a second solve on half the steps bounds its
error (``ref_error``: the RMS distance of the two, an upper estimate of the finer one's error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..analytic import GaussianMixture
from ..driver import decode
from ..field import EpsModel, Prediction, ProbabilityFlowODE, SigmaModel
from ..grids import make_grid
from ..models import resolve_model
from ..schedules import DiscreteSchedule, Schedule
from .common import rms

__all__ = ["FEWSTEP_PROBLEMS", "FewStepProblem", "GuidedNetwork", "make_fewstep_problem", "field_network"]

FEWSTEP_PROBLEMS = ("mixture64", "digits", "digits-cond", "digits-flow")
#: classifier-free guidance weight of the ``digits-cond`` problem
GUIDANCE = 2.0


class GuidedNetwork:
    """A class-conditional network under classifier-free guidance as a plain ε-model ``net(x_t, t)``.

    Sample ``i`` of a batch gets the label ``i mod num_classes``; the output is
    ε_u + w (ε_c − ε_u) (Ho & Salimans 2022), both halves in one call on the doubled batch.
    Being a plain ε-model, it can be tuned (:func:`ddim_ode.tune_grid`) and driven by diffusers.
    """

    def __init__(self, network: Any, guidance_scale: float, num_classes: int = 10) -> None:
        self.network, self.w, self.num_classes = network, float(guidance_scale), num_classes

    def labels(self, batch: int, device: torch.device) -> Tensor:
        return torch.arange(batch, device=device) % self.num_classes

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        y = self.labels(len(x_t), x_t.device)
        null = self.network.null_kwargs({"y": y})["y"]
        out = self.network(torch.cat([x_t, x_t]), torch.cat([t, t]), y=torch.cat([y, null]))
        cond, uncond = out.chunk(2)
        return uncond + self.w * (cond - uncond)


def field_network(field: ProbabilityFlowODE, output: str) -> Any:
    """``net(x_t, t)`` giving ε (``output="eps"``) or the flow velocity ε − x0 (``"flow"``) of ``field``
    at timestep ``t`` (a scalar or a batch of equal values, as diffusers' schedulers pass them)."""
    if output not in ("eps", "flow"):
        raise ValueError(f"unknown network output {output!r}; allowed: eps, flow")

    def net(x_t: Tensor, t: Tensor | float) -> Tensor:
        t0 = float(t.reshape(-1)[0]) if isinstance(t, Tensor) else float(t)
        eps, x0 = field.evaluate_x(x_t, float(field.schedule.sigma(t0)))
        return eps if output == "eps" else eps - x0

    return net


@dataclass
class FewStepProblem:
    """A model with its schedule, a seeded noise batch ``z`` (model scale, at the top of the path) and
    the accurate x0 from it.

    Attributes:
        name: the problem's name.
        model: an ε/flow network ``model(x_t, t)`` or an exact oracle.
        schedule, prediction: as for :func:`~ddim_ode.decode`.
        z: the noise, float64.
        grids: the standard grids tried.
        ref_x0: the reference solution from ``z``; ``ref_error``: its error bound; ``ref_nfe``: its cost.
        network: whether ``model`` is a network (samples can be scored by the Fréchet distance).
        label: what the JSON says about the model.
    """

    name: str
    model: EpsModel | SigmaModel
    schedule: Schedule
    prediction: Prediction
    z: Tensor
    grids: tuple[str, ...]
    ref_x0: Tensor
    ref_error: float
    ref_nfe: int
    network: bool
    label: str

    @property
    def flow(self) -> bool:
        return bool(self.schedule.rectified_flow)

    def sample(self, z: Tensor, solver: str, sigmas: Tensor) -> tuple[Tensor, int]:
        """(x0, NFE) of ``solver`` along ``sigmas`` from ``z``; non-finite results are returned as they are."""
        with torch.no_grad():
            sol = decode(
                z,
                solver,
                sigmas=sigmas,
                model=self.model,
                schedule=self.schedule,
                prediction=self.prediction,
                return_solution=True,
                check_finite=False,
            )
        return sol.x, sol.nfe

    def error(self, solver: str, sigmas: Tensor) -> tuple[float, int]:
        """(RMS error of x0 against the reference, NFE) of ``solver`` along ``sigmas``."""
        x0, nfe = self.sample(self.z, solver, sigmas)
        return rms(x0, self.ref_x0), nfe

    def field(self) -> ProbabilityFlowODE:
        return ProbabilityFlowODE(self.model, self.schedule, prediction=self.prediction)

    def reference(self, z: Tensor, steps: int) -> tuple[Tensor, float, int]:
        """(x0, error bound, NFE) of RK4 on ``steps`` fine steps from ``z`` (and on ``steps // 2``)."""
        kind = "uniform" if self.flow else "logsnr"
        fine, nfe = self.sample(z, "rk4", make_grid(self.schedule, kind, steps))
        coarse, nfe2 = self.sample(z, "rk4", make_grid(self.schedule, kind, steps // 2))
        return fine, rms(fine, coarse), nfe + nfe2

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "schedule": repr(self.schedule),
            "prediction": self.prediction,
            "num": len(self.z),
            "grids": list(self.grids),
            "reference": "rk4 on a fine grid from the same noise",
            "reference_error": self.ref_error,
            "reference_nfe": self.ref_nfe,
        }


def make_fewstep_problem(
    name: str, num: int, *, seed: int, ref_steps: int, device: str | torch.device = "cpu"
) -> FewStepProblem:
    """The problem ``name`` with ``num`` noises drawn with ``seed`` and its RK4 reference on ``ref_steps`` steps."""
    dev = torch.device(device)
    model: Any
    if name == "mixture64":
        model = GaussianMixture.random(k=8, dim=64, seed=0)
        schedule: Schedule = DiscreteSchedule.linear()
        prediction: Prediction = "eps"
        shape: tuple[int, ...] = model.event_shape
        label, network = repr(model), False
    elif name in ("digits", "digits-cond", "digits-flow"):
        resolved = resolve_model(name, device=dev)
        model, schedule, prediction = resolved.model, resolved.schedule, resolved.prediction
        shape = tuple(resolved.metadata["sample_shape"])
        label, network = f"built-in {name} model", True
        if name == "digits-cond":
            model = GuidedNetwork(model, GUIDANCE)
            label += f", guidance w = {GUIDANCE:g}, labels 0..9 in turn"
    else:
        raise ValueError(f"unknown problem {name!r}; allowed: {', '.join(FEWSTEP_PROBLEMS)}")
    grids = ("uniform", "quad", "logsnr", "karras")
    z = torch.randn((num, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dev)
    problem = FewStepProblem(name, model, schedule, prediction, z, grids, z, float("nan"), 0, network, label)
    problem.ref_x0, problem.ref_error, problem.ref_nfe = problem.reference(z, ref_steps)
    return problem

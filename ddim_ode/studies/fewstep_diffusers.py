"""diffusers' own schedulers driven by hand on a few-step problem, for a comparison in the same run.

Each scheduler runs its documented loop (``set_timesteps(nfe)``, then ``scale_model_input`` and
``step`` per timestep, one network call each) on the problem's noise, with the problem's model
wrapped as the network the scheduler expects (:func:`~ddim_ode.studies.fewstep_problems.field_network`):
ε on a VP path (DDPM linear betas), the velocity ε − x0 on a flow path. Samples are float32, as
diffusers runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .fewstep_problems import FewStepProblem, field_network

__all__ = ["DIFFUSERS_VP", "DIFFUSERS_FLOW", "diffusers_schedulers", "diffusers_sample"]

_VP_BETAS = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}


def _dpm(d: Any) -> Any:
    return d.DPMSolverMultistepScheduler(**_VP_BETAS)  # dpmsolver++, order 2, final sigma 0


def _unipc(d: Any) -> Any:
    return d.UniPCMultistepScheduler(**_VP_BETAS)  # bh2, order 2


def _ddim(d: Any) -> Any:
    return d.DDIMScheduler(**_VP_BETAS, timestep_spacing="trailing", clip_sample=False)  # starts at t = 999


def _flow_euler(d: Any) -> Any:
    return d.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def _flow_dpm(d: Any) -> Any:
    return d.DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=1.0)


#: name → constructor, for a VP (DDPM linear schedule) and for a rectified-flow problem
DIFFUSERS_VP: dict[str, Callable[[Any], Any]] = {
    "DPMSolverMultistep": _dpm,
    "UniPCMultistep": _unipc,
    "DDIM": _ddim,
}
DIFFUSERS_FLOW: dict[str, Callable[[Any], Any]] = {
    "FlowMatchEulerDiscrete": _flow_euler,
    "DPMSolverMultistep(flow)": _flow_dpm,
}


def diffusers_schedulers(problem: FewStepProblem) -> dict[str, Callable[[Any], Any]]:
    """The schedulers compared on ``problem`` (empty when diffusers is not installed)."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return {}
    return DIFFUSERS_FLOW if problem.flow else DIFFUSERS_VP


def diffusers_sample(problem: FewStepProblem, name: str, nfe: int, z: Tensor | None = None) -> tuple[Tensor, int]:
    """(x0, network calls) of diffusers' scheduler ``name`` with ``nfe`` timesteps from ``z`` (default the
    problem's noise)."""
    import diffusers

    sched = diffusers_schedulers(problem)[name](diffusers)
    net = field_network(problem.field(), "flow" if problem.flow else "eps")
    x = (problem.z if z is None else z).float()
    if not problem.flow:  # flow-matching schedulers start from the noise itself and scale nothing
        x = x * sched.init_noise_sigma
    sched.set_timesteps(nfe)
    calls = 0
    with torch.no_grad():
        for t in sched.timesteps:
            out = net(x if problem.flow else sched.scale_model_input(x, t), t)
            calls += 1
            x = sched.step(out.float(), t, x).prev_sample
    return x, calls

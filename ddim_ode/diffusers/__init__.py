"""diffusers integration: ddim_ode's solvers as a diffusers scheduler, and exact inversion of pipelines.

Needs the ``diffusers`` extra (``pip install ddim_ode[diffusers]``); ``import ddim_ode`` does not
import it, and neither does :mod:`ddim_ode.diffusers.config` (the names below are imported on first
use, PEP 562, so :mod:`ddim_ode.io` reads scheduler configs without diffusers).

* :class:`ODEScheduler` — a diffusers scheduler running any fixed-grid ddim_ode solver inside a
  pipeline's own loop: ``pipe.scheduler = ODEScheduler.from_scheduler(pipe.scheduler, solver="unipc")``;
  DDPM-type and flow-matching (SD3 / Flux-type) schedulers.
* :func:`invert` — the latents from which a pipeline reproduces a given image (exactly with
  ``solver="belm"``), for reconstruction and prompt-driven editing.
* :func:`pipeline_model` — a pipeline's conditioned network as a model for
  :func:`ddim_ode.decode` / :func:`ddim_ode.encode`.
* :mod:`ddim_ode.diffusers.config` — what a diffusers scheduler config means for the ODE.
* :mod:`ddim_ode.diffusers.prompts` — prompt embeddings and VAE decoding for a Stable-Diffusion-type
  pipeline directory (the command line's ``--prompt``).

See docs/diffusers.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

#: public name -> the submodule that defines it
_EXPORTS = {
    "ODEScheduler": "scheduler",
    "loop_solvers": "scheduler",
    "invert": "inversion",
    "pipeline_model": "inversion",
    "PipelineModel": "inversion",
    "InvertedLatents": "inversion",
    "SchedulerSpec": "config",
    "read_scheduler_config": "config",
}

if TYPE_CHECKING:
    from .config import SchedulerSpec, read_scheduler_config
    from .inversion import InvertedLatents, PipelineModel, invert, pipeline_model
    from .scheduler import ODEScheduler, loop_solvers

__all__ = [
    "ODEScheduler",
    "loop_solvers",
    "invert",
    "pipeline_model",
    "PipelineModel",
    "InvertedLatents",
    "SchedulerSpec",
    "read_scheduler_config",
]


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _EXPORTS)

"""diffusers integration: ddim_ode's solvers as a diffusers scheduler, and exact inversion of pipelines.

Needs the ``diffusers`` extra (``pip install ddim_ode[diffusers]``); ``import ddim_ode`` does not
import it.

* :class:`ODEScheduler` — a diffusers scheduler running any fixed-grid ddim_ode solver inside a
  pipeline's own loop: ``pipe.scheduler = ODEScheduler.from_scheduler(pipe.scheduler, solver="unipc")``.
* :func:`invert` — the latents from which a pipeline reproduces a given image (exactly with
  ``solver="belm"``), for reconstruction and prompt-driven editing.
* :func:`pipeline_model` — a pipeline's conditioned network as an ε-model for
  :func:`ddim_ode.decode` / :func:`ddim_ode.encode`.
* :mod:`ddim_ode.diffusers.config` — what a diffusers scheduler config means for the ODE.

See docs/diffusers.md.
"""

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

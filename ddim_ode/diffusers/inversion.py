"""Exact inversion of a diffusers pipeline's latents: :func:`invert`, :func:`pipeline_model`, :class:`InvertedLatents`.

:func:`invert` encodes an image (through the pipeline's VAE) or clean latents to the x_T that the
same pipeline, run with an :class:`~ddim_ode.diffusers.ODEScheduler` of the same solver, steps,
prompt and guidance, maps back to them. It integrates the probability-flow ODE upwards on the
scheduler's own grid with :func:`ddim_ode.integrate`, evaluating the network exactly as the
pipeline's denoising loop does (:func:`pipeline_model`: the same network call on the same batch, the
same classifier-free guidance out_u + w (out_c − out_u)), so a reversible solver (``"belm"``,
``"reversible-heun"``) sees bit-identical network outputs in both directions and the round trip
is exact up to float rounding (Wang et al. 2024; Kidger et al. 2021). Any other solver gives the
usual approximate inversion (``"euler"`` is DDIM inversion).

A reversible solver's auxiliary state travels with the latents: :class:`InvertedLatents` is a
:class:`~ddim_ode.solvers.ReversibleLatent` that also keeps its state through the pipeline's
``latents * scheduler.init_noise_sigma`` (1.0 for these models), and the scheduler's first
:meth:`~ddim_ode.diffusers.ODEScheduler.step` picks it up.

Pipelines: DDPM/DDIM-type (``UNet2DModel``), Stable Diffusion 1.x/2.x (text-conditioned
``UNet2DConditionModel``) and SD3-type flow matching (``SD3Transformer2DModel`` with a
``FlowMatch*`` scheduler). A flow grid starts at pure noise, σ = ∞, where no reversible solver
is defined: the scheduler of a reversible solver drops that top, so the latents are x at the
grid's next noise level τ₁ < 1 and the pipeline's loop starts there.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import SD3Transformer2DModel, UNet2DConditionModel, UNet2DModel
from torch import Tensor

from ..driver import integrate
from ..schedules import FlowSchedule
from ..solvers import ReversibleLatent, latent_state
from .scheduler import ODEScheduler

__all__ = [
    "InvertedLatents",
    "PipelineModel",
    "invert",
    "pipeline_model",
    "CONDITIONING_KWARGS",
    "SD3_CONDITIONING_KWARGS",
]

#: the pipeline call arguments :func:`invert` and :func:`pipeline_model` take for a Stable Diffusion pipeline
CONDITIONING_KWARGS = (
    "prompt",
    "negative_prompt",
    "prompt_embeds",
    "negative_prompt_embeds",
    "guidance_scale",
    "clip_skip",
)
#: the same for an SD3-type pipeline (three text encoders, pooled embeddings)
SD3_CONDITIONING_KWARGS = (
    "prompt",
    "prompt_2",
    "prompt_3",
    "negative_prompt",
    "negative_prompt_2",
    "negative_prompt_3",
    "prompt_embeds",
    "negative_prompt_embeds",
    "pooled_prompt_embeds",
    "negative_pooled_prompt_embeds",
    "guidance_scale",
    "clip_skip",
    "max_sequence_length",
)


def _is_one(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 1


class InvertedLatents(ReversibleLatent):
    """Latents from :func:`invert` carrying a reversible solver's auxiliary state.

    A :class:`~ddim_ode.solvers.ReversibleLatent` (so :func:`ddim_ode.decode` reads the state too)
    whose multiplication or division by exactly 1 — a pipeline's ``latents * init_noise_sigma`` —
    keeps the state; every other operation returns a plain tensor, as the state belongs to these
    exact values.
    """

    @staticmethod
    def wrap(x: Tensor, state: Any) -> InvertedLatents:
        """``x`` (same storage) carrying ``state``."""
        out = x.as_subclass(InvertedLatents)
        out.state = state
        return out

    def __mul__(self, other: Any) -> Tensor:
        out = super().__mul__(other)
        return InvertedLatents.wrap(out, self.state) if _is_one(other) else out

    def __rmul__(self, other: Any) -> Tensor:
        out = super().__rmul__(other)
        return InvertedLatents.wrap(out, self.state) if _is_one(other) else out

    def __truediv__(self, other: Any) -> Tensor:
        out = super().__truediv__(other)
        return InvertedLatents.wrap(out, self.state) if _is_one(other) else out


class PipelineModel:
    """The network output of a pipeline's denoising loop as a model ``model(x_t, t)``.

    Unconditional UNets are called on ``x_t`` alone; text-conditioned networks (a Stable Diffusion
    UNet, an SD3 transformer) on ``cat([x_t, x_t])`` with ``cat([negative, positive])``
    conditioning, combined as out_u + w (out_c − out_u) when guiding (w > 1), or on ``x_t`` with
    the prompt's. The timestep goes in as the pipeline passes it (a 0-dim tensor to a UNet, one per
    row to SD3's transformer) and a learned variance (twice the channels) is dropped, so the
    outputs are bit-identical to the pipeline's. The output is what the network predicts (ε, v, x0
    or the flow velocity ε − x0).
    """

    def __init__(
        self,
        network: Any,
        conditioning: dict[str, Tensor],
        guidance_scale: float,
        guide: bool,
        timestep_per_row: bool = False,
    ) -> None:
        self.network = network
        self.conditioning = conditioning
        self.guidance_scale = guidance_scale
        self.guide = guide
        self.timestep_per_row = timestep_per_row

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        x_in = torch.cat([x_t] * 2) if self.guide else x_t
        t_in = t[0].expand(x_in.shape[0]) if self.timestep_per_row else t[0]
        out = self.network(x_in, timestep=t_in, return_dict=False, **self.conditioning)[0]
        if self.guide:
            out_u, out_c = out.chunk(2)
            out = out_u + self.guidance_scale * (out_c - out_u)
        if out.shape[1] == 2 * x_t.shape[1]:
            out = out[:, : x_t.shape[1]]
        return out


def _network(pipe: Any) -> Any:
    """The denoising network of a pipeline: its ``unet`` or ``transformer``."""
    components = pipe.components
    return components.get("unet") if components.get("unet") is not None else components.get("transformer")


def pipeline_model(pipe: Any, batch_size: int | None = None, **conditioning: Any) -> PipelineModel:
    """The pipeline's network, conditioned as its ``__call__`` would be, as a model ``model(x_t, t)``.

    For a Stable Diffusion pipeline (a ``UNet2DConditionModel`` with ``encode_prompt``)
    ``conditioning`` takes the call arguments of :data:`CONDITIONING_KWARGS` (``guidance_scale``
    default 7.5, as the pipeline); for an SD3-type pipeline (``SD3Transformer2DModel``) those of
    :data:`SD3_CONDITIONING_KWARGS` (``guidance_scale`` default 7.0; with ``prompt_embeds`` and
    ``pooled_prompt_embeds`` no text encoder is needed); an unconditional pipeline
    (``UNet2DModel``) takes none. The model evaluates the network exactly as the pipeline's loop
    does (see :class:`PipelineModel`); pass it to :func:`ddim_ode.decode` / :func:`ddim_ode.encode`
    with the :class:`ODEScheduler`'s ``schedule``, ``prediction`` and ``sigmas``. ``batch_size``
    checks the number of prompts against the latents.
    """
    network = _network(pipe)
    sd3 = isinstance(network, SD3Transformer2DModel)
    allowed = SD3_CONDITIONING_KWARGS if sd3 else CONDITIONING_KWARGS
    unknown = sorted(set(conditioning) - set(allowed))
    if unknown:
        hint = " (the number of steps is n)" if "num_inference_steps" in unknown else ""
        raise ValueError(f"unsupported pipeline arguments {unknown}{hint}; allowed: {', '.join(allowed)}")
    if isinstance(network, UNet2DModel):
        if conditioning:
            raise ValueError(f"an unconditional pipeline takes no conditioning, got {sorted(conditioning)}")
        return PipelineModel(network, {}, 1.0, False)
    if sd3:
        return _sd3_model(pipe, network, batch_size, conditioning)
    if not isinstance(network, UNet2DConditionModel):
        raise ValueError(
            f"unsupported pipeline {type(pipe).__name__}: its network is {type(network).__name__}; allowed: a "
            "UNet2DModel, a text-conditioned UNet2DConditionModel (Stable Diffusion 1.x/2.x) or an "
            "SD3Transformer2DModel"
        )
    if network.config.addition_embed_type is not None or network.config.time_cond_proj_dim is not None:
        raise ValueError(
            f"unsupported pipeline {type(pipe).__name__}: its UNet takes added conditions "
            "(addition_embed_type / time_cond_proj_dim); allowed: Stable Diffusion 1.x/2.x-type UNets"
        )
    scale = float(conditioning.get("guidance_scale", 7.5))
    guide = scale > 1.0
    positive, negative = pipe.encode_prompt(
        conditioning.get("prompt"),
        network.device,
        1,
        guide,
        conditioning.get("negative_prompt"),
        prompt_embeds=conditioning.get("prompt_embeds"),
        negative_prompt_embeds=conditioning.get("negative_prompt_embeds"),
        clip_skip=conditioning.get("clip_skip"),
    )
    _check_prompts(positive, batch_size)
    embeds = torch.cat([negative, positive]) if guide else positive
    return PipelineModel(network, {"encoder_hidden_states": embeds}, scale, guide)


def _check_prompts(embeds: Tensor, batch_size: int | None) -> None:
    if batch_size is not None and embeds.shape[0] != batch_size:
        raise ValueError(f"{embeds.shape[0]} prompt(s) for {batch_size} latents; give one prompt per latent")


def _sd3_model(pipe: Any, network: Any, batch_size: int | None, conditioning: dict[str, Any]) -> PipelineModel:
    """SD3's loop: ``transformer(x, timestep=t.expand(rows), encoder_hidden_states, pooled_projections)``."""
    scale = float(conditioning.get("guidance_scale", 7.0))
    guide = scale > 1.0
    names = [k for k in SD3_CONDITIONING_KWARGS if k not in ("guidance_scale", "max_sequence_length")]
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        device=network.device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=guide,
        max_sequence_length=conditioning.get("max_sequence_length", 256),
        **{k: conditioning.get(k) for k in names},
    )
    _check_prompts(embeds, batch_size)
    if guide:
        embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
    return PipelineModel(
        network, {"encoder_hidden_states": embeds, "pooled_projections": pooled}, scale, guide, timestep_per_row=True
    )


def _clean_latents(pipe: Any, image: Any, latents: Tensor | None) -> Tensor:
    """What the pipeline's loop ends at for ``image``: VAE latents (mean, times scaling_factor), or the image."""
    if (image is None) == (latents is None):
        raise ValueError("invert needs exactly one of image= and latents=")
    if latents is not None:
        return latents
    vae = pipe.components.get("vae")
    if vae is None:  # pixel-space pipelines: the network's samples are images in [-1, 1]
        if not isinstance(image, Tensor):
            raise ValueError("a pipeline without a VAE takes image= as a tensor in [0, 1], shape (batch, C, H, W)")
        return image * 2.0 - 1.0
    pixels = pipe.image_processor.preprocess(image).to(device=vae.device, dtype=vae.dtype)
    shift = vae.config.get("shift_factor") or 0.0  # SD3's VAE: latents = (mean − shift) · scaling
    return (vae.encode(pixels).latent_dist.mean - shift) * vae.config.scaling_factor


def _pipeline_mu(sched: ODEScheduler, network: Any, x0: Tensor) -> float | None:
    """The μ an SD3-type pipeline computes for latents like ``x0`` when its scheduler shifts dynamically."""
    schedule = sched.spec.schedule
    if not (isinstance(schedule, FlowSchedule) and schedule.use_dynamic_shifting):
        return None
    if not isinstance(network, SD3Transformer2DModel):
        raise ValueError("this scheduler shifts its grid with the image size (use_dynamic_shifting): pass mu=...")
    patch = int(network.config.patch_size)
    return schedule.mu_for((x0.shape[-2] // patch) * (x0.shape[-1] // patch))


def invert(
    pipe: Any,
    image: Any = None,
    latents: Tensor | None = None,
    n: int = 50,
    solver: str = "belm",
    *,
    solver_options: dict[str, Any] | None = None,
    mu: float | None = None,
    **pipe_call_kwargs: Any,
) -> Tensor:
    """The initial latents from which ``pipe`` reproduces ``image`` (or ``latents``).

    Args:
        pipe: a diffusers pipeline with a ``unet`` (``UNet2DModel``, or a Stable-Diffusion-type
            ``UNet2DConditionModel``) and a DDPM-type scheduler, or a ``transformer``
            (``SD3Transformer2DModel``) and a flow-matching scheduler; and an optional ``vae``.
        image: an image the pipeline's ``image_processor`` accepts (PIL, or a tensor in [0, 1]),
            encoded as ``(vae.encode(image).latent_dist.mean − shift_factor) * scaling_factor``;
            for a pipeline without a VAE a tensor in [0, 1] (mapped to the network's [-1, 1]).
        latents: instead of ``image``, the clean latents (what the pipeline returns with
            ``output_type="latent"``).
        n: the number of steps, the pipeline's ``num_inference_steps``.
        solver: the solver, the same as the decoding scheduler's; a reversible one (``"belm"``,
            default, or ``"reversible-heun"``) inverts exactly.
        solver_options: its constructor options.
        mu: the dynamic shift of a flow-matching scheduler with ``use_dynamic_shifting``, as passed
            to the pipeline; by default, for an SD3-type pipeline, the μ its ``__call__`` computes
            from the latents' size (:meth:`~ddim_ode.schedules.FlowSchedule.mu_for` of
            (H / patch) (W / patch) tokens).
        pipe_call_kwargs: the conditioning of the pipeline call to reproduce (``prompt`` or
            ``prompt_embeds``, ``negative_prompt`` / ``negative_prompt_embeds``,
            ``guidance_scale`` — default 7.5 for Stable Diffusion, 7.0 for SD3, as the pipelines —
            and ``clip_skip``; for SD3 also ``pooled_prompt_embeds`` and the like, see
            :data:`SD3_CONDITIONING_KWARGS`).

    The grid is the one ``pipe.scheduler`` gives for ``n`` steps (its timesteps and final σ; an
    :class:`ODEScheduler` keeps its ``grid``); for a reversible solver on a flow-matching grid,
    without its top at pure noise (σ = ∞). Returns x_T in the model's scale at the top of the
    grid; for a reversible solver an :class:`InvertedLatents` carrying the solver's state: pass it
    unchanged as ``latents=`` to the same pipeline after
    ``pipe.scheduler = ODEScheduler.from_scheduler(pipe.scheduler, solver=solver)`` with the same
    ``num_inference_steps=n`` and conditioning, and the pipeline's latents come back to
    rounding; with another prompt, it edits. Exactness needs a float32 pipeline.
    """
    source = pipe.components.get("scheduler")
    grid = source.config.grid if isinstance(source, ODEScheduler) else None
    sched = ODEScheduler.from_scheduler(source, solver=solver, grid=grid, **(solver_options or {}))
    x0 = _clean_latents(pipe, image, latents)
    model = pipeline_model(pipe, batch_size=x0.shape[0], **pipe_call_kwargs)
    sched.set_timesteps(n, mu=mu if mu is not None else _pipeline_mu(sched, model.network, x0))
    with torch.no_grad():
        x_T = integrate(
            x0.as_subclass(Tensor),
            sched.solver,
            model=model,
            schedule=sched.schedule,
            sigmas=sched.sigmas.flip(0),
            prediction=sched.prediction,
        )
    state = latent_state(x_T)  # type: ignore[arg-type]
    return InvertedLatents.wrap(x_T, state) if state is not None else x_T  # type: ignore[arg-type]

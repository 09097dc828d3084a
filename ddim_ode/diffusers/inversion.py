"""Exact inversion of a diffusers pipeline's latents: :func:`invert`, :func:`pipeline_model`, :class:`InvertedLatents`.

:func:`invert` encodes an image (through the pipeline's VAE) or clean latents to the x_T that the
same pipeline, run with an :class:`~ddim_ode.diffusers.ODEScheduler` of the same solver, steps,
prompt and guidance, maps back to them. It integrates the probability-flow ODE upwards on the
scheduler's own grid with :func:`ddim_ode.integrate`, evaluating the network exactly as the
pipeline's denoising loop does (:func:`pipeline_model`: the same UNet call on the same batch, the
same classifier-free guidance ε = ε_u + w (ε_c − ε_u)), so a reversible solver (``"belm"``,
``"reversible-heun"``) sees bit-identical network outputs in both directions and the round trip
is exact up to float rounding (Wang et al. 2024; Kidger et al. 2021). Any other solver gives the
usual approximate inversion (``"euler"`` is DDIM inversion).

A reversible solver's auxiliary state travels with the latents: :class:`InvertedLatents` is a
:class:`~ddim_ode.solvers.ReversibleLatent` that also keeps its state through the pipeline's
``latents * scheduler.init_noise_sigma`` (1.0 for these models), and the scheduler's first
:meth:`~ddim_ode.diffusers.ODEScheduler.step` picks it up.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from torch import Tensor

from ..driver import integrate
from ..solvers import ReversibleLatent, latent_state
from .scheduler import ODEScheduler

__all__ = ["InvertedLatents", "PipelineModel", "invert", "pipeline_model", "CONDITIONING_KWARGS"]

#: the pipeline call arguments :func:`invert` and :func:`pipeline_model` take (text-conditioned pipelines)
CONDITIONING_KWARGS = (
    "prompt",
    "negative_prompt",
    "prompt_embeds",
    "negative_prompt_embeds",
    "guidance_scale",
    "clip_skip",
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
    """The network output of a pipeline's denoising loop as an ε-model ``model(x_t, t)``.

    Unconditional UNets are called as ``unet(x_t, t).sample``; text-conditioned ones on
    ``cat([x_t, x_t])`` with ``cat([negative, positive])`` embeddings and combined as
    ε_u + w (ε_c − ε_u) when guiding (w > 1), or on ``x_t`` with the prompt embeddings. The
    timestep goes in as the 0-dim tensor the pipeline passes, and a learned variance (twice the
    channels) is dropped, so the outputs are bit-identical to the pipeline's.
    """

    def __init__(self, unet: Any, embeds: Tensor | None, guidance_scale: float, guide: bool) -> None:
        self.unet = unet
        self.embeds = embeds
        self.guidance_scale = guidance_scale
        self.guide = guide

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        t0 = t[0]
        if self.embeds is None:
            out = self.unet(x_t, t0).sample
        else:
            x_in = torch.cat([x_t] * 2) if self.guide else x_t
            out = self.unet(x_in, t0, encoder_hidden_states=self.embeds, return_dict=False)[0]
            if self.guide:
                out_u, out_c = out.chunk(2)
                out = out_u + self.guidance_scale * (out_c - out_u)
        if out.shape[1] == 2 * x_t.shape[1]:
            out = out[:, : x_t.shape[1]]
        return out


def pipeline_model(pipe: Any, batch_size: int | None = None, **conditioning: Any) -> PipelineModel:
    """The pipeline's network, conditioned as its ``__call__`` would be, as an ε-model ``model(x_t, t)``.

    For a text-conditioned pipeline (a ``UNet2DConditionModel`` with ``encode_prompt``, as Stable
    Diffusion) ``conditioning`` takes the call arguments of :data:`CONDITIONING_KWARGS`
    (``guidance_scale`` default 7.5, as the pipelines); an unconditional pipeline (``UNet2DModel``)
    takes none. The model evaluates the UNet exactly as the pipeline's loop does (see
    :class:`PipelineModel`); pass it to :func:`ddim_ode.decode` / :func:`ddim_ode.encode` with the
    :class:`ODEScheduler`'s ``schedule``, ``prediction`` and ``sigmas``. ``batch_size`` checks the
    number of prompts against the latents.
    """
    unknown = sorted(set(conditioning) - set(CONDITIONING_KWARGS))
    if unknown:
        hint = " (the number of steps is n)" if "num_inference_steps" in unknown else ""
        raise ValueError(f"unsupported pipeline arguments {unknown}{hint}; allowed: {', '.join(CONDITIONING_KWARGS)}")
    unet = pipe.components.get("unet")
    if isinstance(unet, UNet2DModel):
        if conditioning:
            raise ValueError(f"an unconditional pipeline takes no conditioning, got {sorted(conditioning)}")
        return PipelineModel(unet, None, 1.0, False)
    if not isinstance(unet, UNet2DConditionModel):
        raise ValueError(
            f"unsupported pipeline {type(pipe).__name__}: its network is {type(unet).__name__}; "
            "allowed: a UNet2DModel or a text-conditioned UNet2DConditionModel (Stable Diffusion 1.x/2.x)"
        )
    if unet.config.addition_embed_type is not None or unet.config.time_cond_proj_dim is not None:
        raise ValueError(
            f"unsupported pipeline {type(pipe).__name__}: its UNet takes added conditions "
            "(addition_embed_type / time_cond_proj_dim); allowed: Stable Diffusion 1.x/2.x-type UNets"
        )
    scale = float(conditioning.get("guidance_scale", 7.5))
    guide = scale > 1.0
    positive, negative = pipe.encode_prompt(
        conditioning.get("prompt"),
        unet.device,
        1,
        guide,
        conditioning.get("negative_prompt"),
        prompt_embeds=conditioning.get("prompt_embeds"),
        negative_prompt_embeds=conditioning.get("negative_prompt_embeds"),
        clip_skip=conditioning.get("clip_skip"),
    )
    if batch_size is not None and positive.shape[0] != batch_size:
        raise ValueError(f"{positive.shape[0]} prompt(s) for {batch_size} latents; give one prompt per latent")
    embeds = torch.cat([negative, positive]) if guide else positive
    return PipelineModel(unet, embeds, scale, guide)


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
    return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor


def invert(
    pipe: Any,
    image: Any = None,
    latents: Tensor | None = None,
    n: int = 50,
    solver: str = "belm",
    *,
    solver_options: dict[str, Any] | None = None,
    **pipe_call_kwargs: Any,
) -> Tensor:
    """The initial latents from which ``pipe`` reproduces ``image`` (or ``latents``).

    Args:
        pipe: a diffusers pipeline with a ``unet`` (``UNet2DModel``, or a Stable-Diffusion-type
            ``UNet2DConditionModel``), an optional ``vae`` and a DDPM-type scheduler.
        image: an image the pipeline's ``image_processor`` accepts (PIL, or a tensor in [0, 1]),
            encoded as ``vae.encode(image).latent_dist.mean * scaling_factor``; for a pipeline
            without a VAE a tensor in [0, 1] (mapped to the network's [-1, 1]).
        latents: instead of ``image``, the clean latents (what the pipeline returns with
            ``output_type="latent"``).
        n: the number of steps, the pipeline's ``num_inference_steps``.
        solver: the solver, the same as the decoding scheduler's; a reversible one (``"belm"``,
            default, or ``"reversible-heun"``) inverts exactly.
        solver_options: its constructor options.
        pipe_call_kwargs: the conditioning of the pipeline call to reproduce (``prompt`` or
            ``prompt_embeds``, ``negative_prompt`` / ``negative_prompt_embeds``,
            ``guidance_scale`` — default 7.5 as the pipelines — and ``clip_skip``).

    The grid is the one ``pipe.scheduler`` gives for ``n`` steps (its timesteps and final σ; an
    :class:`ODEScheduler` keeps its ``grid``). Returns x_T in the model's scale at the top of the
    grid; for a reversible solver an :class:`InvertedLatents` carrying the solver's state: pass it
    unchanged as ``latents=`` to the same pipeline after
    ``pipe.scheduler = ODEScheduler.from_scheduler(pipe.scheduler, solver=solver)`` with the same
    ``num_inference_steps=n`` and conditioning, and the pipeline's latents come back to
    rounding; with another prompt, it edits. Exactness needs a float32 pipeline.
    """
    source = pipe.components.get("scheduler")
    grid = source.config.grid if isinstance(source, ODEScheduler) else None
    sched = ODEScheduler.from_scheduler(source, solver=solver, grid=grid, **(solver_options or {}))
    sched.set_timesteps(n)
    x0 = _clean_latents(pipe, image, latents)
    model = pipeline_model(pipe, batch_size=x0.shape[0], **pipe_call_kwargs)
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

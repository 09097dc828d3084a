"""Text prompts for a Stable-Diffusion-type pipeline directory: embeddings, guidance and VAE decoding.

:func:`ddim_ode.io.load_diffusers_unet` loads the denoising network of a pipeline directory and
records the folders beside it (``metadata["components"]``). :class:`TextToImage` loads the
tokenizer, the CLIP text encoder and the VAE from there and gives

* prompt embeddings as ``StableDiffusionPipeline.encode_prompt`` computes them (the text
  encoder's last hidden state over the prompt padded to the tokenizer's length), for
  ``model_kwargs={"encoder_hidden_states": ...}`` of :func:`ddim_ode.decode`;
* images from latents: ``vae.decode(latents / scaling_factor + shift_factor)``, in [−1, 1].

:class:`PromptConditioning` adds classifier-free guidance against the embeddings of a negative
prompt (default ""), out_u + w (out_c − out_u) with w = 7.5 by default, as the pipeline. The
command line's ``sample --prompt`` runs on :func:`add_prompt_arguments` and
:func:`prompt_conditioning`. Model files are read as safetensors only. Needs the ``diffusers``
extra (diffusers and transformers), imported on first use.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["TextToImage", "PromptConditioning", "add_prompt_arguments", "prompt_conditioning", "DEFAULT_GUIDANCE"]

#: the guidance weight of Stable Diffusion pipelines when none is given
DEFAULT_GUIDANCE = 7.5
#: the pipeline folders :class:`TextToImage` reads
_PARTS = ("tokenizer", "text_encoder", "vae")


@dataclass
class TextToImage:
    """The tokenizer, text encoder and VAE of a Stable Diffusion 1.x/2.x pipeline directory.

    Attributes:
        tokenizer: the CLIP tokenizer.
        text_encoder: the ``CLIPTextModel``, in eval mode.
        vae: the ``AutoencoderKL``, in eval mode.
        scaling_factor, shift_factor: latents = (VAE mean − shift_factor) · scaling_factor.
    """

    tokenizer: Any
    text_encoder: Any
    vae: Any
    scaling_factor: float
    shift_factor: float

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], device: str | torch.device | None = None) -> TextToImage:
        """Load the parts named in the metadata of :func:`ddim_ode.io.load_diffusers_unet` (a network
        inside a pipeline directory with ``tokenizer/``, ``text_encoder/`` and ``vae/``)."""
        components = metadata.get("components") or {}
        missing = [p for p in _PARTS if p not in components]
        if missing:
            where = metadata.get("pipeline") or metadata.get("source")
            raise ValueError(
                f"{where} has no {', '.join(f'{p}/' for p in missing)} folder: text prompts need a pipeline "
                f"directory with {', '.join(f'{p}/' for p in _PARTS)} beside the unet/"
            )
        try:
            import diffusers
            import transformers
        except ImportError as err:
            raise ImportError(
                "text prompts need diffusers and transformers; install them with `pip install ddim_ode[diffusers]`"
            ) from err
        with torch.random.fork_rng(devices=[]):  # weights are read, not drawn: leave the global RNG alone
            tokenizer = transformers.AutoTokenizer.from_pretrained(components["tokenizer"])
            text_encoder = transformers.CLIPTextModel.from_pretrained(components["text_encoder"], use_safetensors=True)
            vae = diffusers.AutoencoderKL.from_pretrained(components["vae"], use_safetensors=True)
        text_encoder = text_encoder.to(device).eval().requires_grad_(False)
        vae = vae.to(device).eval().requires_grad_(False)
        return cls(
            tokenizer,
            text_encoder,
            vae,
            float(metadata.get("vae_scaling_factor") or vae.config.scaling_factor),
            float(metadata.get("vae_shift_factor") or 0.0),
        )

    @property
    def device(self) -> torch.device:
        return self.text_encoder.device

    def embed(self, prompts: Sequence[str]) -> Tensor:
        """The text encoder's last hidden state, ``(len(prompts), model_max_length, hidden)``."""
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        with torch.no_grad():
            return self.text_encoder(ids.to(self.device))[0]

    def to_images(self, latents: Tensor, batch_size: int | None = None) -> Tensor:
        """Images in [−1, 1] from latents, ``batch_size`` at a time (default: all at once)."""
        step = batch_size or latents.shape[0]
        dtype = self.vae.dtype
        with torch.no_grad():
            parts = [
                self.vae.decode((z / self.scaling_factor + self.shift_factor).to(dtype)).sample.to(latents.dtype)
                for z in latents.split(step)
            ]
        return torch.cat(parts)


@dataclass
class PromptConditioning:
    """One prompt, its negative and the guidance weight, as keyword arguments of :func:`ddim_ode.decode`."""

    text: TextToImage
    prompt_embeds: Tensor  # (1, length, hidden)
    negative_embeds: Tensor
    guidance_scale: float

    @classmethod
    def of(
        cls, text: TextToImage, prompt: str, negative_prompt: str | None = None, guidance_scale: float | None = None
    ) -> PromptConditioning:
        w = DEFAULT_GUIDANCE if guidance_scale is None else float(guidance_scale)
        return cls(text, text.embed([prompt]), text.embed([negative_prompt or ""]), w)  # one call each, as the pipeline

    @property
    def guided(self) -> bool:
        """Whether guidance applies (w > 1, as the pipeline)."""
        return self.guidance_scale > 1.0

    def to_images(self, latents: Tensor, batch_size: int | None = None) -> Tensor:
        """Images in [−1, 1] from latents through the pipeline's VAE (:meth:`TextToImage.to_images`)."""
        return self.text.to_images(latents, batch_size)

    def decode_kwargs(self, batch: int) -> dict[str, Any]:
        """``model_kwargs`` (and, when guided, ``guidance_scale`` and ``uncond_kwargs``) for ``batch`` samples."""
        out: dict[str, Any] = {"model_kwargs": {"encoder_hidden_states": self.prompt_embeds.expand(batch, -1, -1)}}
        if self.guided:
            out["guidance_scale"] = self.guidance_scale
            out["uncond_kwargs"] = {"encoder_hidden_states": self.negative_embeds.expand(batch, -1, -1)}
        return out


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """``--prompt``, ``--negative-prompt`` and ``--guidance`` (unless the parser has it already: the
    flag is shared with class-conditional models) of ``ddim-ode sample``."""
    parser.add_argument("--prompt", help="text prompt, for a Stable Diffusion pipeline directory given as --model")
    parser.add_argument("--negative-prompt", help="the prompt guided away from (default: the empty prompt)")
    try:
        parser.add_argument(
            "--guidance", type=float, help=f"classifier-free guidance weight (pipelines: default {DEFAULT_GUIDANCE})"
        )
    except argparse.ArgumentError:  # defined by the command line itself
        pass


def prompt_conditioning(
    args: argparse.Namespace, metadata: Mapping[str, Any], device: str | torch.device | None = None
) -> PromptConditioning | None:
    """The prompt conditioning of a command line for the model described by ``metadata``.

    ``None`` for a model that takes no text; for a text-conditioned pipeline directory (a
    ``UNet2DConditionModel`` whose conditioning is ``encoder_hidden_states``), its tokenizer, text
    encoder and VAE with the embeddings of ``--prompt`` and ``--negative-prompt`` and the
    ``--guidance`` weight. Raises ``ValueError`` for a prompt given to a model that takes none,
    a text-conditioned model without a prompt (or on a command without ``--prompt``) and
    conditioning the command line cannot give (SD3 transformers).
    """
    given = vars(args)
    prompt, negative = given.get("prompt"), given.get("negative_prompt")
    conditioning = list(metadata.get("conditioning") or [])
    if not conditioning:
        if prompt is not None or negative is not None:
            raise ValueError(
                "--prompt/--negative-prompt need a text-conditioned model: a Stable Diffusion pipeline directory "
                "as --model; this model takes no text"
            )
        return None
    what = f"{metadata.get('network_class', 'this network')} (conditioning: {', '.join(conditioning)})"
    if conditioning != ["encoder_hidden_states"]:
        raise ValueError(
            f"the command line cannot condition {what}; allowed: Stable Diffusion 1.x/2.x pipeline directories "
            "(a UNet2DConditionModel with a CLIP text encoder), or ddim_ode.decode with model_kwargs"
        )
    if "prompt" not in given:
        raise ValueError(f"{what} is text-conditioned: only `ddim-ode sample --prompt ...` can run it")
    if prompt is None:
        raise ValueError(f"{what} is text-conditioned: pass --prompt '...'")
    text = TextToImage.from_metadata(metadata, device)
    return PromptConditioning.of(text, prompt, negative, given.get("guidance"))

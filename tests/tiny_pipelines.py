"""Tiny diffusers pipelines with random weights, built from configs (no hub access), for the diffusers tests.

* :func:`sd_pipeline` — a Stable Diffusion pipeline: UNet2DConditionModel, AutoencoderKL, CLIPTextModel and a
  CLIPTokenizer built from a character-level byte vocabulary written to a folder;
* :func:`sd3_pipeline` — an SD3 pipeline with a tiny SD3Transformer2DModel and no text encoders or VAE
  (conditioned through prompt embeddings, :func:`sd3_conditioning`);
* :class:`VelocityNet` — a small flow network v(x_t, timestep) for hand loops.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

SD_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def sd_pipeline(folder: Path, scheduler=None):
    """A tiny StableDiffusionPipeline (8×8 latents, 16×16 images, DDIM scheduler with the SD config by default);
    its tokenizer's files are written to ``folder / "tok"``."""
    import diffusers
    import transformers
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {"<|startoftext|>": 0, "!": 1, "<|endoftext|>": 2}
    for c in sorted(ByteLevel.alphabet()):  # a character-level byte BPE vocabulary (no merges)
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tok = Path(folder) / "tok"
    tok.mkdir(parents=True, exist_ok=True)
    (tok / "vocab.json").write_text(json.dumps(vocab))
    (tok / "merges.txt").write_text("#version: 0.2\n")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = diffusers.UNet2DConditionModel(
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
        )
        vae = diffusers.AutoencoderKL(
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            sample_size=16,
        )
        text = transformers.CLIPTextModel(
            transformers.CLIPTextConfig(
                hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000
            )
        )
    return diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=transformers.CLIPTokenizer.from_pretrained(tok, model_max_length=16),
        unet=unet,
        scheduler=scheduler if scheduler is not None else diffusers.DDIMScheduler(**SD_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def sd3_pipeline(scheduler):
    """A tiny StableDiffusion3Pipeline (4×8×8 latents, patch 2) without text encoders or VAE."""
    import diffusers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = diffusers.SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=16,
            caption_projection_dim=16,
            pooled_projection_dim=8,
            pos_embed_max_size=8,
        )
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer.eval(),
        scheduler=scheduler,
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd3_conditioning(seed: int = 1, batch: int = 1) -> dict[str, Tensor]:
    """Prompt and pooled embeddings (and negative ones) for :func:`sd3_pipeline`'s transformer."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        prompt_embeds=torch.randn(batch, 5, 16, generator=g),
        pooled_prompt_embeds=torch.randn(batch, 8, generator=g),
        negative_prompt_embeds=torch.randn(batch, 5, 16, generator=g),
        negative_pooled_prompt_embeds=torch.randn(batch, 8, generator=g),
    )


class VelocityNet(torch.nn.Module):
    """A small random-weight float32 flow network ``v(x_t, timestep)`` with the timestep in [0, 1000]."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(dim + 2, 32, generator=g) * 0.5)
        self.w2 = torch.nn.Parameter(torch.randn(32, dim, generator=g) * 0.5)
        self.requires_grad_(False)

    def forward(self, x: Tensor, timestep: Tensor) -> Tensor:
        tt = torch.as_tensor(timestep).reshape(-1).expand(x.shape[0]).to(x.dtype)[:, None] / 1000.0
        return torch.tanh(torch.cat([x, torch.sin(3 * tt), torch.cos(3 * tt)], 1) @ self.w1) @ self.w2 - x

"""Loading diffusers pipeline and model directories with ddim_ode.io, decoding them, and `sample --prompt`.

Tiny pipelines with random weights built from configs (tests/tiny_pipelines.py), saved with
``save_pretrained`` and loaded back with :func:`ddim_ode.io.load_any` or by path through
:func:`ddim_ode.decode`: a Stable Diffusion pipeline (text-conditioned UNet2DConditionModel, VAE,
CLIP text encoder) and SD3 pipelines (SD3Transformer2DModel, FlowMatchEulerDiscreteScheduler).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from tiny_pipelines import sd3_conditioning, sd3_pipeline, sd_pipeline  # noqa: E402

import ddim_ode  # noqa: E402
from ddim_ode.cli import main  # noqa: E402
from ddim_ode.diffusers import ODEScheduler, pipeline_model  # noqa: E402
from ddim_ode.diffusers.prompts import TextToImage  # noqa: E402
from ddim_ode.io import DiffusersEpsModel, ModelFormatError, load_any, load_diffusers_unet  # noqa: E402
from ddim_ode.schedules import FlowSchedule  # noqa: E402


def _relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """A tiny Stable Diffusion pipeline saved to a directory, and the pipeline loaded back from it."""
    root = tmp_path_factory.mktemp("sd")
    sd_pipeline(root).save_pretrained(root / "pipe")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(root / "pipe", safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe, root / "pipe"


def test_import_io_and_config_do_not_import_diffusers():
    code = "import sys, ddim_ode.io, ddim_ode.diffusers.config, ddim_ode.cli; sys.exit(int('diffusers' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_load_stable_diffusion_pipeline_directory(sd):
    pipe, path = sd
    model, schedule, meta = load_any(path)
    assert isinstance(model, DiffusersEpsModel) and meta["network_class"] == "UNet2DConditionModel"
    assert meta["conditioning"] == ["encoder_hidden_states"] and meta["prediction"] == "eps"
    assert meta["sample_shape"] == [4, 8, 8] and meta["pipeline_class"] == "StableDiffusionPipeline"
    assert meta["vae_scaling_factor"] == pipe.vae.config.scaling_factor and meta["vae_shift_factor"] == 0.0
    assert {"vae", "text_encoder", "tokenizer", "scheduler"} <= set(meta["components"])
    assert meta["pipeline"] == str(path) and "unet" not in meta["components"]
    # the schedule of ODEScheduler for the same config: one reader serves both
    assert torch.equal(schedule.alphas_cumprod, ODEScheduler.from_config(pipe.scheduler.config).schedule.alphas_cumprod)
    emb = pipe.encode_prompt("a cat", "cpu", 1, False)[0]
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([900.0, 20.0])
    with torch.no_grad():
        want = pipe.unet(x, t, encoder_hidden_states=emb.expand(2, -1, -1)).sample
    assert torch.equal(model(x, t, encoder_hidden_states=emb.expand(2, -1, -1)), want)
    assert load_diffusers_unet(path / "unet").metadata["components"] == meta["components"]  # from the unet folder


def test_decode_a_loaded_pipeline_with_prompt_embeddings_and_guidance(sd):
    pipe, path = sd
    pos, neg = (pipe.encode_prompt(p, "cpu", 1, False)[0] for p in ("a cat", ""))
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    schedule = load_any(path).schedule
    run = dict(solver="dpm-solver++2m", n=5)
    with torch.no_grad():
        got = ddim_ode.decode(
            x_T,
            model=str(path),
            model_kwargs={"encoder_hidden_states": pos.expand(2, -1, -1)},
            guidance_scale=7.5,
            uncond_kwargs={"encoder_hidden_states": neg.expand(2, -1, -1)},
            **run,
        )
        reference = pipeline_model(pipe, prompt=["a cat"] * 2, negative_prompt=[""] * 2, guidance_scale=7.5)
        want = ddim_ode.decode(x_T, model=reference, schedule=schedule, **run)
    assert _relative_gap(got, want) < 1e-6  # the same guided evaluations (equal in the measurement)


@pytest.mark.parametrize("config", [dict(shift=3.0), dict(use_dynamic_shifting=True)], ids=["shift3", "dynamic"])
def test_load_and_decode_an_sd3_pipeline_directory(tmp_path, config):
    flow = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    pipe = sd3_pipeline(flow)
    pipe.save_pretrained(tmp_path / "sd3")
    model, schedule, meta = load_any(tmp_path / "sd3")
    assert isinstance(schedule, FlowSchedule) and meta["prediction"] == "flow" and meta["prediction_type"] is None
    assert meta["conditioning"] == ["encoder_hidden_states", "pooled_projections"]
    assert meta["sample_shape"] == [4, 8, 8] and meta["image_seq_len"] == 16  # (8 / patch 2)^2 tokens
    if config.get("use_dynamic_shifting"):
        assert schedule.mu == pytest.approx(schedule.mu_for(16), abs=0)
    else:
        assert schedule.shift == 3.0
    cond = sd3_conditioning()
    x_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    want = pipe(
        latents=x_T, num_inference_steps=6, guidance_scale=1.0, output_type="latent", height=64, width=64, **cond
    ).images
    kwargs = {"encoder_hidden_states": cond["prompt_embeds"], "pooled_projections": cond["pooled_prompt_embeds"]}
    with torch.no_grad():  # decode's default grid on the loaded FlowSchedule is the pipeline's, from sigma = inf
        got = ddim_ode.decode(x_T, "euler", 6, model=str(tmp_path / "sd3"), model_kwargs=kwargs)
    assert _relative_gap(got, want) < 2e-6  # float32 rounding of the steps (1e-7 relative measured)


def test_loading_errors(tmp_path, sd):
    _, path = sd
    flux = tmp_path / "flux"
    (flux / "transformer").mkdir(parents=True)
    (flux / "transformer" / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    with pytest.raises(
        ModelFormatError, match="allowed: 'UNet2DModel', 'UNet2DConditionModel', 'SD3Transformer2DModel'"
    ):
        load_any(flux)
    sdxl = tmp_path / "sdxl"
    (sdxl / "unet").mkdir(parents=True)
    config = json.loads((path / "unet" / "config.json").read_text())
    (sdxl / "unet" / "config.json").write_text(json.dumps({**config, "addition_embed_type": "text_time"}))
    with pytest.raises(ModelFormatError, match="added conditions .* allowed: text-conditioned UNets"):
        load_any(sdxl)
    bad = tmp_path / "bad"
    (bad / "unet").mkdir(parents=True)
    (bad / "unet" / "config.json").write_text(json.dumps(config))
    (bad / "scheduler").mkdir()
    (bad / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler", "invert_sigmas": True})
    )
    with pytest.raises(ModelFormatError, match=r"scheduler_config\.json: unsupported invert_sigmas=True"):
        load_any(bad)


def test_text_to_image_parts_match_the_pipeline(sd):
    pipe, path = sd
    text = TextToImage.from_metadata(load_any(path).metadata)
    assert torch.equal(text.embed(["a cat"]), pipe.encode_prompt("a cat", "cpu", 1, False)[0])
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample
    assert torch.equal(text.to_images(z), want)
    assert torch.allclose(text.to_images(z, batch_size=1), want, atol=1e-5)  # other batches, other rounding


def _cli(*args, cwd):
    """``ddim-ode ARGS`` run in ``cwd``: the exit status and what went to stderr."""
    err, here = io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main([str(a) for a in args])
            except SystemExit as stop:
                code = int(stop.code or 0)
    finally:
        os.chdir(here)
    return code, err.getvalue()


def test_cli_samples_a_pipeline_directory_with_a_prompt(sd, tmp_path):
    pipe, path = sd
    common = ("--num", 2, "-n", 4, "--solver", "dpm-solver++2m", "--device", "cpu", "-q")
    code, err = _cli(
        "sample", "--model", path, "--prompt", "a cat", "--guidance", 7.5, "--out", "x.png", *common, cwd=tmp_path
    )
    assert code == 0, err
    assert (tmp_path / "x.png").stat().st_size > 200
    with np.load(tmp_path / "x.npz") as f:
        images, latents = torch.from_numpy(f["samples"]), torch.from_numpy(f["latents"])
    assert images.shape == (2, 3, 16, 16) and latents.shape == (2, 4, 8, 8)
    # the same as the pipeline run with ODEScheduler on the same grid and noise (images in [0, 1])
    source = pipe.scheduler
    pipe.scheduler = ODEScheduler.from_scheduler(source, solver="dpm-solver++2m", grid="uniform")
    want = pipe(["a cat"] * 2, latents=latents, num_inference_steps=4, guidance_scale=7.5, output_type="pt").images
    pipe.scheduler = source
    assert float(((images / 2 + 0.5).clamp(0, 1) - want).abs().max()) < 1e-5
    # errors, one line each: a prompt for a model without text, a text model without a prompt or on another command
    code, err = _cli("sample", "--prompt", "a cat", "--out", "y.png", *common, cwd=tmp_path)
    assert code == 2 and "this model takes no text" in err
    code, err = _cli("sample", "--model", path, "--out", "y.png", *common, cwd=tmp_path)
    assert code == 2 and "is text-conditioned: pass --prompt" in err
    code, err = _cli("encode", "--model", path, "--input", "digits", "--out", "z.npz", "--device", "cpu", cwd=tmp_path)
    assert code == 2 and "only `ddim-ode sample --prompt" in err

"""The diffusers integration: ODEScheduler in pipeline loops, exact inversion of pipeline latents, errors.

Tiny models with random weights, built from configs (no hub access): a UNet2DModel for hand loops
over ``scheduler.timesteps`` (the loop of DDPMPipeline / DDIMPipeline), and a Stable Diffusion
pipeline (UNet2DConditionModel, AutoencoderKL, CLIPTextModel and a CLIPTokenizer built from a
vocabulary written here) saved with ``save_pretrained`` and loaded back.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import ddim_ode  # noqa: E402
from ddim_ode.diffusers import InvertedLatents, ODEScheduler, invert, loop_solvers, pipeline_model  # noqa: E402
from ddim_ode.io import DiffusersEpsModel  # noqa: E402

SD_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def _relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def unet():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = diffusers.UNet2DModel(
            sample_size=8,
            in_channels=3,
            out_channels=3,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
        )
    return net.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def x_T():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _loop(unet, scheduler, x, n):
    """The loop of DDPMPipeline / DDIMPipeline: one network call and one step per entry of timesteps."""
    scheduler.set_timesteps(n)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    return x


def test_import_ddim_ode_does_not_import_diffusers():
    code = "import sys, ddim_ode; sys.exit(int('diffusers' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize(
    "config, tol",
    [
        (dict(SD_SCHEDULER), 2e-6),
        (dict(SD_SCHEDULER, prediction_type="v_prediction", timestep_spacing="trailing", steps_offset=0), 2e-6),
        # x0 -> eps divides by sqrt(1 - alpha_bar); at t = 0 of the cosine schedule 1 - alpha_bar = 4.1e-5
        # is off by 5e-4 relative in diffusers' float32
        (dict(clip_sample=False, prediction_type="sample", beta_schedule="squaredcos_cap_v2"), 3e-5),
    ],
    ids=["eps-leading-scaled_linear", "v-trailing", "x0-cosine"],
)
def test_euler_reproduces_ddim_scheduler(unet, x_T, config, tol):
    ddim = diffusers.DDIMScheduler(**config)
    ode = ODEScheduler.from_scheduler(ddim, solver="euler")
    ode.set_timesteps(5)
    ddim.set_timesteps(5)
    assert torch.equal(ode.timesteps, ddim.timesteps.float())
    # float64 alpha_bar here against diffusers' float32 alpha_bar: agreement to float32 rounding of the schedule
    assert _relative_gap(_loop(unet, ode, x_T, 5), _loop(unet, ddim, x_T, 5)) < tol


@pytest.mark.parametrize("spacing", ["linspace", "leading"])
def test_dpm_solver_pp2m_reproduces_dpm_multistep(unet, x_T, spacing):
    dpm = diffusers.DPMSolverMultistepScheduler(timestep_spacing=spacing)  # dpmsolver++, order 2, final sigma 0
    ode = ODEScheduler.from_scheduler(dpm, solver="dpm-solver++2m")
    assert _relative_gap(_loop(unet, ode, x_T, 6), _loop(unet, dpm, x_T, 6)) < 2e-6
    assert torch.equal(ode.timesteps, dpm.timesteps.float())


@pytest.mark.parametrize("solver", ["heun", "rk4", "dpm-solver-3", "unipc", "plms", "belm", "reversible-heun"])
def test_loop_equals_decode(unet, x_T, solver):
    ddim = diffusers.DDIMScheduler(**dict(SD_SCHEDULER, set_alpha_to_one=True))  # a grid ending at 0, as decode's
    ode = ODEScheduler.from_scheduler(ddim, solver=solver, start_fresh=True)
    out = _loop(unet, ode, x_T, 4)
    with torch.no_grad():
        sol = ddim_ode.decode(
            x_T, solver, model=DiffusersEpsModel(unet), schedule=ode.schedule, sigmas=ode.sigmas, return_solution=True
        )
    assert len(ode.timesteps) == sol.nfe  # one entry per network evaluation
    # the same evaluations up to the rounding of the first point (the pipeline's x_T is x_T itself)
    assert _relative_gap(out, sol.x) < 1e-6


def test_timesteps_repeat_stage_points_like_heun_discrete():
    ode = ODEScheduler.from_scheduler(diffusers.DDIMScheduler(), solver="heun")
    ode.set_timesteps(3)
    assert ode.timesteps.tolist() == [666.0, 333.0, 333.0, 0.0, 0.0]  # the last step (to sigma = 0) is an Euler step
    assert ode.order == 2 and ode.num_inference_steps == 3
    ode = ODEScheduler.from_scheduler(diffusers.DDIMScheduler(), solver="midpoint")
    ode.set_timesteps(2)
    t_mid = float(ode.schedule.t(0.5 * (ode.sigmas[0] + ode.sigmas[1])))
    assert ode.timesteps.tolist() == pytest.approx([500.0, t_mid, 0.0])


def test_custom_grids(unet, x_T):
    ode = ODEScheduler.from_scheduler(diffusers.DDIMScheduler(**SD_SCHEDULER), solver="dpm-solver++2m", grid="karras")
    ode.set_timesteps(5)
    karras = ddim_ode.make_grid(ode.schedule, "karras", 5)
    assert torch.equal(ode.sigmas, karras)
    by_grid = _loop(unet, ode, x_T, 5)
    ode.set_timesteps(sigmas=karras.tolist())
    out = x_T
    with torch.no_grad():
        for t in ode.timesteps:
            out = ode.step(unet(out, t).sample, t, out).prev_sample
    assert torch.equal(out, by_grid)
    ode.set_timesteps(timesteps=[900, 500, 100])  # the final sigma of the config (set_alpha_to_one=False) is appended
    assert ode.sigmas.tolist() == pytest.approx([float(ode.schedule.sigma(t)) for t in (900, 500, 100, 0)])


def test_config_saves_and_loads(tmp_path):
    dpm = diffusers.DPMSolverMultistepScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction")
    ode = ODEScheduler.from_scheduler(dpm, solver="unipc", variant="bh1")
    ode.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "ODEScheduler" and saved["solver_options"] == {"variant": "bh1"}
    back = ODEScheduler.from_pretrained(tmp_path)
    assert back.prediction == "v" and back.solver.variant == "bh1"
    for s in (ode, back, ODEScheduler.from_config(ode.config), ODEScheduler.from_config(dpm.config, solver="unipc")):
        s.set_timesteps(7)
    assert torch.equal(back.timesteps, ode.timesteps) and torch.equal(back.sigmas, ode.sigmas)
    assert back.config.source_scheduler["_class_name"] == "DPMSolverMultistepScheduler"


def test_history_resets_with_set_timesteps(unet, x_T):
    ode = ODEScheduler.from_scheduler(diffusers.DDIMScheduler(**SD_SCHEDULER), solver="dpm-solver++3m")
    first = _loop(unet, ode, x_T, 5)
    assert torch.equal(_loop(unet, ode, x_T, 5), first)
    with pytest.raises(ValueError, match="after the last"):
        ode.step(torch.zeros_like(x_T), 0, first)


def test_unconditional_inversion_is_exact_in_a_hand_loop(unet, x_T):
    class Pipe:  # what invert reads from a DDPM/DDIM pipeline: its components
        components = {"unet": unet, "scheduler": diffusers.DDIMScheduler(**SD_SCHEDULER)}

    x0 = 0.5 * x_T
    z = invert(Pipe(), latents=x0, n=6, solver="belm")
    assert isinstance(z, InvertedLatents)
    ode = ODEScheduler.from_scheduler(Pipe.components["scheduler"], solver="belm")
    back = _loop(unet, ode, z * ode.init_noise_sigma, 6)  # the state survives the multiplication by 1.0
    assert float(((back - x0) ** 2).mean()) < 1e-12
    with pytest.raises(ValueError, match=r"needs the auxiliary state that ddim_ode\.diffusers\.invert\(\)"):
        _loop(unet, ode, z.clone(), 6)
    with pytest.raises(ValueError, match=r"unsupported pipeline arguments \['num_inference_steps'\] \(the number"):
        invert(Pipe(), latents=x0, n=6, num_inference_steps=6)
    with pytest.raises(ValueError, match="an unconditional pipeline takes no conditioning"):
        invert(Pipe(), latents=x0, n=6, prompt="a cat")
    with pytest.raises(ValueError, match="exactly one of image= and latents="):
        invert(Pipe(), n=6)


def test_errors():
    with pytest.raises(ValueError, match=r"'dopri5' is adaptive.*; allowed: .*belm.*euler"):
        ODEScheduler.from_scheduler(diffusers.DDIMScheduler(), solver="dopri5")
    assert "dopri5" not in loop_solvers() and "ddpm" not in loop_solvers() and "rk4" in loop_solvers()
    with pytest.raises(ValueError, match="draws random noise"):
        ODEScheduler(solver="ddim", solver_options={"eta": 1.0})
    bad = {
        "beta_schedule": ("cubic", "linear, scaled_linear, squaredcos_cap_v2"),
        "prediction_type": ("score", "epsilon, v_prediction, sample"),
        "timestep_spacing": ("random", "leading, trailing, linspace"),
    }
    for key, (value, allowed) in bad.items():
        with pytest.raises(ValueError, match=f"unsupported {key} '{value}'.*; allowed: {allowed}$"):
            ODEScheduler.from_config({"_class_name": "DDIMScheduler", key: value})
    with pytest.raises(ValueError, match="unknown grid 'even'"):
        ODEScheduler(grid="even")
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        ODEScheduler.from_scheduler(diffusers.DDIMScheduler(rescale_betas_zero_snr=True))
    with pytest.raises(ValueError, match="flow-matching"):
        ODEScheduler.from_scheduler(diffusers.FlowMatchEulerDiscreteScheduler())
    with pytest.raises(ValueError, match="deterministic: eta must be 0"):
        ode = ODEScheduler()
        ode.set_timesteps(2)
        ode.step(torch.zeros(1, 1, 2, 2), 500, torch.zeros(1, 1, 2, 2), eta=1.0)


# ------------------------------------------------------------------------- a tiny Stable Diffusion


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """A tiny StableDiffusionPipeline (DDIM scheduler, SD config) saved and loaded back, and its DDIM scheduler."""
    transformers = pytest.importorskip("transformers")
    from tokenizers.pre_tokenizers import ByteLevel

    root = tmp_path_factory.mktemp("sd")
    vocab = {"<|startoftext|>": 0, "!": 1, "<|endoftext|>": 2}
    for c in sorted(ByteLevel.alphabet()):  # a character-level byte BPE vocabulary (no merges)
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (root / "tok").mkdir()
    (root / "tok" / "vocab.json").write_text(json.dumps(vocab))
    (root / "tok" / "merges.txt").write_text("#version: 0.2\n")
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
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=transformers.CLIPTokenizer.from_pretrained(root / "tok", model_max_length=16),
        unet=unet,
        scheduler=diffusers.DDIMScheduler(**SD_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root / "pipe")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(root / "pipe", safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe, pipe.scheduler


def _latents(pipe, latents, **kwargs):
    return pipe(num_inference_steps=4, latents=latents, output_type="latent", **kwargs).images


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))


def test_pipeline_euler_and_dpm_reproduce_their_schedulers(sd, tmp_path):
    pipe, ddim = sd
    x_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    pipe.scheduler = ddim
    ref = _latents(pipe, x_T, prompt="a cat")
    pipe.scheduler = ODEScheduler.from_scheduler(ddim, solver="euler")
    assert _relative_gap(_latents(pipe, x_T, prompt="a cat"), ref) < 2e-6
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(ddim.config)
    ref = _latents(pipe, x_T, prompt="a cat")
    pipe.scheduler = ODEScheduler.from_scheduler(pipe.scheduler, solver="dpm-solver++2m")
    assert _relative_gap(_latents(pipe, x_T, prompt="a cat"), ref) < 2e-6
    pipe.save_pretrained(tmp_path)  # a pipeline saved with an ODEScheduler loads it back
    loaded = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path, safety_checker=None)
    assert isinstance(loaded.scheduler, ODEScheduler) and loaded.scheduler.solver.name == "dpm-solver++2m"
    pipe.scheduler = ddim


def test_img2img_begins_at_a_grid_step(sd, image):
    pipe, ddim = sd
    img2img = diffusers.StableDiffusionImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    run = dict(prompt="a cat", image=image, strength=0.5, num_inference_steps=4, output_type="latent")
    ref = img2img(**run, generator=torch.Generator().manual_seed(4)).images
    img2img.scheduler = ODEScheduler.from_scheduler(ddim, solver="euler")
    # add_noise and the steps with float64 alpha_bar against diffusers' float32
    assert _relative_gap(img2img(**run, generator=torch.Generator().manual_seed(4)).images, ref) < 1e-5
    img2img.scheduler = ODEScheduler.from_scheduler(ddim, solver="heun")  # begins at timesteps[2 * order]
    assert img2img(**run, generator=torch.Generator().manual_seed(4)).images.isfinite().all()
    img2img.scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="begin_index 3 is not where a grid step of solver 'heun' starts"):
        img2img.scheduler.set_begin_index(3)  # the second stage of a Heun step


def _vae_latents(pipe, image):
    with torch.no_grad():
        return pipe.vae.encode(pipe.image_processor.preprocess(image)).latent_dist.mean * pipe.vae.config.scaling_factor


def _ddim_inversion(pipe, ddim, x0, n, guidance_scale):
    """diffusers' DDIM inversion (DDIMInverseScheduler) with the pipeline's guided network."""
    model = pipeline_model(pipe, prompt="a cat", guidance_scale=guidance_scale)
    inverse = diffusers.DDIMInverseScheduler.from_config(ddim.config)
    inverse.set_timesteps(n)
    x = x0
    with torch.no_grad():
        for t in inverse.timesteps:
            x = inverse.step(model(x, t.reshape(1)), t, x).prev_sample
    return x


@pytest.mark.parametrize("guidance_scale", [1.0, 7.5])
def test_belm_inversion_round_trip_is_exact(sd, image, guidance_scale):
    pipe, ddim = sd
    x0 = _vae_latents(pipe, image)
    pipe.scheduler = ODEScheduler.from_scheduler(ddim, solver="belm")
    z = invert(pipe, image=image, n=4, prompt="a cat", guidance_scale=guidance_scale)
    back = _latents(pipe, z, prompt="a cat", guidance_scale=guidance_scale)
    mse = float(((back - x0) ** 2).mean())
    assert mse < 1e-8
    pipe.scheduler = ddim  # against DDIM inversion, decoded by DDIM
    ddim_back = _latents(
        pipe, _ddim_inversion(pipe, ddim, x0, 4, guidance_scale), prompt="a cat", guidance_scale=guidance_scale
    )
    assert float(((ddim_back - x0) ** 2).mean()) > 1e3 * mse


def test_editing_with_another_prompt(sd, image):
    pipe, ddim = sd
    embeds = {p: pipe.encode_prompt(p, "cpu", 1, False)[0] for p in ("a cat", "a dog")}
    run = dict(negative_prompt_embeds=pipe.encode_prompt("", "cpu", 1, False)[0], guidance_scale=7.5)
    x0 = _vae_latents(pipe, image)
    pipe.scheduler = ODEScheduler.from_scheduler(ddim, solver="belm")
    z = invert(pipe, image=image, n=4, prompt_embeds=embeds["a cat"], **run)
    same = _latents(pipe, z, prompt_embeds=embeds["a cat"], **run)
    edited = _latents(pipe, z, prompt_embeds=embeds["a dog"], **run)
    assert float(((same - x0) ** 2).mean()) < 1e-8
    assert float(((edited - x0) ** 2).mean()) > 1e-3 * float((x0**2).mean())

"""The diffusers integration: ODEScheduler in pipeline loops, exact inversion of pipeline latents, errors.

Tiny models with random weights, built from configs (no hub access): a UNet2DModel for hand loops
over ``scheduler.timesteps`` (the loop of DDPMPipeline / DDIMPipeline), a small flow network for
hand loops of flow-matching schedulers, a Stable Diffusion pipeline (UNet2DConditionModel,
AutoencoderKL, CLIPTextModel and a CLIPTokenizer built from a vocabulary written here) saved with
``save_pretrained`` and loaded back, and an SD3 pipeline (a tiny SD3Transformer2DModel, prompt
embeddings); see tests/tiny_pipelines.py.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from tiny_pipelines import SD_SCHEDULER, VelocityNet, sd3_conditioning, sd3_pipeline, sd_pipeline  # noqa: E402

import ddim_ode  # noqa: E402
from ddim_ode.diffusers import InvertedLatents, ODEScheduler, invert, loop_solvers, pipeline_model  # noqa: E402
from ddim_ode.io import DiffusersEpsModel  # noqa: E402
from ddim_ode.schedules import FlowSchedule  # noqa: E402


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


@pytest.mark.parametrize(
    ("n", "config", "first_order"),
    [
        (10, dict(final_sigmas_type="sigma_min"), True),  # lower_order_final below 15 steps
        (15, dict(final_sigmas_type="sigma_min"), False),
        (15, dict(final_sigmas_type="sigma_min", euler_at_final=True), True),
        (10, dict(final_sigmas_type="sigma_min", lower_order_final=False), False),
    ],
    ids=["lower_order_final-n10", "n15", "euler_at_final-n15", "no-lower_order_final-n10"],
)
def test_dpm_solver_pp2m_takes_the_last_step_of_dpm_multistep(unet, x_T, n, config, first_order):
    dpm = diffusers.DPMSolverMultistepScheduler(**config)
    ref = _loop(unet, dpm, x_T, n)
    ode = ODEScheduler.from_scheduler(dpm, solver="dpm-solver++2m")
    assert _relative_gap(_loop(unet, ode, x_T, n), ref) < 1e-6  # 4e-7 to 6e-7 measured
    assert ode.solver.lower_order_final is first_order and ode.sigmas[-1] > 0
    # the other last step is measurably further (3e-6 at n = 15, 1.7e-5 at n = 10): the option makes the agreement
    other = ODEScheduler.from_scheduler(dpm, solver="dpm-solver++2m", lower_order_final=not first_order)
    assert _relative_gap(_loop(unet, other, x_T, n), ref) > 2e-6


def test_lower_order_final_is_one_ddim_step_at_the_end():
    """On an exact Gaussian oracle: the option changes the last step only, into the DDIM step."""
    from ddim_ode.analytic import Gaussian
    from ddim_ode.field import ProbabilityFlowODE
    from ddim_ode.solvers import get_solver

    field = ProbabilityFlowODE(Gaussian([0.0, 0.5, -1.0], [0.5, 0.5, 0.5]), ddim_ode.DiscreteSchedule.linear())
    grid = torch.tensor([20.0, 5.0, 1.0, 0.3, 0.05], dtype=torch.float64)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20
    plain, lower = get_solver("dpm-solver++2m"), get_solver("dpm-solver++2m", lower_order_final=True)
    steps: dict[str, list[torch.Tensor]] = {"plain": [], "lower": []}
    for name, slv in (("plain", plain), ("lower", lower)):
        slv.solve(field, x, grid, lambda i, sigma, xb, name=name: steps[name].append(xb))
    assert all(torch.equal(a, b) for a, b in zip(steps["plain"][:-1], steps["lower"][:-1]))  # same until the end
    head = steps["plain"][-2]
    want = torch.add(head, field(head, 0.3), alpha=0.05 - 0.3)  # DDIM = first-order DPM-Solver++
    assert torch.allclose(steps["lower"][-1], want, rtol=1e-13, atol=1e-13)
    assert not torch.allclose(steps["plain"][-1], want, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="lower_order_final must be true or false"):
        get_solver("dpm-solver++2m", lower_order_final=1)


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
        with pytest.raises(ValueError, match=f"unknown scheduler config {key} '{value}'; allowed: {allowed}$"):
            ODEScheduler.from_config({"_class_name": "DDIMScheduler", key: value})
    with pytest.raises(ValueError, match="unknown grid 'even'"):
        ODEScheduler(grid="even")
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        ODEScheduler.from_scheduler(diffusers.DDIMScheduler(rescale_betas_zero_snr=True))
    flow = diffusers.FlowMatchEulerDiscreteScheduler
    with pytest.raises(ValueError, match="stochastic_sampling=True .*; allowed: False"):
        ODEScheduler.from_scheduler(flow(stochastic_sampling=True))
    with pytest.raises(ValueError, match="invert_sigmas=True .*; allowed: False"):
        ODEScheduler.from_scheduler(flow(invert_sigmas=True))
    with pytest.raises(ValueError, match="use_flow_sigmas / flow_prediction.*allowed flow-matching configs"):
        ODEScheduler.from_scheduler(diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True))
    with pytest.raises(ValueError, match="unsupported flow-matching scheduler 'FlowMatchLCMScheduler'"):
        ODEScheduler.from_config({"_class_name": "FlowMatchLCMScheduler"})
    with pytest.raises(ValueError, match=r"use_dynamic_shifting\): set_timesteps needs mu="):
        ODEScheduler.from_scheduler(flow(use_dynamic_shifting=True)).set_timesteps(4)
    with pytest.raises(ValueError, match="mu applies to flow-matching configs.*allowed: mu=None"):
        ODEScheduler().set_timesteps(4, mu=0.5)
    with pytest.raises(ValueError, match="deterministic: eta must be 0"):
        ode = ODEScheduler()
        ode.set_timesteps(2)
        ode.step(torch.zeros(1, 1, 2, 2), 500, torch.zeros(1, 1, 2, 2), eta=1.0)


# ------------------------------------------------------------------------- flow matching (SD3 / Flux type)


def _flow_loop(net, scheduler, x, n, **kwargs):
    """The loop of a flow pipeline: one network call and one step per entry of timesteps."""
    scheduler.set_timesteps(n, **kwargs)
    for t in scheduler.timesteps:
        x = scheduler.step(net(x, t), t, x).prev_sample
    return x


@pytest.fixture(scope="module")
def noise():
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize(
    ("config", "mu"), [(dict(shift=3.0), None), (dict(use_dynamic_shifting=True), 0.8)], ids=["shift3", "dynamic"]
)
def test_flow_euler_reproduces_flow_match_euler(noise, config, mu):
    net = VelocityNet()
    ref = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    ode = ODEScheduler.from_scheduler(ref, solver="euler")
    assert ode.prediction == "flow" and ode.init_noise_sigma == 1.0 and ode.scale_model_input(noise, 1000.0) is noise
    want = _flow_loop(net, ref, noise, 12, mu=mu)
    got = _flow_loop(net, ode, noise, 12, mu=mu)
    assert torch.equal(ode.timesteps, ref.timesteps)  # τ · 1000 from τ = 1 (σ = ∞) down
    assert math.isinf(ode.sigmas[0]) and ode.sigmas[-1] == 0 and len(ode.sigmas) == 13
    assert _relative_gap(got, want) < 1e-6  # float32 rounding (3e-7 measured)
    # Flux-style: sigmas before the shift, one per step, with mu
    flux = np.linspace(1.0, 1 / 12, 12)
    assert (
        _relative_gap(
            _flow_loop(net, ode, noise, None, sigmas=flux, mu=mu), _flow_loop(net, ref, noise, None, sigmas=flux, mu=mu)
        )
        < 1e-6
    )
    assert torch.equal(ode.timesteps, ref.timesteps)
    # the first step from pure noise estimates x0 = x - v (tau = 1)
    ode.set_timesteps(12, mu=mu)
    t = ode.timesteps[0]
    out = ode.step(net(noise, t), t, noise)
    assert torch.allclose(out.pred_original_sample, noise - net(noise, t), atol=1e-6)


@pytest.mark.parametrize("solver", ["heun", "dpm-solver++2m", "unipc", "rk4"])
def test_flow_loop_equals_decode(noise, solver):
    net = VelocityNet()
    ode = ODEScheduler.from_scheduler(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), solver=solver)
    out = _flow_loop(net, ode, noise, 6)
    sol = ddim_ode.decode(
        noise,
        solver,
        model=net,
        schedule=FlowSchedule(shift=3.0),
        prediction="flow",
        sigmas=ode.sigmas,
        return_solution=True,
    )
    assert len(ode.timesteps) == sol.nfe
    assert _relative_gap(out, sol.x) < 1e-6  # equal in the measurement


def test_flow_add_noise_and_scale_noise():
    ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    ode = ODEScheduler.from_scheduler(ref)
    ref.set_timesteps(5)
    ode.set_timesteps(5)
    x0, eps = torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3, 3)
    t = ref.timesteps[[0, 2]]
    tau = (t / 1000).reshape(-1, 1, 1, 1)
    assert torch.allclose(ode.add_noise(x0, eps, t), (1 - tau) * x0 + tau * eps, atol=1e-6)
    assert torch.equal(ode.add_noise(x0, eps, t)[0], eps[0])  # tau = 1: pure noise
    ref.set_begin_index(0)
    assert torch.allclose(
        ode.scale_noise(x0, t[:1].repeat(2), eps), ref.scale_noise(x0, t[:1].repeat(2), eps), atol=1e-6
    )


def test_flow_config_mirrors_shift_settings_and_saves(tmp_path):
    ref = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.6, max_shift=1.3)
    ode = ODEScheduler.from_scheduler(ref, solver="unipc")
    assert ode.config.use_dynamic_shifting is True and ode.config.max_shift == 1.3  # read by flow pipelines for mu
    ode.save_pretrained(tmp_path)
    back = ODEScheduler.from_pretrained(tmp_path)
    for s in (ode, back):
        s.set_timesteps(7, mu=1.1)
    assert torch.equal(back.timesteps, ode.timesteps) and back.schedule.mu == 1.1


def test_reversible_solver_drops_the_infinite_top(noise):
    net = VelocityNet()
    flow = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    euler = ODEScheduler.from_scheduler(flow, solver="euler")
    belm = ODEScheduler.from_scheduler(flow, solver="belm", start_fresh=True)
    euler.set_timesteps(8)
    belm.set_timesteps(8)
    assert math.isinf(euler.sigmas[0]) and torch.equal(belm.sigmas, euler.sigmas[1:])
    assert belm.timesteps[0] == euler.timesteps[1]
    # the noise is taken as x at tau_1, as decode on the finite grid
    sol = ddim_ode.decode(noise, "belm", model=net, schedule=belm.schedule, prediction="flow", sigmas=belm.sigmas)
    assert _relative_gap(_flow_loop(net, belm, noise, 8), sol) < 1e-6


@pytest.fixture(scope="module", params=[dict(shift=3.0), dict(use_dynamic_shifting=True)], ids=["shift3", "dynamic"])
def sd3(request):
    """A tiny SD3 pipeline with a FlowMatchEulerDiscreteScheduler, and the scheduler."""
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**request.param)
    return sd3_pipeline(scheduler), scheduler


def _sd3_latents(pipe, scheduler, latents, **kwargs):
    pipe.scheduler = scheduler
    call = dict(sd3_conditioning(), num_inference_steps=6, output_type="latent", height=64, width=64)
    return pipe(latents=latents, **{**call, **kwargs}).images


def test_sd3_pipeline_euler_reproduces_flow_match_euler(sd3):
    pipe, flow = sd3
    x_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ref = _sd3_latents(pipe, flow, x_T)
    ode = ODEScheduler.from_scheduler(flow, solver="euler")
    assert _relative_gap(_sd3_latents(pipe, ode, x_T), ref) < 2e-6  # the pipeline passes mu when shifting dynamically
    assert torch.equal(ode.timesteps, flow.timesteps)


@pytest.mark.parametrize("guidance_scale", [1.0, 7.0])
def test_sd3_belm_inversion_round_trip_is_exact(sd3, guidance_scale):
    pipe, flow = sd3
    x0 = _sd3_latents(pipe, flow, torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4)))
    ode = ODEScheduler.from_scheduler(flow, solver="belm")
    pipe.scheduler = ode
    z = invert(pipe, latents=x0, n=6, guidance_scale=guidance_scale, **sd3_conditioning())
    assert isinstance(z, InvertedLatents)
    back = _sd3_latents(pipe, ode, z, guidance_scale=guidance_scale)
    mse = float(((back - x0) ** 2).mean())
    assert mse < 1e-10
    assert len(ode.timesteps) == 5  # the grid starts at tau_1, below pure noise
    euler = ODEScheduler.from_scheduler(flow, solver="euler")  # against approximate (DDIM) inversion
    pipe.scheduler = euler
    z = invert(pipe, latents=x0, n=6, solver="euler", guidance_scale=guidance_scale, **sd3_conditioning())
    assert float(((_sd3_latents(pipe, euler, z, guidance_scale=guidance_scale) - x0) ** 2).mean()) > 1e4 * mse


# ------------------------------------------------------------------------- a tiny Stable Diffusion


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """A tiny StableDiffusionPipeline (DDIM scheduler, SD config) saved and loaded back, and its DDIM scheduler."""
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("sd")
    sd_pipeline(root).save_pretrained(root / "pipe")
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

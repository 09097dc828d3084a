"""Every Gaussian path is one ODE in DDIM coordinates: schedules, predictions, grids and solvers
on VP, VE (EDM) and rectified-flow paths, checked against closed forms, diffusers' flow scheduler
and independently written EDM / DPM-Solver++ sampling loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

import ddim_ode
from ddim_ode import solve
from ddim_ode.analytic import Gaussian
from ddim_ode.field import PREDICTIONS, ProbabilityFlowODE
from ddim_ode.grids import make_grid
from ddim_ode.precond import EDMPrecond
from ddim_ode.schedules import ContinuousSchedule, DiscreteSchedule, FlowSchedule, Schedule, VESchedule

VP = DiscreteSchedule.linear()
VE = VESchedule(0.002, 80.0)
FLOW = FlowSchedule(shift=3.0)
SCHEDULES = {
    "vp-discrete": VP,
    "vp-linear": ContinuousSchedule.linear(),
    "vp-cosine": ContinuousSchedule.cosine(),
    "ve": VE,
    "flow": FlowSchedule(),
    "flow-shift3": FLOW,
    "flow-dynamic": FlowSchedule(use_dynamic_shifting=True).for_image_seq_len(1024),
    "flow-unit-time": FlowSchedule(shift=2.0, timestep_scale=1.0),
}


def _random_sigmas(schedule: Schedule, n: int = 64) -> Tensor:
    """σ spread log-uniformly over the schedule's range (capped at 1e4 for an infinite top)."""
    lo, hi = schedule.sigma_min, min(schedule.sigma_max, 1e4)
    u = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


# --------------------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", SCHEDULES)
def test_sigma_t_and_scale_are_exact_inverses(name):
    sch = SCHEDULES[name]
    sig = _random_sigmas(sch)
    # a flow's time τ = σ̄/(1 + σ̄) holds σ̄ to a relative 1e-16 (1 + σ̄) only: 1 − τ cancels near noise
    cond = 1 + sig if isinstance(sch, FlowSchedule) else torch.ones_like(sig)
    assert bool(((sch.sigma(sch.t(sig)) - sig).abs() <= 1e-12 * sig * cond).all())
    ts = sch.t(sig)
    assert torch.allclose(sch.t(sch.sigma(ts)), ts, rtol=1e-12, atol=0)
    a, s = sch.scale(sig), sch.noise_scale(sig)
    assert torch.allclose(s / a, sig, rtol=1e-14, atol=0)  # σ̄ = s/a
    if isinstance(sch, FlowSchedule):
        assert torch.allclose(a + s, torch.ones_like(a), rtol=0, atol=1e-15)  # x = (1 − τ) x0 + τ ε
        assert torch.allclose(ts / sch.timestep_scale, s, rtol=1e-14, atol=0)  # the model sees τ · scale
        assert (sch.scale(math.inf), sch.noise_scale(math.inf), sch.t(math.inf)) == (0.0, 1.0, sch.t_max)
        assert sch.sigma_max == math.inf and sch.sigma(sch.t_max) == math.inf
    elif isinstance(sch, VESchedule):
        assert torch.equal(a, torch.ones_like(a)) and torch.equal(ts, sig)  # x = x0 + σ ε, t = σ
    else:
        assert torch.allclose(a * a + s * s, torch.ones_like(a), rtol=0, atol=1e-15)  # variance preserving
        assert torch.allclose(a * a, sch.alpha_bar(ts), rtol=1e-12, atol=0)
        assert (sch.scale(math.inf), sch.noise_scale(math.inf)) == (0.0, 1.0)
    # clamping: σ = 0 maps to t_min, where the model is evaluated on clean data
    assert sch.t(0.0) == pytest.approx(sch.t_min, rel=1e-12) and sch.scale(0.0) == 1.0 and sch.noise_scale(0.0) == 0.0


def test_flow_shift_scales_sigma():
    """τ ↦ shift·τ/(1 + (shift − 1)τ) is σ̄ ↦ shift·σ̄, and dynamic shifting is the shift e^μ."""
    u = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    for sch, k in ((FlowSchedule(shift=3.0), 3.0), (SCHEDULES["flow-dynamic"], math.exp(SCHEDULES["flow-dynamic"].mu))):
        sig = sch.sigma(sch.from_grid_time(u))
        assert torch.allclose(sig, k * u / (1 - u), rtol=1e-13, atol=0)
        assert torch.allclose(sch.grid_time(sch.from_grid_time(u)), u, rtol=1e-13, atol=0)
    # μ is linear in the image sequence length between (256, 0.5) and (4096, 1.15)
    dyn = FlowSchedule(use_dynamic_shifting=True)
    assert dyn.mu_for(256) == pytest.approx(0.5) and dyn.mu_for(4096) == pytest.approx(1.15)
    assert FlowSchedule(use_dynamic_shifting=True, time_shift_type="linear", mu=2.0).effective_shift == 2.0


@pytest.mark.parametrize(
    "build, pattern",
    [
        (
            lambda: ContinuousSchedule.cosine(s=math.nan),
            r"s \(the cosine schedule's offset\) must be a finite number >= 0",
        ),
        (lambda: ContinuousSchedule.cosine(s=-0.1), r"must be a finite number >= 0"),
        (lambda: ContinuousSchedule.linear(beta_max=math.inf), "need finite 0 < beta_min < beta_max"),
        (lambda: ContinuousSchedule.linear(t_max=math.nan), "need finite 0 <= t_min < t_max"),
        (lambda: DiscreteSchedule.cosine(s=math.nan), "must be a finite number >= 0"),
        (lambda: DiscreteSchedule(betas=[0.1, math.nan]), r"`betas` must hold at least 2 values, each finite"),
        (
            lambda: DiscreteSchedule(betas=[0.9] * 400),
            r"`betas` give alphas_cumprod = \S+ at t=\d+, where sigma is infinite",
        ),
        (lambda: DiscreteSchedule(alphas_cumprod=[0.9, 0.5, 0.0]), r"`alphas_cumprod` must hold .* in \(0, 1\)"),
        (lambda: DiscreteSchedule(alphas_cumprod=[0.9, 1e-320]), r"`alphas_cumprod` give alphas_cumprod = .* infinite"),
        (lambda: VESchedule(sigma_min=-1.0), "sigma_min must be a finite number > 0"),
        (lambda: VESchedule(0.5, 0.1), r"sigma_max must be a finite number > sigma_min = 0.5"),
        (lambda: VESchedule(0.002, math.inf), "sigma_max must be a finite number"),
        (lambda: FlowSchedule(shift=math.nan), "shift must be a finite number > 0"),
        (lambda: FlowSchedule(shift=0.0), "shift must be a finite number > 0"),
        (lambda: FlowSchedule(num_train_timesteps=1), "num_train_timesteps must be an int >= 2"),
        (lambda: FlowSchedule(time_shift_type="cubic"), "time_shift_type must be 'exponential' or 'linear'"),
        (lambda: FlowSchedule(mu=1.0), "mu applies only with use_dynamic_shifting=True"),
        (lambda: FlowSchedule(use_dynamic_shifting=True, mu=math.inf), "mu must be a finite number"),
        (lambda: make_grid(FlowSchedule(use_dynamic_shifting=True), "uniform", 4), "has no mu yet"),
        (lambda: make_grid(FlowSchedule(), "karras", 4, t_hi=1000.0), "'karras' grid spaces sigma between finite ends"),
    ],
)
def test_bad_schedule_parameters_are_refused(build, pattern):
    with pytest.raises(ValueError, match=pattern):
        build()


# --------------------------------------------------------------------------------------------- predictions


class PointModel(torch.nn.Module):
    """Returns the exact prediction for fixed per-sample (x0, ε) at the path point of its time t."""

    def __init__(self, schedule: Schedule, prediction: str, x0: Tensor, eps: Tensor) -> None:
        super().__init__()
        self.schedule, self.prediction, self.x0, self.eps = schedule, prediction, x0, eps

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        sig = self.schedule.sigma(t.to(torch.float64))
        a = self.schedule.scale(sig)[:, None]
        s = self.schedule.noise_scale(sig)[:, None]
        return {
            "eps": self.eps,
            "x0": self.x0,
            "v": a * self.eps - s * self.x0,
            "flow": self.eps - self.x0,  # d/dτ [(1 − τ) x0 + τ ε]
        }[self.prediction]


def _cases() -> list[tuple[str, str]]:
    out = []
    for name in ("vp-discrete", "vp-cosine", "ve", "flow-shift3", "flow-unit-time"):
        for p in PREDICTIONS:
            if p != "flow" or SCHEDULES[name].rectified_flow:
                out.append((name, p))
    return out


@pytest.mark.parametrize(("name", "prediction"), _cases())
def test_every_prediction_converts_exactly_to_eps(name, prediction):
    """A model that knows (x0, ε) returns them through any prediction: the field recovers ε at
    x̄ = x0 + σ ε (float64 rounding), and evaluate_x recovers (ε, x0) from x_t = a x0 + s ε."""
    sch = SCHEDULES[name]
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(5, 7, dtype=torch.float64, generator=g)
    eps = torch.randn(5, 7, dtype=torch.float64, generator=g)
    field = ProbabilityFlowODE(PointModel(sch, prediction, x0, eps), sch, prediction)
    sig = _random_sigmas(sch, 24)
    field.prepare(sig[:12])  # half tabulated, half computed on first use
    worst = 0.0
    for sigma in sig.tolist():
        got = field(x0 + sigma * eps, sigma)
        worst = max(worst, float((got - eps).abs().max()))
        e, d = field.evaluate_x(sch.scale(sigma) * x0 + sch.noise_scale(sigma) * eps, sigma)
        worst = max(worst, float((e - eps).abs().max()), float((d - x0).abs().max()))
    assert worst < 1e-10, worst  # ≈ 1e-13 measured; ε from x0 divides by s = σ·a
    assert field.nfe == 2 * len(sig)
    if sch.sigma_max == math.inf and prediction != "eps":  # pure noise: x_t = ε exactly, a = 0
        e, d = field.evaluate_x(eps, math.inf)
        assert torch.allclose(e, eps, rtol=0, atol=1e-15) and torch.allclose(d, x0, rtol=0, atol=1e-15)


def test_oracle_models_give_the_exact_field_for_every_prediction():
    """The analytic oracle as a network on any path, with any prediction, is the exact ε."""
    gauss = Gaussian(torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.3, 0.6, 1.2]))
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for name, p in _cases():
        sch = SCHEDULES[name]
        field = ProbabilityFlowODE(gauss.as_model(sch, p), sch, p)
        for sigma in _random_sigmas(sch, 6).tolist():
            xbar = x * math.sqrt(0.5 + sigma * sigma)
            assert torch.allclose(field(xbar, sigma), gauss.eps_xbar(xbar, sigma), rtol=1e-9, atol=1e-11), (name, p)


def test_flow_only_on_a_flow_path_and_eps_not_at_infinity():
    with pytest.raises(ValueError, match="prediction 'flow' .* FlowSchedule only.*allowed there: eps, x0, v"):
        ProbabilityFlowODE(lambda x, t: x, VP, "flow")
    field = ProbabilityFlowODE(lambda x, t: x, FLOW, "eps")
    with pytest.raises(ValueError, match="evaluate_x at sigma = inf .* allowed there: predictions x0, v, flow"):
        field.evaluate_x(torch.ones(2, 3), math.inf)
    flow = ProbabilityFlowODE(lambda x, t: x, FLOW, "flow")
    with pytest.raises(ValueError, match="x̄ is infinite at sigma = inf; evaluate the model-scale input"):
        flow(torch.ones(2, 3), math.inf)


# --------------------------------------------------------------------------------------------- flow vs diffusers


class VelocityNet(torch.nn.Module):
    """A small random-weight float32 flow network ``v(x_t, timestep)`` with timestep in [0, 1000]."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(dim + 2, 32, generator=g) * 0.5)
        self.w2 = torch.nn.Parameter(torch.randn(32, dim, generator=g) * 0.5)
        self.requires_grad_(False)
        self.timesteps: list[Tensor] = []

    def forward(self, x: Tensor, timestep: Tensor) -> Tensor:
        self.timesteps.append(timestep.clone())
        tt = timestep.to(x.dtype)[:, None] / 1000.0
        return torch.tanh(torch.cat([x, torch.sin(3 * tt), torch.cos(3 * tt)], 1) @ self.w1) @ self.w2 - x


def _flow_decode(field: ProbabilityFlowODE, noise: Tensor, sig: Tensor, solver: str = "euler") -> Tensor:
    """``ddim_ode.decode`` from pure noise at σ̄ = ∞ along ``sig`` (the driver takes the first DDIM
    step x̄₁ = x̂0 + σ̄₁ ε̂ by its exact limit, then the solver); the field's counters see every call."""
    sol = ddim_ode.decode(
        noise,
        solver,
        model=field.model,
        schedule=field.schedule,
        prediction=field.prediction,
        sigmas=sig,
        return_solution=True,
    )
    field.nfe += sol.nfe
    assert torch.equal(sol.sigmas, sig)
    return sol.x


@pytest.mark.parametrize(
    "config",
    [{"shift": 1.0}, {"shift": 3.0}, {"shift": 0.5}, {"use_dynamic_shifting": True}],
    ids=["shift1", "shift3", "shift0.5", "dynamic"],
)
def test_flow_grid_and_euler_equal_diffusers_flow_match_euler(config):
    from diffusers import FlowMatchEulerDiscreteScheduler

    n = 12
    sch = FlowSchedule(**config)
    mu = None
    if config.get("use_dynamic_shifting"):
        sch = sch.for_image_seq_len(1024)
        mu = sch.mu
    ref = FlowMatchEulerDiscreteScheduler.from_config({"num_train_timesteps": 1000, **config})
    ref.set_timesteps(n, mu=mu)
    sig = make_grid(sch, "uniform", n)
    assert sig[0] == math.inf and sig[-1] == 0.0 and len(sig) == n + 1
    tau = torch.where(torch.isinf(sig), torch.ones_like(sig), sig / (1 + sig))
    assert float((tau - ref.sigmas.double()).abs().max()) < 1e-6  # diffusers' float32 sigmas
    assert float((sch.t(sig[:-1]) - ref.timesteps.double()).abs().max()) < 2e-4  # float32 timesteps ≤ 1000

    noise = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    net = VelocityNet()
    x = noise.clone()
    for t in ref.timesteps:
        x = ref.step(net(x, t.expand(x.shape[0])), t, x).prev_sample
    want = x.double()
    net.timesteps.clear()
    field = ProbabilityFlowODE(net, sch, "flow")
    got = _flow_decode(field, noise.double(), sig)
    assert field.nfe == n
    seen = torch.stack([t[0] for t in net.timesteps]).double()
    assert float((seen - ref.timesteps.double()).abs().max()) < 2e-4
    assert float((got - want).abs().max()) < 5e-6, float((got - want).abs().max())  # float32 rounding (6e-7 seen)


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_flow_sigma_spaced_grids_start_at_the_top_of_diffusers_flow_sigmas(shift):
    from diffusers import DPMSolverMultistepScheduler

    sch = FlowSchedule(shift=shift)
    ref = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift)
    ref.set_timesteps(6)
    tau0 = float(ref.sigmas[0].double())
    assert sch.sigma_top == pytest.approx(tau0 / (1 - tau0), rel=2e-4)  # diffusers' float32 sigmas
    assert sch.sigma_top == shift * 999.0
    for name in ("logsnr", "karras"):
        sig = make_grid(sch, name, 6)
        assert sig[0] == sch.sigma_top and sig[-2] == pytest.approx(sch.sigma_min) and sig[-1] == 0.0
        assert bool((sig[1:] < sig[:-1]).all())
    assert DiscreteSchedule.linear().sigma_top == DiscreteSchedule.linear().sigma_max


# --------------------------------------------------------------------------------------------- VE / EDM


class RawNet(torch.nn.Module):
    """A small random-weight float64 raw network F(c_in x, c_noise) for EDM preconditioning."""

    def __init__(self, dim: int = 5) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(4)
        self.w1 = torch.nn.Parameter(torch.randn(dim + 1, 24, generator=g, dtype=torch.float64) * 0.5)
        self.w2 = torch.nn.Parameter(torch.randn(24, dim, generator=g, dtype=torch.float64) * 0.5)
        self.requires_grad_(False)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        return torch.tanh(torch.cat([x, c_noise.to(x.dtype)[:, None]], 1) @ self.w1) @ self.w2


def test_edm_precond_is_table_1():
    net = RawNet()
    d = EDMPrecond(net, sigma_data=0.5)
    x = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.01, 1.0, 40.0], dtype=torch.float64)
    sd = 0.5
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
    c_in = 1 / (sigma**2 + sd**2).sqrt()
    want = c_skip[:, None] * x + c_out[:, None] * net(c_in[:, None] * x, sigma.log() / 4)
    assert torch.allclose(d(x, sigma), want, rtol=1e-14, atol=1e-15)
    with pytest.raises(ValueError, match="sigma_data must be a finite number > 0"):
        EDMPrecond(net, sigma_data=0.0)


def _ref_euler(denoiser, x: Tensor, sig: list[float]) -> Tensor:
    """Karras et al. 2022, Alg. 2 without churn: Euler on dx/dσ = (x − D(x, σ))/σ."""
    for s, s_next in zip(sig[:-1], sig[1:]):
        d = (x - denoiser(x, s)) / s
        x = x + (s_next - s) * d
    return x


def _ref_heun(denoiser, x: Tensor, sig: list[float]) -> Tensor:
    """Karras et al. 2022, Alg. 1: Heun's 2nd-order correction, an Euler step where σ_next = 0."""
    for s, s_next in zip(sig[:-1], sig[1:]):
        d = (x - denoiser(x, s)) / s
        x_next = x + (s_next - s) * d
        if s_next != 0:
            d_next = (x_next - denoiser(x_next, s_next)) / s_next
            x_next = x + (s_next - s) * (d + d_next) / 2
        x = x_next
    return x


def _ref_dpmpp_2m(denoiser, x: Tensor, sig: list[float]) -> Tensor:
    """DPM-Solver++(2M), Lu et al. 2022 (arXiv:2211.01095) Alg. 2, in λ = −log σ with variable steps;
    first step first order, the step to σ = 0 returns the denoised estimate."""
    d_prev, h_prev = None, None
    for s, s_next in zip(sig[:-1], sig[1:]):
        d = denoiser(x, s)
        if s_next == 0:
            x = d
            continue
        h = math.log(s) - math.log(s_next)
        if d_prev is None:
            d_hat = d
        else:
            r = h_prev / h
            d_hat = (1 + 1 / (2 * r)) * d - d_prev / (2 * r)
        x = (s_next / s) * x - math.expm1(-h) * d_hat
        d_prev, h_prev = d, h
    return x


@pytest.mark.parametrize(
    ("solver", "reference"), [("euler", _ref_euler), ("heun", _ref_heun), ("dpm-solver++2m", _ref_dpmpp_2m)]
)
def test_ve_denoiser_matches_edm_and_dpm_solver_loops(solver, reference):
    """euler / heun / dpm-solver++2m on an EDM-preconditioned denoiser along EDM's Karras grid
    equal sampling loops written from the papers (as k-diffusion's sample_euler, sample_heun,
    sample_dpmpp_2m), float64."""
    denoiser = EDMPrecond(RawNet())
    field = ProbabilityFlowODE(denoiser, VE, "x0")
    sig = make_grid(VE, "karras", 10)
    rho = 7.0
    ramp = np.linspace(0, 1, 10)
    edm = (80.0 ** (1 / rho) + ramp * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho  # eq. 5
    assert np.allclose(sig.numpy(), np.append(edm, 0.0), rtol=1e-14, atol=0)
    x_T = 80.0 * torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    got = solve(field, x_T, sig, solver).xbar  # a = 1: x̄ = x

    def d_of(x: Tensor, s: float) -> Tensor:
        return denoiser(x, torch.full((x.shape[0],), s, dtype=torch.float64))

    want = reference(d_of, x_T, sig.tolist())
    assert float((got - want).abs().max()) < 1e-13, float((got - want).abs().max())  # 4e-15 seen


# --------------------------------------------------------------------------------------------- orders on a flow path


def _fit_order(ns: list[int], errs: list[float]) -> float:
    return float(-np.polyfit(np.log(ns), np.log(errs), 1)[0])


@pytest.mark.parametrize(("solver", "order"), [("heun", 2), ("rk4", 4), ("dpm-solver++2m", 2)])
def test_convergence_orders_on_an_exact_flow_oracle(solver, order):
    """A Gaussian's exact velocity ε − x0 as a flow network (shift 3), integrated in σ̄ between
    τ = 0.9 and τ = 0.1 on grids uniform in τ: the measured order is the solver's."""
    gauss = Gaussian(torch.tensor([0.5, -1.0]), torch.tensor([0.4, 0.8]))
    field = ProbabilityFlowODE(gauss.as_model(FLOW, "flow"), FLOW, "flow")
    z = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    ns = [8, 16, 32, 64]
    errs = []
    for n in ns:
        tau = torch.linspace(0.9, 0.1, n + 1, dtype=torch.float64)
        sig = tau / (1 - tau)
        top, bottom = float(sig[0]), float(sig[-1])
        xbar = gauss.means[0] + z * torch.sqrt(gauss.variances[0] + top * top)
        got = solve(field, xbar, sig, solver).xbar
        errs.append(float((got - gauss.solution(xbar, top, bottom)).pow(2).mean().sqrt()))
    measured = _fit_order(ns, errs)
    assert abs(measured - order) < 0.3, (measured, errs)


def test_flow_decode_from_pure_noise_reaches_the_exact_map():
    """Decoding from τ = 1 (σ̄ = ∞) with the exact first step converges to the exact flow map
    x0 = μ + z √v of a Gaussian (the ODE's limit from x̄/σ̄ → z)."""
    gauss = Gaussian(torch.tensor([0.5, -1.0]), torch.tensor([0.4, 0.8]))
    field = ProbabilityFlowODE(gauss.as_model(FLOW, "v"), FLOW, "v")
    z = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    exact = gauss.means[0] + z * gauss.variances[0].sqrt()
    errs = [
        float((_flow_decode(field, z, make_grid(FLOW, "uniform", n), "heun") - exact).abs().max()) for n in (10, 40)
    ]
    assert errs[1] < errs[0] / 3 and errs[1] < 0.02, errs

"""Core: schedules, grids, the field, the driver, DDIM = Euler, exact oracles, bad input."""

import math

import numpy as np
import pytest
import torch
from conftest import CountingModel, TinyEpsNet

import ddim_ode
from ddim_ode import ContinuousSchedule, DiscreteSchedule, ProbabilityFlowODE
from ddim_ode.analytic import EmpiricalDistribution, Gaussian, GaussianMixture, reference_solve

SCHEDULES = {
    "discrete-linear": DiscreteSchedule.linear(),
    "discrete-cosine": DiscreteSchedule.cosine(),
    "continuous-linear": ContinuousSchedule.linear(),
    "continuous-cosine": ContinuousSchedule.cosine(),
}


# --------------------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", SCHEDULES)
def test_sigma_t_roundtrip_and_monotone(name):
    sch = SCHEDULES[name]
    sig = torch.logspace(math.log10(sch.sigma_min), math.log10(sch.sigma_max), 2001, dtype=torch.float64)
    back = sch.sigma(sch.t(sig))
    assert torch.allclose(back, sig, rtol=1e-10, atol=0)
    ts = torch.linspace(sch.t_min, sch.t_max, 5001, dtype=torch.float64)
    s = sch.sigma(ts)
    assert bool((s[1:] > s[:-1]).all())
    assert torch.allclose(sch.t(s), ts, rtol=0, atol=1e-9 * max(1.0, sch.t_max))
    ab = sch.alpha_bar(ts)
    assert torch.allclose(ab, 1 / (1 + s**2))
    assert sch.t(0.0) == sch.t_min  # σ = 0 evaluates the network at the smallest timestep
    assert isinstance(sch.sigma(0.5), float)


def test_discrete_values_equal_cumprod_definition():
    betas = np.linspace(1e-4, 0.02, 1000)
    ab = np.cumprod(1 - betas)
    sch = DiscreteSchedule.linear()
    t = torch.arange(1000, dtype=torch.float64)
    assert np.allclose(sch.alpha_bar(t).numpy(), ab, rtol=1e-12, atol=0)
    assert np.allclose(sch.sigma(t).numpy(), np.sqrt((1 - ab) / ab), rtol=1e-12)
    # construction from alphas_cumprod and from betas agree
    sch2 = DiscreteSchedule(alphas_cumprod=ab)
    assert torch.allclose(sch2.betas, torch.as_tensor(betas), rtol=1e-9)
    assert sch2.t(sch.sigma(123.0)) == pytest.approx(123.0, abs=1e-9)


def test_discrete_cosine_matches_formula():
    big_t, s = 1000, 0.008
    f = lambda t: np.cos(((t / big_t + s) / (1 + s)) * np.pi / 2) ** 2  # noqa: E731
    t = np.arange(big_t)
    expect = f(t + 1) / f(0)  # ᾱ_t uses the first t + 1 betas
    got = DiscreteSchedule.cosine(big_t).alpha_bar(torch.as_tensor(t, dtype=torch.float64)).numpy()
    ok = np.arange(big_t) < 990  # the last betas are clipped at 0.999
    assert np.allclose(got[ok], expect[ok], rtol=1e-10)


def test_discrete_fractional_t_interpolates_log_sigma():
    sch = DiscreteSchedule.linear()
    lo, hi = sch.sigma(100.0), sch.sigma(101.0)
    assert sch.sigma(100.25) == pytest.approx(math.exp(0.75 * math.log(lo) + 0.25 * math.log(hi)), rel=1e-12)


def test_continuous_closed_forms():
    lin = ContinuousSchedule.linear(beta_min=0.1, beta_max=20.0)
    t = torch.linspace(0.001, 1.0, 101, dtype=torch.float64)
    assert torch.allclose(lin.alpha_bar(t), torch.exp(-(0.1 * t + 0.5 * 19.9 * t**2)), rtol=1e-12)
    cos = ContinuousSchedule.cosine()
    f = lambda t: torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    t = torch.linspace(0.001, 0.9946, 101, dtype=torch.float64)
    assert torch.allclose(cos.alpha_bar(t), f(t) / f(torch.zeros(1, dtype=torch.float64)), rtol=1e-10)


def test_schedule_bad_input():
    with pytest.raises(ValueError, match="exactly one"):
        DiscreteSchedule()
    with pytest.raises(ValueError, match="strictly decreasing"):
        DiscreteSchedule(alphas_cumprod=[0.5, 0.9])
    with pytest.raises(ValueError, match="betas"):
        DiscreteSchedule(betas=[0.1, 1.5])


# --------------------------------------------------------------------------------------------- grids


def test_official_ddim_grids():
    sch = DiscreteSchedule.linear()
    for n in (10, 20, 50, 30):
        sig = ddim_ode.make_grid(sch, "uniform", n)
        ts = list(range(0, 1000, 1000 // n))[::-1]
        assert torch.allclose(sig[:-1], sch.sigma(torch.tensor(ts, dtype=torch.float64)))
        assert sig[-1] == 0.0
    sig = ddim_ode.make_grid(sch, "quad", 20)
    ts = sorted({int(s) for s in np.linspace(0, np.sqrt(800), 20) ** 2}, reverse=True)
    assert torch.allclose(sig[:-1], sch.sigma(torch.tensor(ts, dtype=torch.float64)))


@pytest.mark.parametrize("grid", list(ddim_ode.GRIDS))
@pytest.mark.parametrize("name", SCHEDULES)
def test_grids_are_float64_monotone_with_trailing_zero(grid, name):
    sch = SCHEDULES[name]
    for n in (1, 2, 7, 25):
        sig = ddim_ode.make_grid(sch, grid, n)
        assert sig.dtype == torch.float64
        assert sig[-1] == 0 and bool((sig[1:] < sig[:-1]).all())
        assert len(sig) - 1 <= n + 1
    top = ddim_ode.make_grid(sch, grid, 10, t_hi=sch.t_max * 0.5, t_lo=sch.t_max * 0.1)
    assert float(top[0]) == pytest.approx(sch.sigma(sch.t_max * 0.5), rel=1e-2 if sch.is_discrete else 1e-12)
    assert float(top[-1]) > 0


# --------------------------------------------------------------------------------------------- DDIM = Euler


def _official_ddim(model, x_t, ab, seq):
    """The DDIM update (η = 0) written from the paper's formula, x̂0 then the direction term."""
    seq_next = [-1] + list(seq[:-1])
    x = x_t
    for i, j in zip(reversed(seq), reversed(seq_next)):
        a_t = ab[i]
        a_s = ab[j] if j >= 0 else torch.tensor(1.0, dtype=torch.float64)
        e = model(x, torch.full((x.shape[0],), float(i), dtype=torch.float64))
        x0_hat = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
        x = a_s.sqrt() * x0_hat + (1 - a_s).sqrt() * e
    return x


@pytest.mark.parametrize("grid", ["uniform", "quad"])
@pytest.mark.parametrize("n", [10, 20, 50])
def test_ddim_equals_euler(grid, n):
    torch.manual_seed(0)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ab = torch.cumprod(1 - betas, 0)
    if grid == "uniform":
        seq = list(range(0, 1000, 1000 // n))
    else:
        seq = [int(s) for s in np.linspace(0, np.sqrt(800), n) ** 2]
    model = TinyEpsNet(dim=6)
    x_t = torch.randn(5, 6, dtype=torch.float64)
    want = _official_ddim(model, x_t, ab, seq)
    sch = DiscreteSchedule.linear()
    got = ddim_ode.decode(x_t, solver="euler", n=n, model=model, schedule=sch, grid=grid)
    assert (got - want).abs().max() < 1e-10


# --------------------------------------------------------------------------------------------- convergence


def _fit_order(ns, errs):
    return -np.polyfit(np.log(ns), np.log(errs), 1)[0]


@pytest.mark.parametrize("direction", ["decode", "encode"])
def test_euler_order_on_exact_gaussian(direction):
    """Euler's measured order on N(μ, s²), σ between 10 and 0.1 on a geometric grid: 1 ± 0.15."""
    g = Gaussian(torch.tensor([0.5, -1.0, 2.0]), 0.3)
    sch = DiscreteSchedule.linear()
    gen = torch.Generator().manual_seed(1)
    hi, lo = 10.0, 0.1
    ns = [16, 32, 64, 128]
    errs = []
    for n in ns:
        sig = torch.logspace(math.log10(hi), math.log10(lo), n + 1, dtype=torch.float64)
        if direction == "encode":
            sig = sig.flip(0)
        xbar0 = torch.randn(8, 3, dtype=torch.float64, generator=gen.manual_seed(1)) * (1 + float(sig[0]))
        x_start = ddim_ode.from_xbar(xbar0, float(sig[0]))
        sol = ddim_ode.integrate(x_start, "euler", model=g, schedule=sch, sigmas=sig, return_solution=True)
        exact = g.solution(xbar0, float(sig[0]), float(sig[-1]))
        errs.append(float((sol.xbar - exact).pow(2).mean().sqrt()))
    order = _fit_order(ns, errs)
    assert abs(order - 1.0) < 0.15, (order, errs)


def test_roundtrip_error_decreases_with_n():
    mix = GaussianMixture.ring()
    sch = DiscreteSchedule.linear()
    x0 = mix.sample(64, torch.Generator().manual_seed(0))
    mses = []
    for n in (5, 10, 20, 50, 100):
        lat = ddim_ode.encode(x0, "euler", n, model=mix, schedule=sch)
        rec = ddim_ode.decode(lat, "euler", n, model=mix, schedule=sch)
        mses.append(float((rec - x0).pow(2).mean()))  # per-dimension MSE
    assert all(b < a for a, b in zip(mses, mses[1:])), mses
    assert mses[-1] < 0.2 * mses[0]


def test_euler_agrees_with_reference_on_mixture():
    mix = GaussianMixture.ring()
    sch = DiscreteSchedule.linear()
    x_t = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    field = ProbabilityFlowODE(mix, sch)
    errs = []
    ns = [25, 50, 100, 200]
    for n in ns:
        sig = ddim_ode.make_grid(sch, "karras", n, t_lo=200.0)
        sol = ddim_ode.integrate(x_t, "euler", model=mix, schedule=sch, sigmas=sig, return_solution=True)
        ref, _ = reference_solve(field, ddim_ode.to_xbar(x_t, float(sig[0])), float(sig[0]), float(sig[-1]))
        errs.append(float((sol.xbar - ref).pow(2).mean().sqrt()))
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert 0.7 < _fit_order(ns, errs) < 1.3, errs


# --------------------------------------------------------------------------------------------- the field


def test_nfe_count_and_trajectory():
    net = CountingModel(TinyEpsNet(dim=4))
    sch = DiscreteSchedule.linear()
    x = torch.randn(3, 4, dtype=torch.float64)
    sol = ddim_ode.decode(x, "euler", 20, model=net, schedule=sch, return_solution=True, trajectory=True)
    assert sol.nfe == 20 == len(net.calls)
    assert sol.trajectory is not None and sol.trajectory.shape == (21, 3, 4)
    assert torch.equal(sol.trajectory[-1], sol.xbar) and torch.equal(sol.x, sol.xbar)
    # timesteps handed to the network: 950, 900, ..., 0 (the last step ends at σ = 0)
    ts = torch.stack([c[0] for c in net.calls])
    assert torch.equal(ts, torch.arange(950, -1, -50, dtype=ts.dtype))
    assert all(c.shape == (3,) for c in net.calls)


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_prediction_types_convert_to_eps(prediction):
    sch = DiscreteSchedule.linear()
    g = Gaussian(torch.zeros(3), 0.7)
    eps_model = g.as_eps_model(sch)

    def other(x_t, t):
        e = eps_model(x_t, t)
        ab = sch.alpha_bar(t.to(torch.float64)).to(x_t.dtype)[:, None]
        x0 = (x_t - (1 - ab).sqrt() * e) / ab.sqrt()
        return ab.sqrt() * e - (1 - ab).sqrt() * x0 if prediction == "v" else x0

    x = torch.randn(4, 3, dtype=torch.float64)
    a = ddim_ode.decode(x, "euler", 10, model=eps_model, schedule=sch)
    b = ddim_ode.decode(x, "euler", 10, model=other, schedule=sch, prediction=prediction)
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)


def test_exact_eps_is_scaled_score():
    """The closed-form ε equals −σ ∇ log p_σ(x̄) from autograd on the mixture density."""
    for mix in (GaussianMixture.ring(), GaussianMixture.random(k=4, dim=5)):
        x = (3 * torch.randn(6, mix.dim, dtype=torch.float64)).requires_grad_(True)
        for sigma in (0.05, 0.7, 12.0):
            (grad,) = torch.autograd.grad(mix.log_prob_xbar(x, sigma).sum(), x)
            assert torch.allclose(mix.eps_xbar(x, sigma), -sigma * grad, rtol=1e-8, atol=1e-10)


def test_gaussian_solution_solves_the_ode():
    g = Gaussian(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 1.5]))
    x = torch.randn(3, 2, dtype=torch.float64) * 20
    ref, nfe = reference_solve(g.eps_xbar, x, 20.0, 0.0)
    assert torch.allclose(ref, g.solution(x, 20.0, 0.0), rtol=1e-8, atol=1e-8) and nfe > 0


def test_empirical_distribution_decodes_to_data():
    data = torch.tensor([[0.0, 1.0], [2.0, -1.0], [-3.0, 0.5]], dtype=torch.float64)
    emp = EmpiricalDistribution(data)
    sch = DiscreteSchedule.linear()
    x_t = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = ddim_ode.decode(x_t, "euler", 200, model=emp, schedule=sch, grid="karras")
    dist = torch.cdist(out, data).min(1).values
    assert float(dist.max()) < 0.05


def test_state_keeps_caller_dtype_and_oracle_as_eps_model_matches_exact_field():
    sch = DiscreteSchedule.linear()
    mix = GaussianMixture.ring()
    x = torch.randn(8, 2)
    out32 = ddim_ode.decode(x, "euler", 20, model=mix.as_eps_model(sch), schedule=sch)
    assert out32.dtype == torch.float32
    out64 = ddim_ode.decode(x.double(), "euler", 20, model=mix.as_eps_model(sch), schedule=sch)
    assert (out32.double() - out64).abs().max() < 1e-4


def test_half_precision_network_drives_float32_state():
    sch = DiscreteSchedule.linear()
    net = TinyEpsNet(dim=4, dtype=torch.bfloat16)
    x = torch.randn(2, 4)
    out = ddim_ode.decode(x, "euler", 5, model=net, schedule=sch)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())


def test_integrate_directions_and_endpoints():
    sch = DiscreteSchedule.linear()
    g = Gaussian(torch.zeros(2), 0.5)
    x = torch.randn(4, 2, dtype=torch.float64)
    down = ddim_ode.integrate(x, "euler", 400, model=g, schedule=sch, t_start=800, t_end=200, return_solution=True)
    assert float(down.sigmas[0]) == pytest.approx(sch.sigma(800.0)) and float(down.sigmas[-1]) == pytest.approx(
        sch.sigma(200.0)
    )
    up = ddim_ode.integrate(down.x, "euler", 400, model=g, schedule=sch, t_start=200, t_end=800, return_solution=True)
    assert bool((up.sigmas[1:] > up.sigmas[:-1]).all())
    assert (up.x - x).abs().max() < 5e-3
    exact = g.solution(ddim_ode.to_xbar(x, float(down.sigmas[0])), float(down.sigmas[0]), float(down.sigmas[-1]))
    assert (down.xbar - exact).abs().max() < 5e-3


def test_check_finite_names_the_step():
    sch = DiscreteSchedule.linear()

    def bad(x_t, t):
        return torch.where(t[:, None] < 300, torch.nan, 0.1 * x_t)

    with pytest.raises(FloatingPointError, match=r"step \d+ of 20 \(sigma"):
        ddim_ode.decode(torch.randn(2, 3), "euler", 20, model=bad, schedule=sch)


# --------------------------------------------------------------------------------------------- bad input


def _net():
    return TinyEpsNet(dim=3)


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        ({"solver": "nope"}, ValueError, "unknown solver 'nope'; available: .*euler"),
        ({"n": 0}, ValueError, r"n \(number of steps\) must be >= 1"),
        ({"n": 2.5}, TypeError, "must be an int"),
        ({"grid": "cubic"}, ValueError, "unknown grid 'cubic'; allowed: uniform, quad, logsnr, karras"),
        ({"sigmas": [10.0, 5.0, 7.0, 0.0]}, ValueError, r"sigmas must be strictly decreasing \(decoding order"),
        ({"sigmas": [1e6, 0.0]}, ValueError, "above the schedule's sigma_max"),
        ({"sigmas": [3.0, 1.0]}, ValueError, "sigmas must end at sigma = 0"),
        ({"prediction": "score"}, ValueError, "unknown prediction type 'score'; allowed: eps, x0, v"),
        ({"schedule": None}, ValueError, "schedule is required"),
        ({"n": 2000}, ValueError, "at most n=1000"),
    ],
)
def test_bad_input_messages(kwargs, exc, pattern):
    args = dict(model=_net(), schedule=DiscreteSchedule.linear())
    args.update(kwargs)
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(exc, match=pattern):
        ddim_ode.decode(x, **args)


def test_bad_tensors():
    sch = DiscreteSchedule.linear()
    with pytest.raises(ValueError, match="NaN or Inf"):
        ddim_ode.decode(torch.tensor([[0.0, math.inf, 1.0]]), model=_net(), schedule=sch)
    with pytest.raises(TypeError, match="floating dtype"):
        ddim_ode.decode(torch.ones(2, 3, dtype=torch.int64), model=_net(), schedule=sch)
    with pytest.raises(ValueError, match="batched"):
        ddim_ode.decode(torch.ones(3), model=_net(), schedule=sch)
    with pytest.raises(ValueError, match=r"returned shape \(2, 2\) for input shape \(2, 3\)"):
        ddim_ode.decode(torch.ones(2, 3), model=lambda x, t: x[:, :2], schedule=sch)
    with pytest.raises(TypeError, match="floating dtype is required"):
        ddim_ode.decode(torch.ones(2, 3), model=lambda x, t: x.long(), schedule=sch)
    with pytest.raises(ValueError, match="outside the schedule's range"):
        ddim_ode.integrate(torch.ones(2, 3), model=_net(), schedule=sch, t_start=5000)

"""Log-likelihoods through the probability-flow ODE against closed-form densities."""

import math

import pytest
import torch
from conftest import TinyEpsNet

from ddim_ode import DiscreteSchedule, ProbabilityFlowODE
from ddim_ode.analytic import Gaussian, GaussianMixture
from ddim_ode.divergence import exact_divergence
from ddim_ode.likelihood import log_likelihood, vp_prior_log_prob

SCHEDULE = DiscreteSchedule.linear()
TIGHT = dict(rtol=1e-8, atol=1e-8)


pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny solves


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "oracle",
    [
        Gaussian(torch.tensor([0.3, -0.5, 1.0]), torch.tensor([0.5, 1.2, 0.8])),
        GaussianMixture.ring(k=6, radius=2.0, std=0.3),
        GaussianMixture.random(k=4, dim=8),
    ],
    ids=["gaussian", "ring", "mixture-8d"],
)
def test_exact_divergence_matches_closed_form(oracle):
    x0 = oracle.sample(6, generator=_gen(0))
    res = log_likelihood(x0, oracle, SCHEDULE, prior=oracle.log_prob_xbar, **TIGHT)
    err = (res.log_prob - oracle.log_prob(x0)).abs().max() / res.dim
    assert err < 1e-4  # measured ~1e-7 nats/dim
    assert res.log_prob_std_err is None and res.nfe > 0 and res.dim == oracle.dim
    bpd = -res.log_prob / (res.dim * math.log(2))
    torch.testing.assert_close(res.bits_per_dim, bpd)


def test_vp_prior_is_exact_for_standard_normal_data():
    # N(0, I) data: the x̄-marginal at σ is N(0, (1 + σ²) I), exactly the VP prior
    oracle = Gaussian(torch.zeros(4), 1.0)
    x0 = oracle.sample(8, generator=_gen(1))
    res = log_likelihood(x0, oracle, SCHEDULE, **TIGHT)
    assert (res.log_prob - oracle.log_prob(x0)).abs().max() / 4 < 1e-4
    xbar_top = res.latent * math.sqrt(1 + res.sigma_max**2)
    torch.testing.assert_close(res.prior_log_prob, oracle.log_prob_xbar(xbar_top, res.sigma_max))


def test_vp_prior_formula():
    xbar = torch.randn(5, 3, generator=_gen(2), dtype=torch.float64) * 10
    ref = Gaussian(torch.zeros(3), math.sqrt(1 + 10.0**2)).log_prob(xbar)
    torch.testing.assert_close(vp_prior_log_prob(xbar, 10.0), ref)


def test_sigma_min_gives_the_blurred_density():
    oracle = GaussianMixture.ring(k=4, radius=2.0, std=0.2)
    x0 = oracle.sample(8, generator=_gen(3))
    res = log_likelihood(x0, oracle, SCHEDULE, sigma_min=0.1, prior=oracle.log_prob_xbar, **TIGHT)
    assert (res.log_prob - oracle.log_prob_xbar(x0, 0.1)).abs().max() / 2 < 1e-4
    assert res.sigma_min == 0.1


@pytest.mark.parametrize("probe_dist", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_with_honest_std_err(probe_dist):
    oracle = GaussianMixture.random(k=3, dim=6, seed=1)
    x0 = oracle.sample(16, generator=_gen(4))
    res = log_likelihood(
        x0,
        oracle,
        SCHEDULE,
        divergence="hutchinson",
        probes=32,
        probe_dist=probe_dist,
        generator=_gen(5),
        prior=oracle.log_prob_xbar,
        rtol=1e-6,
        atol=1e-6,
    )
    z = (res.log_prob - oracle.log_prob(x0)) / res.log_prob_std_err
    assert z.abs().max() < 5 and float((z * z).mean()) < 3
    assert res.bits_per_dim_std_err is not None and bool((res.bits_per_dim_std_err > 0).all())
    summary = res.summary()
    assert summary["bits_per_dim_sem_estimator"] > 0 and summary["probes"] == 32


def test_exact_divergence_is_the_jacobian_trace():
    net = TinyEpsNet(dim=5)
    field = ProbabilityFlowODE(net, SCHEDULE)
    x = torch.randn(3, 5, generator=_gen(6), dtype=torch.float64, requires_grad=True)
    eps = field(x * 2.0, 1.5)
    div = exact_divergence(eps, x, chunk=2)[:, 0]
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda z: field(z[None] * 2.0, 1.5)[0], x[b].detach())
        torch.testing.assert_close(div[b], torch.trace(jac))


def test_network_model_exact_and_hutchinson_agree():
    net = TinyEpsNet(dim=4)
    x0 = torch.randn(6, 4, generator=_gen(7), dtype=torch.float64)
    exact = log_likelihood(x0, net, SCHEDULE, rtol=1e-6, atol=1e-6)
    hutch = log_likelihood(
        x0, net, SCHEDULE, rtol=1e-6, atol=1e-6, divergence="hutchinson", probes=32, generator=_gen(8)
    )
    z = (hutch.log_prob - exact.log_prob) / hutch.log_prob_std_err
    assert z.abs().max() < 5
    assert bool(torch.isfinite(exact.log_prob).all())


def test_fixed_grid_method_converges():
    oracle = Gaussian(torch.tensor([0.2, -0.1]), 0.7)
    x0 = oracle.sample(4, generator=_gen(9))
    res = log_likelihood(x0, oracle, SCHEDULE, method="rk4", options={"step_size": 0.1}, prior=oracle.log_prob_xbar)
    assert (res.log_prob - oracle.log_prob(x0)).abs().max() / 2 < 1e-4


def test_dequantisation_and_bin_width():
    oracle = Gaussian(torch.zeros(3), 0.5)
    levels = torch.randint(0, 17, (4, 3), generator=_gen(10)).to(torch.float64) / 16 * 2 - 1
    width = 2 / 16
    plain = log_likelihood(levels, oracle, SCHEDULE, bin_width=width, rtol=1e-6, atol=1e-6)
    bpd = -(plain.log_prob + 3 * math.log(width)) / (3 * math.log(2))
    torch.testing.assert_close(plain.bits_per_dim, bpd)
    rng = torch.random.get_rng_state()
    a = log_likelihood(levels, oracle, SCHEDULE, bin_width=width, dequantize="uniform", generator=_gen(11))
    b = log_likelihood(levels, oracle, SCHEDULE, bin_width=width, dequantize="uniform", generator=_gen(11))
    assert torch.equal(torch.random.get_rng_state(), rng)  # the global RNG is untouched
    torch.testing.assert_close(a.log_prob, b.log_prob)
    assert not torch.allclose(a.log_prob, plain.log_prob)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(divergence="trace"), "allowed: exact, hutchinson"),
        (dict(probe_dist="uniform"), "allowed: rademacher, gaussian"),
        (dict(dequantize="gaussian"), "allowed: none, uniform"),
        (dict(dequantize="uniform"), "needs bin_width"),
        (dict(method="rk45"), "allowed \\(torchdiffeq\\)"),
        (dict(method="rk4"), "step_size"),
        (dict(probes=0), "probes must be"),
        (dict(sigma_min=200.0), "sigma_min"),
        (dict(prior="standard"), "unknown prior"),
    ],
)
def test_bad_input_names_the_allowed_values(kwargs, match):
    oracle = Gaussian(torch.zeros(2), 1.0)
    with pytest.raises(ValueError, match=match):
        log_likelihood(torch.zeros(2, 2), oracle, SCHEDULE, **kwargs)


def test_model_without_schedule_is_an_error():
    with pytest.raises(ValueError, match="schedule is required"):
        log_likelihood(torch.zeros(2, 2), Gaussian(torch.zeros(2), 1.0))
    with pytest.raises(TypeError, match="floating"):
        log_likelihood(torch.zeros(2, 2, dtype=torch.int64), Gaussian(torch.zeros(2), 1.0), SCHEDULE)


def test_builtin_model_smoke():
    try:
        from ddim_ode.data import load_digits
        from ddim_ode.io import load_default

        load_default()
        x0 = load_digits("heldout")[:2].double()
    except (FileNotFoundError, ImportError) as err:
        pytest.skip(f"built-in model or digits unavailable: {err}")
    res = log_likelihood(
        x0, divergence="hutchinson", probes=2, dequantize="uniform", rtol=1e-3, atol=1e-3, generator=_gen(12)
    )
    assert res.bin_width == 2 / 16 and res.dim == 64
    assert bool(torch.isfinite(res.bits_per_dim).all()) and 0 < float(res.bits_per_dim.mean()) < 8

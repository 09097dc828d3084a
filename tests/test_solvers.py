"""Numerical tests of the solver family, parametrised over the registry.

A newly registered solver is picked up by every test below: its measured order must match its
declared ``order``, its NFE must follow the rule derived from its attributes (``expected_nfe``),
first-order members must equal Euler, reversible ones must round-trip exactly, and so on.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from conftest import deterministic_solvers, fixed_grid_solvers
from torch import Tensor

from ddim_ode import DiscreteSchedule, analytic, decode, encode, integrate, make_grid
from ddim_ode.field import ProbabilityFlowODE
from ddim_ode.solvers import (
    EMBEDDED,
    IPNDM_COEFFICIENTS,
    PLMS,
    RK4_CLASSIC,
    SOLVERS,
    AdamsBashforth,
    ButcherTableau,
    DPMSolver,
    DPMSolverPlusPlus,
    ExplicitRK,
    ReversibleHeun,
    ReversibleLatent,
    Solver,
    StepSizeController,
    adams_bashforth_weights,
    ancestral_sigmas,
    get_solver,
    integrate_embedded,
    list_solvers,
    touches_zero,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # thousands of tiny steps

SCHEDULE = DiscreteSchedule.linear()
ALL = sorted(SOLVERS)
_DEFAULT = {name: get_solver(name) for name in ALL}
FIXED = fixed_grid_solvers()
ADAPTIVE = [n for n in ALL if _DEFAULT[n].adaptive]
DETERMINISTIC = deterministic_solvers()
STOCHASTIC = [n for n in ALL if _DEFAULT[n].stochastic]
REVERSIBLE = [n for n in ALL if _DEFAULT[n].reversible]

# constructor variants whose declared order differs from the default's, or that change the step
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("heun", {"final_step": "full"}),
    ("dpm-solver++2m", {"warmup": "singlestep"}),
    ("dpm-solver++3m", {"warmup": "singlestep"}),
    ("dpm-solver++3m", {"warmup": "singlestep", "third_order_term": "published"}),
    ("plms", {"warmup": "singlestep"}),
    ("plms", {"order": 3, "warmup": "singlestep"}),
    ("unipc", {"order": 1}),
    ("unipc", {"order": 3}),
    ("unipc", {"prediction": "noise"}),
    ("unipc", {"variant": "bh1"}),
    ("unipc", {"corrector": False}),
    ("ipndm", {"max_order": 2}),
    ("ipndm", {"max_order": 3}),
]
ORDER_CASES = [(n, {}) for n in DETERMINISTIC] + VARIANTS


def _id(case: tuple[str, dict[str, Any]]) -> str:
    name, options = case
    return name + "".join(f"[{k}={v}]" for k, v in options.items())


def _rms(a: Tensor, b: Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).mean().sqrt())


def _geometric(hi: float, lo: float, n: int) -> np.ndarray:
    return np.exp(np.linspace(math.log(hi), math.log(lo), n + 1))


class Counting:
    """An exact oracle that counts its evaluations (a SigmaModel)."""

    def __init__(self, oracle: analytic.AnalyticModel) -> None:
        self.oracle = oracle
        self.calls = 0

    def eps_xbar(self, xbar: Tensor, sigma: float) -> Tensor:
        self.calls += 1
        return self.oracle.eps_xbar(xbar, sigma)


class CountingEps(torch.nn.Module):
    """An ε-network ``eps(x_t, t)`` (the exact oracle through the schedule) that counts its calls."""

    def __init__(self, oracle: analytic.AnalyticModel) -> None:
        super().__init__()
        self.inner = oracle.as_eps_model(SCHEDULE)
        self.calls = 0

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.inner(x_t, t)


# ---------------------------------------------------------------------------------------------
# registry


def test_registry_lists_every_solver_with_order_nfe_and_paper():
    infos = {info.name: info for info in list_solvers()}
    assert set(infos) == set(SOLVERS)
    expected = {"euler", "heun", "midpoint", "rk4", "dpm-solver-1", "dpm-solver-2", "dpm-solver-3"}
    expected |= {"dpm-solver++2m", "dpm-solver++3m", "plms", "unipc", "belm", "reversible-heun", "ddim", "ddpm"}
    expected |= {"dopri5", "bosh3", "dopri8", "adaptive_heun", "ipndm", "ipndm-v"}
    assert expected <= set(infos)
    for name, info in infos.items():
        solver = get_solver(name)
        doc = type(solver).__doc__ or ""
        assert (info.order, info.nfe_per_step, info.adaptive) == (solver.order, solver.nfe_per_step, solver.adaptive)
        assert info.paper, f"{name}: no source paper"
        assert "rder" in doc and "NFE" in doc, f"{name}: docstring must state order and NFE per step"
        assert solver.name == name


def test_every_declared_order_is_measured():
    """Each ODE solver's declared order is checked against a measurement: the convergence tests below
    for the fixed-grid ones, the pair's local error (``test_embedded_pairs_have_their_orders``) for the
    adaptive ones; the stochastic samplers are the η > 0 members of ``ddim``, whose η = 0 member is measured."""
    measured = {name for name, _ in ORDER_CASES}
    for name in ALL:
        solver = _DEFAULT[name]
        if solver.adaptive:
            assert solver.order == EMBEDDED[solver.method_name].order, name
        elif solver.stochastic:
            assert solver.order == get_solver("ddim").order == 1 and "ddim" in measured, name
        else:
            assert name in measured, name


def test_butcher_tableaux_are_validated():
    with pytest.raises(ValueError, match="order-2 condition"):
        ButcherTableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.4, 0.6), order=2)
    with pytest.raises(ValueError, match="order-4 condition"):  # Kutta's third-order method claimed as fourth
        ButcherTableau(c=(0.0, 0.5, 1.0), a=((), (0.5,), (-1.0, 2.0)), b=(1 / 6, 2 / 3, 1 / 6), order=4)
    with pytest.raises(ValueError, match="row sum of a\\[1\\]"):
        ButcherTableau(c=(0.0, 0.5), a=((), (1.0,)), b=(0.0, 1.0), order=1)
    heun = dict(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2)
    with pytest.raises(ValueError, match="error weights e must sum to 0"):
        ButcherTableau(**heun, e=(0.5, -0.25))  # b̂ = b − e would not sum to 1
    rk4 = dict(c=RK4_CLASSIC.c, a=RK4_CLASSIC.a, b=RK4_CLASSIC.b, order=4)
    with pytest.raises(ValueError, match="embedded tableau fails an order-2 condition"):  # b̂ = Euler, not 3rd order
        ButcherTableau(**rk4, e=(1 / 6 - 1, 1 / 3, 1 / 3, 1 / 6))
    with pytest.raises(ValueError, match="FSAL"):
        ButcherTableau(**heun, fsal=True)  # no error weights
    pair = ButcherTableau(**heun, e=(-0.5, 0.5), fsal=True)  # Heun–Euler: b̂ = (1, 0) is first order
    assert pair.nfe_per_step == 1 and not pair.last_is_solution
    assert EMBEDDED["dopri5"].last_is_solution and EMBEDDED["dopri5"].nfe_per_step == 6


def test_adams_bashforth_weights_reduce_to_the_classical_ones():
    """On uniform nodes the variable-step weights are the constant ones of every order (iPNDM's table)."""
    h = -0.1
    for k, coefficients in enumerate(IPNDM_COEFFICIENTS, start=1):
        nodes = [1.0 - j * h for j in range(k)][::-1]  # oldest first, the last one σ = 1
        w = adams_bashforth_weights(nodes, 1.0, 1.0 + h)
        assert np.allclose(np.array(w[::-1]) / h, coefficients, atol=1e-13, rtol=0), k
    assert IPNDM_COEFFICIENTS[3] == pytest.approx(np.array([55, -59, 37, -9]) / 24, abs=1e-16)


# ---------------------------------------------------------------------------------------------
# convergence order on the exact Gaussian problem

GAUSS = analytic.Gaussian(torch.tensor([0.5, -1.0]), 0.5)
# On this problem dx̄/dσ = a(σ)(x̄ − μ) with a = σ/(v + σ²). The explicit midpoint rule's local error
# is h³ y [a''/24 + a a'/4 + a³/6], and for this a the bracket is identically zero, so midpoint
# converges at order 3 here; it shows its declared order 2 on the mixture test below.
GAUSSIAN_ORDER = {"midpoint": 3}


def _gaussian_error(name: str, options: dict[str, Any], n: int, direction: str) -> float:
    sig = _geometric(2.0, 0.05, n)
    if direction == "encode":
        sig = sig[::-1].copy()
    a, b = float(sig[0]), float(sig[-1])
    z = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    xbar = GAUSS.means[0] + z * math.sqrt(0.25 + a * a)
    sol = integrate(
        xbar / math.sqrt(1 + a * a),
        name,
        n,
        model=GAUSS,
        schedule=SCHEDULE,
        sigmas=sig,
        solver_options=options,
        return_solution=True,
    )
    return _rms(sol.xbar, GAUSS.solution(xbar, a, b))


@pytest.mark.parametrize("direction", ["decode", "encode"])
@pytest.mark.parametrize("case", ORDER_CASES, ids=_id)
def test_order_on_exact_gaussian(case, direction):
    """Measured order of convergence against the closed-form solution (docs/math.md §11), float64.

    Data N(μ, 0.5²) in 2-D; grid geometric in σ (uniform in λ = −log σ) between σ = 2 and σ = 0.05,
    given with ``sigmas=`` (decoding 2 → 0.05, encoding 0.05 → 2). The range straddles the data
    scale, so lower-order warm-up steps of multistep methods show their effect on the global order
    instead of hiding in the nearly linear flow at large σ. The slope between n = 256 and 512
    (asymptotic for every solver) must be within ±0.3 of the declared order.
    """
    name, options = case
    declared = get_solver(name, **options).order
    expected = GAUSSIAN_ORDER.get(name, declared) if not options else declared
    errs = [_gaussian_error(name, options, n, direction) for n in (128, 256, 512)]
    assert errs[0] > errs[1] > errs[2], errs
    slope = math.log2(errs[1] / errs[2])
    assert abs(slope - expected) <= 0.3, f"{_id(case)} {direction}: measured order {slope:.2f}, expected {expected}"


# ---------------------------------------------------------------------------------------------
# agreement with a float64 reference on a multimodal mixture

MIXTURE = analytic.GaussianMixture(
    torch.tensor([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]]),
    torch.tensor([0.3, 0.4, 0.5]) ** 2,
    torch.tensor([0.3, 0.3, 0.4]),
)


@pytest.fixture(scope="module")
def mixture_problem() -> dict[str, Tensor]:
    field = ProbabilityFlowODE(MIXTURE, SCHEDULE)
    x = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    xbar5 = x * math.sqrt(25.0 + 0.5)
    ref5, _ = analytic.reference_solve(field, xbar5, 5.0, 0.05, rtol=1e-13, atol=1e-13)
    top = SCHEDULE.sigma_max
    x_T = x
    ref_decode, _ = analytic.reference_solve(field, x_T * math.sqrt(1 + top * top), top, 0.0, rtol=1e-12, atol=1e-12)
    x0 = MIXTURE.sample(32, generator=torch.Generator().manual_seed(4))
    ref_encode, _ = analytic.reference_solve(field, x0, 0.0, top, rtol=1e-12, atol=1e-12)
    return {
        "xbar5": xbar5,
        "ref5": ref5,
        "x_T": x_T,
        "ref_decode": ref_decode,
        "x0": x0,
        "ref_encode": ref_encode / math.sqrt(1 + top * top),
    }


@pytest.mark.parametrize("case", ORDER_CASES, ids=_id)
def test_mixture_reference_error_decreases_at_declared_rate(case, mixture_problem):
    """3-mode 2-D mixture (exact ε), decoding σ = 5 → 0.05 on a geometric grid, against a DOP853
    reference at rtol = atol = 1e-13. The error must fall with n at least at the declared order
    (slope between n = 128 and 256 ≥ order − 0.3; midpoint shows its generic order 2 here)."""
    name, options = case
    order = get_solver(name, **options).order
    errs = []
    for n in (64, 128, 256):
        sol = integrate(
            mixture_problem["xbar5"] / math.sqrt(26.0),
            name,
            n,
            model=MIXTURE,
            schedule=SCHEDULE,
            sigmas=_geometric(5.0, 0.05, n),
            solver_options=options,
            return_solution=True,
        )
        errs.append(_rms(sol.xbar, mixture_problem["ref5"]))
    assert errs[0] > errs[1] > errs[2], errs
    slope = math.log2(errs[1] / errs[2])
    assert slope >= order - 0.3, f"{_id(case)}: measured rate {slope:.2f} < declared order {order}"
    if name == "midpoint":
        assert abs(slope - 2) <= 0.3


@pytest.mark.parametrize("variable", ["log", "sigma"])
@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_solvers_meet_their_tolerance(name, variable, mixture_problem):
    """Full range σ_max ↔ 0 on the mixture: decode and encode errors (RMS per dimension, x0 and the
    VP latent) within 20× rtol = atol = 1e-4 (a local tolerance bounds the global error only up to
    such a factor), and the NFE reported is the number of network calls made."""
    tol = 1e-4
    options = {"rtol": tol, "atol": tol, "variable": variable}
    model = Counting(MIXTURE)
    sol = decode(
        mixture_problem["x_T"],
        name,
        10,
        model=model,
        schedule=SCHEDULE,
        grid="karras",
        solver_options=options,
        return_solution=True,
    )
    assert sol.nfe == model.calls > 0
    assert _rms(sol.x, mixture_problem["ref_decode"]) <= 20 * tol
    z = encode(mixture_problem["x0"], name, 10, model=MIXTURE, schedule=SCHEDULE, grid="karras", solver_options=options)
    assert _rms(z, mixture_problem["ref_encode"]) <= 20 * tol


def test_adaptive_error_follows_the_tolerance(mixture_problem):
    errs, nfes = [], []
    for tol in (1e-3, 1e-6):
        sol = decode(
            mixture_problem["x_T"],
            "dopri5",
            10,
            model=MIXTURE,
            schedule=SCHEDULE,
            grid="karras",
            solver_options={"rtol": tol, "atol": tol},
            return_solution=True,
        )
        errs.append(_rms(sol.x, mixture_problem["ref_decode"]))
        nfes.append(sol.nfe)
    assert errs[1] < errs[0] / 100 and nfes[1] > nfes[0]


# ---------------------------------------------------------------------------------------------
# NFE counts


def expected_nfe(solver: Solver, sigmas: list[float]) -> int:
    """The NFE of a solve along ``sigmas`` from no state, from the solver's attributes and documented rules.

    * A step costs ``nfe_per_step`` (a Runge–Kutta method's: its tableau's stages).
    * A step touching σ = 0 is one first-order step, 1 NFE, unless a Runge–Kutta method has
      ``final_step="full"``.
    * ``warmup="singlestep"``: while a k-step method knows fewer than k − 1 usable earlier
      evaluations, a step not touching σ = 0 is a single-step method of order k (DPM-Solver-k for
      DPM-Solver++, RK4 for PLMS). DPM-Solver++ cannot use an evaluation at σ = 0 (λ = ∞).
    * Reversible Heun evaluates its auxiliary point once more to start; an analytic first step of
      an Adams–Bashforth solver on a decoding grid saves the first evaluation.
    """
    steps = list(zip(sigmas[:-1], sigmas[1:]))
    full = isinstance(solver, ExplicitRK) and solver.final_step == "full"
    if isinstance(solver, ExplicitRK):
        assert solver.nfe_per_step == solver.tableau.stages
    cost = [1 if touches_zero(a, b) and not full else int(solver.nfe_per_step) for a, b in steps]
    if isinstance(solver, (DPMSolverPlusPlus, PLMS)) and solver.warmup == "singlestep":
        k = solver.steps_order
        stages = int(DPMSolver(order=k).nfe_per_step) if isinstance(solver, DPMSolverPlusPlus) else RK4_CLASSIC.stages
        usable = 0
        for i, (a, b) in enumerate(steps):
            if usable < k - 1 and not touches_zero(a, b):
                cost[i] = stages
            usable += 0 if (a == 0.0 and isinstance(solver, DPMSolverPlusPlus)) else 1
    if isinstance(solver, ReversibleHeun):
        cost[0] += 1
    if isinstance(solver, AdamsBashforth) and solver.analytic_first_step and sigmas[-1] < sigmas[0]:
        cost[0] -= 1
    return sum(cost)


NFE_CASES = [(n, {}) for n in FIXED] + [
    ("heun", {"final_step": "full"}),
    ("rk4", {"final_step": "full"}),
    ("dpm-solver++2m", {"warmup": "singlestep"}),
    ("dpm-solver++3m", {"warmup": "singlestep"}),
    ("plms", {"warmup": "singlestep"}),
    ("plms", {"order": 3, "warmup": "singlestep"}),
    ("ipndm", {"analytic_first_step": True}),
    ("ipndm-v", {"analytic_first_step": True}),
]


@pytest.mark.parametrize("case", NFE_CASES, ids=_id)
def test_nfe_counts_are_exact(case):
    name, options = case
    n = 7
    decoding = make_grid(SCHEDULE, "karras", n)
    noisy = torch.as_tensor(_geometric(20.0, 0.1, n))
    runs = [decoding, noisy]
    solver = get_solver(name, **options)
    if solver.can_encode:
        runs += [decoding.flip(0), noisy.flip(0)]
    for sig in runs:
        model = CountingEps(MIXTURE)
        x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        sol = integrate(
            x, name, n, model=model, schedule=SCHEDULE, sigmas=sig, solver_options=options, return_solution=True
        )
        assert sol.nfe == model.calls == expected_nfe(solver, sig.tolist()), sig


def test_nfe_rules_as_documented():
    """The derived rule reproduces the counts the docstrings and docs/solvers.md state (n = 7 to σ = 0)."""
    n, sig = 7, make_grid(SCHEDULE, "karras", 7).tolist()
    documented = {
        ("rk4", ()): 4 * (n - 1) + 1,
        ("rk4", (("final_step", "full"),)): 4 * n,
        ("dpm-solver-3", ()): 3 * (n - 1) + 1,
        ("dpm-solver++3m", (("warmup", "singlestep"),)): n + 4,
        ("plms", (("warmup", "singlestep"),)): n + 9,
        ("reversible-heun", ()): n + 1,
        ("ipndm", (("analytic_first_step", True),)): n - 1,
        ("ipndm-v", ()): n,
    }
    for (name, options), nfe in documented.items():
        assert expected_nfe(get_solver(name, **dict(options)), sig) == nfe, name
    assert expected_nfe(get_solver("plms", warmup="singlestep"), sig[::-1]) == n + 6  # RK4 never from σ = 0


# ---------------------------------------------------------------------------------------------
# identities: every first-order member equals Euler (= DDIM)

FIRST_ORDER = [("dpm-solver-1", {}), ("ddim", {}), ("ddim", {"eta": 0.0}), ("plms", {"order": 1})]
FIRST_ORDER += [("unipc", {"order": 1, "corrector": False}), ("dpm-solver++2m", {})]
FIRST_ORDER += [("ipndm", {"max_order": 1}), ("ipndm-v", {"max_order": 1})]


@pytest.mark.parametrize("case", FIRST_ORDER, ids=_id)
def test_first_order_members_equal_euler(case, tiny_net):
    """On a 1-step grid (plus the final step to 0) every multistep method is first order; the
    others are first order throughout. All must equal Euler to rounding, decoding and encoding."""
    name, options = case
    n = 1 if name == "dpm-solver++2m" else 10
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kw: dict[str, Any] = dict(model=tiny_net, schedule=SCHEDULE, grid="uniform")
    for fn in (decode, encode):
        ref = fn(x, "euler", n, **kw)
        out = fn(x, name, n, solver_options=options, **kw)
        assert torch.allclose(out, ref, rtol=1e-12, atol=1e-12), (fn.__name__, (out - ref).abs().max())


def _ddim_vp_reference(model: Any, x_T: Tensor, timesteps: list[int], eta: float, gen: torch.Generator) -> Tensor:
    """DDIM's update (Song et al. 2021, eq. 12) written independently, in VP scale with ᾱ_t."""
    ab = SCHEDULE.alphas_cumprod
    x = x_T
    for i, t in enumerate(timesteps):
        a_t = float(ab[t])
        a_s = float(ab[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
        eps = model(x, torch.full((x.shape[0],), float(t), dtype=torch.float64))
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        s_eta = eta * math.sqrt((1 - a_s) / (1 - a_t)) * math.sqrt(1 - a_t / a_s)
        x = math.sqrt(a_s) * x0 + math.sqrt(1 - a_s - s_eta**2) * eps
        if s_eta > 0:
            x = x + s_eta * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return x


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_eta_matches_an_independent_vp_implementation(eta, tiny_net):
    x_T = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ts = list(range(900, -1, -100))  # the official DDIM "uniform" grid for n = 10
    ref = _ddim_vp_reference(tiny_net, x_T, ts, eta, torch.Generator().manual_seed(7))
    name, opts = ("ddpm", {}) if eta == 1.0 else ("ddim", {"eta": eta})
    out = decode(
        x_T,
        name,
        10,
        model=tiny_net,
        schedule=SCHEDULE,
        solver_options={**opts, "generator": torch.Generator().manual_seed(7)},
    )
    assert torch.allclose(out, ref, rtol=1e-10, atol=1e-10), (out - ref).abs().max()


def test_stochastic_ddim_is_reproducible_with_a_generator():
    x_T = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kw: dict[str, Any] = dict(model=GAUSS, schedule=SCHEDULE)

    def run(seed: int) -> Tensor:
        return decode(
            x_T, "ddim", 10, solver_options={"eta": 0.5, "generator": torch.Generator().manual_seed(seed)}, **kw
        )

    assert torch.equal(run(1), run(1))
    assert not torch.allclose(run(1), run(2))


@pytest.mark.parametrize("name,options", [("ddpm", {}), ("ddim", {"eta": 0.5})])
def test_stochastic_sampling_matches_gaussian_statistics(name, options):
    """η > 0 on Gaussian data N(μ, diag(s²)): starting from the exact marginal at σ_max, the
    empirical mean and variance of 5000 samples match the data within 4 standard errors. The grid
    (log-uniform, n = 2000) keeps the sampler's weak-order-1 variance bias (about 0.5 %, computed
    below from the chain's exact variance recursion) under a third of the variance's standard error."""
    mu, std = torch.tensor([1.0, -0.5]), torch.tensor([0.5, 1.0])
    g = analytic.Gaussian(mu, std)
    num, n = 5000, 2000
    sig0 = float(make_grid(SCHEDULE, "logsnr", n)[0])
    z = torch.randn(num, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    xbar0 = mu + z * torch.sqrt(std**2 + sig0**2)
    out = decode(
        xbar0 / math.sqrt(1 + sig0**2),
        name,
        n,
        model=g,
        schedule=SCHEDULE,
        grid="logsnr",
        solver_options={**options, "generator": torch.Generator().manual_seed(1)},
    )
    se_mean = std / math.sqrt(num)
    se_var = std**2 * math.sqrt(2 / num)
    # design check: the exact variance of the discrete chain (x̄' − μ = A (x̄ − μ) + σ_up z per step)
    eta = get_solver(name, **options).eta
    sig = [float(s) for s in make_grid(SCHEDULE, "logsnr", n)]
    var = std**2 + sig[0] ** 2
    for a, b in zip(sig[:-1], sig[1:]):
        down, up = ancestral_sigmas(a, b, eta)
        slope = 1 + (down - a) * a / (std**2 + a * a)
        var = slope**2 * var + up * up
    assert bool(((var - std**2).abs() < se_var / 3).all()), var
    assert bool(((out.mean(0) - mu).abs() <= 4 * se_mean).all()), out.mean(0)
    assert bool(((out.var(0) - std**2).abs() <= 4 * se_var).all()), out.var(0)


# ---------------------------------------------------------------------------------------------
# exact inversion

UNIT_DATA = analytic.GaussianMixture(torch.tensor([[1.0, 0.0, -1.0], [-1.0, 0.5, 1.0]]), 0.5**2)
# Reversible Heun is exact algebraically, but its stability region is the imaginary axis: on this
# dissipative ODE rounding errors grow at small n (docs/math.md §9; float32 round trips measured in
# docs/solvers.md reach ~4e-7 at n = 5 on the Karras grid). Its float32 bound is therefore looser.
FLOAT32_BOUND = {"reversible-heun": 1e-8}


@pytest.mark.parametrize("dtype,bound", [(torch.float64, 1e-20), (torch.float32, 1e-10)])
@pytest.mark.parametrize("n", [1, 5, 20])
@pytest.mark.parametrize("name", REVERSIBLE)
def test_reversible_round_trip_is_exact(name, n, dtype, bound):
    """decode(encode(x0)) == x0 up to rounding (per-dimension MSE ≤ 1e-20 float64, 1e-10 float32)
    on unit-scale data, through the ε-network path (DDPM linear schedule, DDIM 'uniform' grid),
    with the auxiliary state carried by the latent; and decode(plain tensor) is *not* exact."""
    if dtype == torch.float32:
        bound = FLOAT32_BOUND.get(name, bound)
    model = UNIT_DATA.as_eps_model(SCHEDULE)
    x0 = UNIT_DATA.sample(64, generator=torch.Generator().manual_seed(0), dtype=dtype)
    kw: dict[str, Any] = dict(model=model, schedule=SCHEDULE)
    z = encode(x0, name, n, **kw)
    assert isinstance(z, ReversibleLatent) and isinstance(z, Tensor) and z.dtype == dtype
    back = decode(z, name, n, **kw)
    mse = float(((back.double() - x0.double()) ** 2).mean())
    assert mse <= bound, f"{name} n={n} {dtype}: round-trip MSE {mse:.3e}"
    if n > 1:
        plain = decode(z.clone(), name, n, **kw)  # any op drops the state: no longer exact
        assert type(z.clone()) is Tensor
        assert float(((plain.double() - x0.double()) ** 2).mean()) > 1e3 * bound


@pytest.mark.parametrize("name", REVERSIBLE)
def test_reversible_decode_then_encode_is_exact_and_state_is_explicit(name):
    kw: dict[str, Any] = dict(model=UNIT_DATA, schedule=SCHEDULE, grid="karras")
    x_T = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sol = decode(x_T, name, 8, return_solution=True, **kw)
    again = encode(sol.x, name, 8, **kw)
    assert float(((again - x_T) ** 2).mean()) <= 1e-20
    z = encode(sol.x, name, 8, return_solution=True, **kw)
    plain = z.x.detach().clone()
    back = decode(plain, name, 8, state=z.state, return_solution=True, **kw)  # the explicit route
    assert float(((back.x - sol.x) ** 2).mean()) <= 1e-20
    assert back.nfe == expected_nfe(get_solver(name), sol.sigmas.tolist()) - 1  # the first step is read from the state
    # a latent made on another grid: BELM's neighbour is not the next point, reversible Heun's start differs
    other = dict(kw, grid="uniform") if name == "reversible-heun" else kw
    with pytest.raises(ValueError, match="auxiliary state"):
        decode(z.x, name, 5, **other)


def test_reversible_latent_keeps_autograd_and_drops_state_on_ops():
    x0 = UNIT_DATA.sample(4, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    z = encode(x0, "belm", 5, model=UNIT_DATA, schedule=SCHEDULE)
    assert isinstance(z, ReversibleLatent) and z.requires_grad
    z.sum().backward()
    assert x0.grad is not None and bool(torch.isfinite(x0.grad).all())
    assert type(z * 2) is Tensor and not hasattr(z * 2, "state")


# ---------------------------------------------------------------------------------------------
# errors


def test_unknown_solver_and_bad_options_give_clear_errors():
    x = torch.randn(2, 2, dtype=torch.float64)
    kw: dict[str, Any] = dict(model=GAUSS, schedule=SCHEDULE)
    with pytest.raises(ValueError, match="unknown solver 'rk5'.*available:.*heun"):
        decode(x, "rk5", 5, **kw)
    with pytest.raises(ValueError, match="bad options .* 'heun'"):
        decode(x, "heun", 5, solver_options={"stages": 3}, **kw)
    bad = [
        ("ddim", {"eta": 2.0}, "eta must be"),
        ("ddim", {"generator": 3}, "generator must be"),
        ("dopri5", {"rtol": -1.0}, "rtol must be"),
        ("dopri5", {"variable": "t"}, "unknown variable 't'; allowed: log, sigma"),
        ("dpm-solver++3m", {"warmup": "rk"}, "unknown warmup 'rk'; allowed: lower-order, singlestep"),
        ("unipc", {"order": 5}, "unknown UniPC order 5; allowed: 1, 2, 3"),
        ("plms", {"order": 0}, "unknown PLMS order 0; allowed: 1, 2, 3, 4"),
        ("heun", {"final_step": "skip"}, "unknown final_step 'skip'; allowed: euler, full"),
        ("dpm-solver-2", {"r1": 0.0}, "r1 must be"),
        ("ipndm", {"max_order": 5}, "unknown iPNDM max_order 5; allowed: 1, 2, 3, 4"),
        ("ipndm-v", {"analytic_first_step": "yes"}, "analytic_first_step must be"),
        ("dopri5", {"engine": "scipy"}, "unknown engine 'scipy'; allowed: native, torchdiffeq"),
    ]
    for name, options, message in bad:
        with pytest.raises((ValueError, TypeError), match=message):
            decode(x, name, 5, solver_options=options, **kw)


@pytest.mark.parametrize("name", STOCHASTIC + ["ddim[eta=0.5]"])
def test_encoding_with_a_stochastic_solver_is_refused(name):
    options = {"eta": 0.5} if name == "ddim[eta=0.5]" else {}
    name = name.split("[")[0]
    x0 = torch.randn(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="cannot integrate towards larger sigma.*not an ODE.*not invertible"):
        encode(x0, name, 5, model=GAUSS, schedule=SCHEDULE, solver_options=options)


# ---------------------------------------------------------------------------------------------
# the native adaptive engine


@pytest.mark.parametrize("name", ["dopri5", "bosh3", "adaptive_heun", "dopri8"])
def test_embedded_pairs_have_their_orders(name):
    """One step of y' = y, y(0) = 1 (exact e^h): the local error of b falls like h^(p+1) (at least), that of b̂
    like h^p."""
    tab = EMBEDDED[name]
    p = tab.order

    def step(h: float) -> tuple[float, float]:
        ks: list[float] = []
        for i in range(len(tab.c)):
            ks.append(1.0 + h * sum(a * k for a, k in zip(tab.a[i], ks)))  # f(y) = y
        y = 1.0 + h * sum(b * k for b, k in zip(tab.b, ks))
        return y, y - h * sum(e * k for e, k in zip(tab.e, ks))  # (solution, embedded solution)

    hs = (1.0, 0.5) if p > 5 else (0.2, 0.1)  # keep the 8th-order errors above rounding
    errs = [[abs(v - math.exp(h)) for v in step(h)] for h in hs]
    slope_b = math.log2(errs[0][0] / errs[1][0])
    slope_bhat = math.log2(errs[0][1] / errs[1][1])
    assert slope_b > p + 1 - 0.35, (name, slope_b)  # dopri8's h⁹ term happens to vanish on y' = y
    if name == "dopri8":  # torchdiffeq's estimator for DOP853 (7th order, not yet asymptotic at these h)
        assert 5.5 < slope_bhat < slope_b - 1, (name, slope_bhat)
    else:  # the estimate is one order lower
        assert abs(slope_bhat - p) < 0.35, (name, slope_bhat)


@pytest.mark.parametrize("name", ["bosh3", "adaptive_heun", "dopri5", "dopri8"])
@pytest.mark.parametrize("variable", ["log", "sigma"])
def test_native_engine_agrees_with_torchdiffeq(name, variable, mixture_problem):
    """Same pairs, same controller: the native loop takes torchdiffeq's steps (same NFE, same result)."""
    out = {}
    for engine in ("native", "torchdiffeq"):
        out[engine] = decode(
            mixture_problem["x_T"],
            name,
            10,
            model=MIXTURE,
            schedule=SCHEDULE,
            grid="karras",
            solver_options={"rtol": 1e-5, "atol": 1e-5, "variable": variable, "engine": engine},
            return_solution=True,
        )
    a, b = out["native"], out["torchdiffeq"]
    assert a.nfe == b.nfe
    assert _rms(a.x, b.x) < 1e-9


def test_native_engine_errors_and_limits(mixture_problem):
    x = mixture_problem["x_T"]
    kw: dict[str, Any] = dict(model=MIXTURE, schedule=SCHEDULE, grid="karras")
    with pytest.raises(ValueError, match="unknown engine 'scipy'; allowed: native, torchdiffeq"):
        decode(x, "dopri5", 5, solver_options={"engine": "scipy"}, **kw)
    with pytest.raises(ValueError, match="unknown options .*step_t.*allowed: first_step, max_num_steps"):
        decode(x, "dopri5", 5, solver_options={"options": {"step_t": 1.0}}, **kw)
    with pytest.raises(RuntimeError, match="max_num_steps=3"):
        decode(x, "dopri5", 5, solver_options={"rtol": 1e-8, "atol": 1e-8, "options": {"max_num_steps": 3}}, **kw)

    class Blows:
        """The mixture's ε, turning NaN below σ = 1."""

        def eps_xbar(self, xbar: Tensor, sigma: float) -> Tensor:
            eps = MIXTURE.eps_xbar(xbar, sigma)
            return eps * float("nan") if sigma < 1.0 else eps

    with pytest.raises(FloatingPointError, match="underflow at sigma"):
        decode(x, "dopri5", 5, model=Blows(), schedule=SCHEDULE, grid="karras")


@pytest.mark.parametrize("name", ["dopri5", "bosh3", "adaptive_heun", "dopri8"])
def test_native_adaptive_trajectory_matches_the_exact_solution(name):
    """Interior grid points of an adaptive solve come from the steps' Hermite interpolants: on the Gaussian,
    whose flow is known in closed form, every grid point is within a small multiple of the tolerance."""
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    tol = 1e-6
    sol = decode(
        x,
        name,
        12,
        model=GAUSS,
        schedule=SCHEDULE,
        grid="karras",
        trajectory=True,
        solver_options={"rtol": tol, "atol": tol},
        return_solution=True,
    )
    sig = [float(s) for s in sol.sigmas]
    xbar0 = sol.trajectory[0]
    assert sol.trajectory.shape[0] == len(sig) and torch.equal(sol.trajectory[-1], sol.xbar)
    for j in range(1, len(sig)):
        exact = GAUSS.solution(xbar0, sig[0], sig[j])
        scale = 1.0 + float(exact.abs().max())
        assert float((sol.trajectory[j] - exact).abs().max()) <= 200 * tol * scale, (name, j, sig[j])


def test_embedded_loop_with_a_pair_that_is_not_fsal():
    """The textbook Heun–Euler pair (first stage evaluated at each accepted solution) through the native
    loop: the Gaussian's exact flow within the tolerance's reach, every grid point reported once."""
    pair = ButcherTableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2, e=(-0.5, 0.5), fsal=False)
    field = ProbabilityFlowODE(GAUSS, SCHEDULE)
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    times = [5.0, 2.0, 0.5, 0.05]
    seen: dict[int, Tensor] = {}
    tol = 1e-6
    controller = StepSizeController(tol, tol, pair.order)
    out = integrate_embedded(
        field, x, times, pair, "sigma", controller, first_step=0.5, output=lambda j, y: seen.setdefault(j, y)
    )
    assert sorted(seen) == [1, 2, 3] and seen[3] is out
    for j in (1, 2, 3):
        exact = GAUSS.solution(x, times[0], times[j])
        assert float((seen[j] - exact).abs().max()) <= 200 * tol * (1.0 + float(exact.abs().max())), j


def test_embedded_pairs_equal_torchdiffeqs():
    """The vendored coefficients are torchdiffeq's, bit for bit (dopri8's midpoint weights, which
    torchdiffeq evaluates from decimal polynomials in floating point, to 1e-15). torchdiffeq writes
    Heun–Euler's error weights with the opposite sign; only the norm of the estimate is used."""
    from torchdiffeq._impl import adaptive_heun, bosh3, dopri5, dopri8

    theirs = {
        "dopri5": (dopri5._DORMAND_PRINCE_SHAMPINE_TABLEAU, dopri5.DPS_C_MID),
        "bosh3": (bosh3._BOGACKI_SHAMPINE_TABLEAU, None),
        "adaptive_heun": (adaptive_heun._ADAPTIVE_HEUN_TABLEAU, None),
        "dopri8": (dopri8._DOPRI8_TABLEAU, dopri8._C_mid),
    }
    assert set(theirs) == set(EMBEDDED)
    for name, (tab, mid) in theirs.items():
        ours = EMBEDDED[name]
        assert ours.c == (0.0, *tab.alpha.tolist()), name
        assert ours.a[1:] == tuple(tuple(row.tolist()) for row in tab.beta), name
        sign = -1.0 if name == "adaptive_heun" else 1.0
        assert ours.b == tuple(tab.c_sol.tolist()) and ours.e == tuple((sign * tab.c_error).tolist()), name
        if mid is None:
            assert ours.mid is None, name
        else:
            assert ours.mid is not None and np.allclose(ours.mid, mid.tolist(), rtol=0, atol=1e-15), name


def test_importing_the_package_does_not_load_torchdiffeq():
    import subprocess
    import sys

    code = "import sys, ddim_ode; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchdiffeq'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_step_size_controller():
    """Accept at a ratio ≤ 1; next step h·clip(0.9 r^(−1/p), 1 after an accept / 0.2 after a reject, 10)."""
    c = StepSizeController(rtol=1e-3, atol=1e-6, order=4, max_num_steps=5)
    assert c.adapt(-0.1, 0.5) == (True, pytest.approx(-0.1 * 0.9 * 0.5**-0.25))
    assert c.adapt(0.1, 0.99) == (True, 0.1)  # an accepted step never shrinks the next one
    assert c.adapt(0.1, 1e-12) == (True, pytest.approx(1.0)) and c.adapt(0.1, 0.0) == (True, pytest.approx(1.0))
    assert c.adapt(0.1, 3.0) == (False, pytest.approx(0.1 * 0.9 * 3.0**-0.25))
    assert c.adapt(0.1, 1e8) == (False, pytest.approx(0.02)) and c.adapt(0.1, math.nan) == (False, pytest.approx(0.02))
    assert c.clip(1.0, -0.3, 0.5) == (-0.3, False) and c.clip(1.0, -0.6, 0.5) == (-0.5, True)
    y0, y1 = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0])
    scale = torch.tensor([1e-6 + 3e-3, 1e-6 + 2e-3])
    err = torch.tensor([1e-3, -2e-3])
    assert c.error_ratio(err, y0, y1) == pytest.approx(float((err / scale).square().mean().sqrt()))
    with pytest.raises(RuntimeError, match="max_num_steps=5 reached at sigma=0.3"):
        c.check(5, -1.2, -0.1, -2.0, 0.3)
    with pytest.raises(FloatingPointError, match="underflow at sigma=0.3"):
        c.check(1, -1.2, -1e-15, -2.0, 0.3)
    c.check(4, -1.2, -1e-3, -2.0, 0.3)


# ---------------------------------------------------------------------------------------------
# iPNDM


def test_ipndm_variants_agree_where_they_should(tiny_net):
    """iPNDM-v is PLMS with its default warm-up (the same steps, bit for bit); on a uniform σ grid iPNDM's
    constant weights are the variable ones, so iPNDM equals iPNDM-v to rounding; on a graded grid they differ."""
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kw: dict[str, Any] = dict(model=tiny_net, schedule=SCHEDULE)
    karras: dict[str, Any] = dict(kw, grid="karras")
    assert torch.equal(decode(x, "ipndm-v", 9, **karras), decode(x, "plms", 9, **karras))
    uniform = np.linspace(40.0, 0.0, 10)
    for fn in (decode, encode):
        out, ref = (fn(x, name, 9, sigmas=uniform, **kw) for name in ("ipndm", "ipndm-v"))
        assert torch.allclose(out, ref, rtol=1e-12, atol=1e-12), (fn.__name__, (out - ref).abs().max())
    assert not torch.allclose(decode(x, "ipndm", 9, **karras), decode(x, "ipndm-v", 9, **karras), atol=1e-6)


def test_ipndm_max_order_limits_the_history():
    solver = get_solver("ipndm", max_order=2)
    field = ProbabilityFlowODE(GAUSS, SCHEDULE)
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sig = [4.0, 3.0, 2.0, 1.0]
    state = solver.init(field, x, torch.tensor(sig, dtype=torch.float64))
    history = []
    for a, b in zip(sig[:-1], sig[1:]):
        eps = GAUSS.eps_xbar(x, a)
        x_next, state = solver.step(field, x, a, b, state)
        c = IPNDM_COEFFICIENTS[min(len(history) + 1, 2) - 1]
        expected = x + (b - a) * sum(cj * e for cj, e in zip(c, [eps, *history[::-1]]))
        torch.testing.assert_close(x_next, expected, rtol=1e-14, atol=1e-14)
        history.append(eps)
        x = x_next
    assert [s for s, _ in state.history] == [3.0, 2.0]  # the last two evaluations, oldest first


def _top_grid(sigma_max: float, n: int) -> np.ndarray:
    """EDM's grid (ρ = 7, σ_min = 0.002) from ``sigma_max``, with the final step to σ = 0."""
    ramp = np.linspace(0.0, 1.0, n)
    hi, lo = sigma_max ** (1 / 7), 0.002 ** (1 / 7)
    return np.append((hi + ramp * (lo - hi)) ** 7, 0.0)


@pytest.mark.parametrize("name", ["ipndm", "ipndm-v"])
def test_analytic_first_step_saves_one_nfe(name):
    n = 10
    z = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for grid in ("karras", "uniform"):
        counts = []
        for analytic_first in (False, True):
            model = CountingEps(GAUSS)
            kw: dict[str, Any] = dict(model=model, schedule=SCHEDULE, grid=grid, return_solution=True)
            sol = decode(z, name, n, solver_options={"analytic_first_step": analytic_first}, **kw)
            assert sol.nfe == model.calls
            counts.append(sol.nfe)
        assert counts == [n, n - 1], (grid, counts)
    # encoding never starts from the top of a decoding grid: nothing changes
    x0 = GAUSS.sample(8, generator=torch.Generator().manual_seed(1))
    enc: dict[str, Any] = dict(model=GAUSS, schedule=SCHEDULE, grid="karras")
    plain = encode(x0, name, n, **enc)
    assert torch.equal(plain, encode(x0, name, n, solver_options={"analytic_first_step": True}, **enc))


def test_analytic_first_step_costs_little_with_variable_weights():
    """ε ≈ x̄/√(1 + σ²) at the top of a decoding grid instead of the network, on Gaussian data
    N((0.5, −1), 0.5²) in 10 steps of EDM's grid: from σ_max = 80 ipndm-v's result moves by under a
    tenth of its own error (measured: 3 %), and by about half as much as from σ_max = 40. The first
    step's error h δε ≈ −μ is contracted by the flow like √v/σ_1, and σ_1 grows with σ_max."""
    n = 10
    z = torch.randn(512, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    shift = {}
    for sigma_max in (40.0, 80.0):
        xbar = GAUSS.means[0] + z * math.sqrt(0.25 + sigma_max**2)
        x_T = xbar / math.sqrt(1 + sigma_max**2)
        kw: dict[str, Any] = dict(model=GAUSS, schedule=SCHEDULE, sigmas=_top_grid(sigma_max, n))
        out, plain = (
            integrate(x_T, "ipndm-v", n, solver_options={"analytic_first_step": a}, **kw) for a in (True, False)
        )
        shift[sigma_max] = _rms(out, plain)
        assert 0.0 < shift[sigma_max] < 0.1 * _rms(plain, GAUSS.solution(xbar, sigma_max, 0.0)), (sigma_max, shift)
    assert shift[80.0] < 0.6 * shift[40.0], shift


@pytest.mark.parametrize("name", ["ipndm", "ipndm-v"])
def test_analytic_first_step_is_first_order(name):
    """The limit's error in ε does not vanish as the steps shrink: decoding converges at order 1, as declared."""
    options = {"analytic_first_step": True}
    assert get_solver(name, **options).order == 1
    errs = [_gaussian_error(name, options, n, "decode") for n in (128, 256)]
    assert abs(math.log2(errs[0] / errs[1]) - 1) <= 0.1, errs

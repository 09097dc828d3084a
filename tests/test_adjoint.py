"""Adjoint gradients of integrate/encode/decode: equal to plain autograd, memory flat in n."""

import math

import pytest
import torch
from conftest import TinyEpsNet, deterministic_solvers

import ddim_ode
from ddim_ode import DiscreteSchedule, ProbabilityFlowODE
from ddim_ode.adjoint import DiscreteAdjoint
from ddim_ode.solvers import get_solver

SCHEDULE = DiscreteSchedule.linear()
DETERMINISTIC = deterministic_solvers()


pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny solves


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _grads(fn, x, params, w):
    x = x.clone().requires_grad_(True)
    out = fn(x)
    return out.detach(), torch.autograd.grad((out * w).sum(), [x, *params])


@pytest.mark.parametrize("solver", DETERMINISTIC)
def test_decode_adjoint_equals_plain_autograd(solver):
    net = TinyEpsNet(dim=4)
    params = list(net.parameters())
    x = torch.randn(3, 4, generator=_gen(0), dtype=torch.float64)
    w = torch.randn(3, 4, generator=_gen(1), dtype=torch.float64)
    kw = dict(model=net, schedule=SCHEDULE)
    out_ref, g_ref = _grads(lambda z: ddim_ode.decode(z, solver, 8, **kw), x, params, w)
    for c in (0, 3):
        out, g = _grads(lambda z, c=c: ddim_ode.decode(z, solver, 8, checkpoints=c, **kw, adjoint=True), x, params, w)
        assert torch.equal(out, out_ref)  # same solver code, same result
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("solver", [s for s in DETERMINISTIC if get_solver(s).can_encode])
def test_encode_adjoint_equals_plain_autograd(solver):
    net = TinyEpsNet(dim=3, seed=2)
    params = list(net.parameters())
    x = torch.randn(2, 3, generator=_gen(2), dtype=torch.float64)
    w = torch.randn(2, 3, generator=_gen(3), dtype=torch.float64)
    kw = dict(model=net, schedule=SCHEDULE, grid="logsnr")
    _, g_ref = _grads(lambda z: ddim_ode.encode(z, solver, 6, **kw), x, params, w)
    _, g = _grads(lambda z: ddim_ode.encode(z, solver, 6, checkpoints=1, **kw, adjoint=True), x, params, w)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_reversible_state_is_differentiated():
    # the auxiliary state made by encode goes into decode (carried by the latent, or passed
    # explicitly); gradients flow through both passes and the round trip stays exact
    reversible = [s for s in DETERMINISTIC if get_solver(s).reversible]
    if not reversible:
        pytest.skip("no reversible solver registered")
    net = TinyEpsNet(dim=3, seed=3)
    x = torch.randn(2, 3, generator=_gen(4), dtype=torch.float64)
    w = torch.randn(2, 3, generator=_gen(5), dtype=torch.float64)
    kw = dict(model=net, schedule=SCHEDULE)
    for solver in reversible:

        def plain(z, solver=solver):
            sol = ddim_ode.encode(z, solver, 6, return_solution=True, **kw)
            return ddim_ode.decode(sol.x * 0.9, solver, 6, state=sol.state, **kw)

        def adj(z, solver=solver):
            sol = ddim_ode.encode(z, solver, 6, return_solution=True, **kw, adjoint=True)
            return ddim_ode.decode(sol.x * 0.9, solver, 6, state=sol.state, **kw, adjoint=True)

        _, g_ref = _grads(plain, x, [], w)
        _, g = _grads(adj, x, [], w)
        torch.testing.assert_close(g[0], g_ref[0], rtol=1e-9, atol=1e-12)
        out, g = _grads(
            lambda z, s=solver: ddim_ode.decode(ddim_ode.encode(z, s, 6, **kw, adjoint=True), s, 6, **kw, adjoint=True),
            x,
            [],
            w,
        )
        torch.testing.assert_close(out, x, rtol=0, atol=1e-10)  # exact inversion through the carried state
        torch.testing.assert_close(g[0], w, rtol=1e-8, atol=1e-10)  # d(identity) = I


class GaussianEps(torch.nn.Module):
    """Exact ε of N(μ, s²) data with μ and log s as parameters (a SigmaModel: exact σ)."""

    def __init__(self) -> None:
        super().__init__()
        self.mu = torch.nn.Parameter(torch.tensor([0.5, -0.3], dtype=torch.float64))
        self.log_s = torch.nn.Parameter(torch.tensor([-0.2, 0.1], dtype=torch.float64))

    def eps_xbar(self, xbar: torch.Tensor, sigma: float) -> torch.Tensor:
        v = torch.exp(2 * self.log_s)
        return sigma * (xbar - self.mu) / (v + sigma * sigma)

    def forward(self, x_t, t):  # not used: eps_xbar takes precedence
        raise NotImplementedError


def test_gradients_match_finite_differences_on_the_gaussian():
    model = GaussianEps()
    x = torch.randn(2, 2, generator=_gen(6), dtype=torch.float64)
    w = torch.randn(2, 2, generator=_gen(7), dtype=torch.float64)

    def loss(z):
        return (ddim_ode.decode(z, "heun", 10, model=model, schedule=SCHEDULE, grid="karras", adjoint=True) * w).sum()

    z = x.clone().requires_grad_(True)
    g_x, g_mu, g_s = torch.autograd.grad(loss(z), [z, model.mu, model.log_s])
    h = 1e-6
    with torch.no_grad():
        for i in range(2):
            e = torch.zeros(2, dtype=torch.float64)
            e[i] = h
            for p, g in ((model.mu, g_mu), (model.log_s, g_s)):
                p += e
                up = loss(x)
                p -= 2 * e
                down = loss(x)
                p += e
                assert abs(float((up - down) / (2 * h)) - float(g[i])) < 1e-6 * max(1.0, abs(float(g[i])))
            ex = torch.zeros_like(x)
            ex[0, i] = h
            fd = (loss(x + ex) - loss(x - ex)) / (2 * h)
            assert abs(float(fd) - float(g_x[0, i])) < 1e-6 * max(1.0, abs(float(g_x[0, i])))


def test_continuous_adjoint_matches_the_exact_flow():
    # decode N(μ, s²) data with dopri5: x0 = μ + (x̄_T − μ) √(v/(v + σ_T²)), x̄_T = x_T √(1 + σ_T²)
    oracle = ddim_ode.analytic.Gaussian(torch.tensor([0.4, -0.2]), torch.tensor([0.6, 1.1]))
    x = torch.randn(3, 2, generator=_gen(8), dtype=torch.float64, requires_grad=True)
    sol = ddim_ode.decode(
        x,
        "dopri5",
        10,
        model=oracle,
        schedule=SCHEDULE,
        return_solution=True,
        solver_options=dict(rtol=1e-7, atol=1e-7),
        adjoint=True,
    )
    (g,) = torch.autograd.grad(sol.x.sum(), x)
    sigma_t = float(sol.sigmas[0])
    v = oracle.variances[0]
    exact = math.sqrt(1 + sigma_t**2) * torch.sqrt(v / (v + sigma_t**2))
    torch.testing.assert_close(g, exact.expand_as(g), rtol=1e-5, atol=0)


def _saved_bytes(fn) -> int:
    total = []

    def pack(t):
        total.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(total)


def test_memory_does_not_grow_with_n_and_nfe_is_as_documented():
    net = TinyEpsNet(dim=6, hidden=64)
    x = torch.randn(16, 6, generator=_gen(9), dtype=torch.float64, requires_grad=True)
    kw = dict(model=net, schedule=SCHEDULE)
    plain = [_saved_bytes(lambda n=n: ddim_ode.decode(x, "euler", n, **kw)) for n in (5, 40)]
    adj = [_saved_bytes(lambda n=n: ddim_ode.decode(x, "euler", n, **kw, adjoint=True)) for n in (5, 40)]
    assert plain[1] > 6 * plain[0]
    assert adj[0] == adj[1] and adj[1] < plain[0]
    n = 12
    for checkpoints, extra in ((0, n * (n - 1) // 2), (n - 1, 0), (3, 4 * (3 * 2 // 2))):
        field = ProbabilityFlowODE(net, SCHEDULE)
        xbar = x.detach().clone().requires_grad_(True)
        sig = ddim_ode.make_grid(SCHEDULE, "karras", n)
        sol = ddim_ode.solve(field, xbar, sig, "euler", adjoint=DiscreteAdjoint(checkpoints))
        assert sol.nfe == n
        sol.xbar.sum().backward()
        assert field.nfe == 2 * n + extra  # forward, n differentiated steps, re-computed steps


def test_integrate_adjoint_partial_range_and_errors():
    net = TinyEpsNet(dim=3)
    x = torch.randn(2, 3, generator=_gen(10), dtype=torch.float64)
    kw = dict(model=net, schedule=SCHEDULE, t_start=100, t_end=600)
    w = torch.randn(2, 3, generator=_gen(11), dtype=torch.float64)
    _, g_ref = _grads(lambda z: ddim_ode.integrate(z, "rk4", 5, **kw), x, [], w)
    _, g = _grads(lambda z: ddim_ode.integrate(z, "rk4", 5, **kw, adjoint=True), x, [], w)
    torch.testing.assert_close(g[0], g_ref[0], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="fresh noise"):
        ddim_ode.decode(x, "ddpm", 5, model=net, schedule=SCHEDULE, adjoint=True)
    with pytest.raises(ValueError, match="checkpoints must be"):
        ddim_ode.decode(x, "euler", 5, model=net, schedule=SCHEDULE, checkpoints=-1, adjoint=True)


def test_nondeterministic_model_is_detected():
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5)).double().train()
    x = torch.randn(4, 3, generator=_gen(12), dtype=torch.float64, requires_grad=True)
    out = ddim_ode.decode(
        x, "euler", 3, model=lambda x_t, t: net(x_t), schedule=SCHEDULE, params=list(net.parameters()), adjoint=True
    )
    with pytest.raises(RuntimeError, match="deterministic"):
        out.sum().backward()

"""Shared test helpers: small ε-networks, the solver groups every test file parametrises over, a one-thread fixture."""

import pytest
import torch

from ddim_ode.solvers import SOLVERS, get_solver


def fixed_grid_solvers() -> list[str]:
    """Registered solvers that step along the given grid (not adaptive), default options."""
    return sorted(name for name in SOLVERS if not get_solver(name).adaptive)


def deterministic_solvers() -> list[str]:
    """Registered fixed-grid ODE solvers: neither adaptive nor stochastic (default options).

    These are the solvers whose result is a fixed function of the input and the grid: the ones a
    discrete adjoint, a float32/float64 comparison or a measured convergence order applies to.
    """
    return [name for name in fixed_grid_solvers() if not get_solver(name).stochastic]


class TinyEpsNet(torch.nn.Module):
    """A small, non-trivial ε-network: an MLP on (x_t, time features), randomly initialised."""

    def __init__(self, dim: int, hidden: int = 32, seed: int = 0, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim + 2, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, dim)
        ).to(dtype)
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5)
        self.dim = dim

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        flat = x_t.reshape(x_t.shape[0], -1)
        tt = t.to(flat.dtype)[:, None] / 1000.0
        feats = torch.cat([flat, torch.sin(3 * tt), torch.cos(3 * tt)], dim=1)
        return self.net(feats).reshape(x_t.shape)


class CountingModel(torch.nn.Module):
    """Wraps a model and records every call (its t values)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[torch.Tensor] = []

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append(t.clone())
        return self.inner(x_t, t)


@pytest.fixture
def tiny_net() -> TinyEpsNet:
    return TinyEpsNet(dim=6)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of many tiny solves (faster than several on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

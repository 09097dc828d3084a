"""The integration loop never waits for the device, and the state keeps its dtype.

On an accelerator a host–device synchronisation per step (``.item()``, ``float(t)``, ``bool(t)``,
``.cpu()``, ``nonzero``...) stalls the launch queue. Without a GPU, :class:`DeviceTensor` stands in
for device memory: it is a tensor subclass that records every operation that would copy data to
the host, and it propagates through every operation, so whatever the solver derives from the state
is watched too. With CUDA, ``torch.cuda.set_sync_debug_mode("error")`` checks the real thing.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, ClassVar

import pytest
import torch
from conftest import deterministic_solvers, fixed_grid_solvers
from torch import Tensor

from ddim_ode import DiscreteSchedule, ProbabilityFlowODE, decode, make_grid, solve
from ddim_ode.analytic import Gaussian
from ddim_ode.solvers import SOLVERS, Solver, get_solver

SCHEDULE = DiscreteSchedule.linear()
FIXED_GRID = fixed_grid_solvers()
DETERMINISTIC = deterministic_solvers()

# operations that copy device data to the host (i.e. wait for the device)
_HOST = {
    Tensor.item,
    Tensor.tolist,
    Tensor.numpy,
    Tensor.cpu,
    Tensor.__bool__,
    Tensor.__float__,
    Tensor.__int__,
    Tensor.__index__,
    Tensor.__format__,
    Tensor.__repr__,
    Tensor.nonzero,
    torch.nonzero,
    Tensor.unique,
    torch.unique,
    torch.masked_select,
    Tensor.masked_select,
}


class DeviceTensor(Tensor):
    """A tensor that logs every read of its data by the host."""

    log: ClassVar[list[str]] = []

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in _HOST or (func is Tensor.to and _to_host(args, kwargs or {})):
            cls.log.append(getattr(func, "__name__", str(func)))
        if func is Tensor.__getitem__ and any(isinstance(a, Tensor) and a.dtype == torch.bool for a in _flat(args)):
            cls.log.append("boolean mask indexing")
        return super().__torch_function__(func, types, args, kwargs or {})


def _flat(args: Any) -> list[Any]:
    out = []
    for a in args:
        out.extend(_flat(a) if isinstance(a, (tuple, list)) else [a])
    return out


def _to_host(args: Any, kwargs: dict[str, Any]) -> bool:
    dev = kwargs.get("device")
    for a in args[1:]:
        if isinstance(a, (str, torch.device)):
            dev = a
    return dev is not None and torch.device(dev).type == "cpu"


class TinyNet(torch.nn.Module):
    """A cheap ε-model that uses both x_t and t."""

    def __init__(self, dim: int = 6, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter((torch.randn(dim + 2, 16, generator=g) * 0.4).to(dtype))
        self.w2 = torch.nn.Parameter((torch.randn(16, dim, generator=g) * 0.4).to(dtype))
        self.requires_grad_(False)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        tt = t.to(x_t.dtype)[:, None] / 1000.0
        return torch.tanh(torch.cat([x_t, torch.sin(tt), torch.cos(tt)], 1) @ self.w1) @ self.w2


def _host_reads(fn: Any) -> list[str]:
    DeviceTensor.log = []
    fn()
    return list(DeviceTensor.log)


@pytest.mark.parametrize("name", FIXED_GRID)
def test_solver_loop_never_reads_the_device(name):
    field = ProbabilityFlowODE(TinyNet(), SCHEDULE)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1)).as_subclass(DeviceTensor)
    for n in (3, 12):
        sig = make_grid(SCHEDULE, "uniform", n)
        xbar = x * math.sqrt(1 + float(sig[0]) ** 2)
        slv = get_solver(name)
        assert _host_reads(partial(slv.solve, field, xbar, sig)) == [], f"{name} reads the device inside its loop"
        if slv.can_encode:  # the encoding direction runs the same loop on the reversed grid
            assert _host_reads(partial(slv.solve, field, x, sig.flip(0))) == []


@pytest.mark.parametrize("name", ["ipndm", "ipndm-v"])
def test_analytic_first_step_never_reads_the_device(name):
    field = ProbabilityFlowODE(TinyNet(), SCHEDULE)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1)).as_subclass(DeviceTensor)
    sig = make_grid(SCHEDULE, "karras", 6)
    slv = get_solver(name, analytic_first_step=True)
    nfe = field.nfe
    assert _host_reads(partial(slv.solve, field, x * float(sig[0]), sig)) == []
    assert field.nfe - nfe == 5  # the first ε came from the σ → ∞ limit


@pytest.mark.parametrize("name", FIXED_GRID)
def test_driver_syncs_a_fixed_number_of_times(name):
    """``decode`` reads the device a few times (input check, the finite check at the end), never per step."""
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1)).as_subclass(DeviceTensor)
    counts = {}
    for n in (3, 12):
        for check in (True, False):
            run = partial(decode, x, name, n, model=TinyNet(), schedule=SCHEDULE, check_finite=check)
            counts[n, check] = len(_host_reads(run))
    assert 1 <= counts[3, True] == counts[12, True] <= 3
    assert counts[3, False] == counts[12, False] <= 1
    # the low-level entry with a validated grid: only the end-of-run finite check
    field = ProbabilityFlowODE(TinyNet(), SCHEDULE)
    sig = make_grid(SCHEDULE, "uniform", 12)
    assert len(_host_reads(lambda: solve(field, x * 158.0, sig, name, check_finite=False))) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", FIXED_GRID)
def test_no_cuda_sync_in_the_loop(name):
    dev = torch.device("cuda")
    field = ProbabilityFlowODE(TinyNet().to(dev), SCHEDULE)
    sig = make_grid(SCHEDULE, "uniform", 10)
    xbar = torch.randn(8, 6, device=dev) * float(sig[0])
    slv = get_solver(name)
    slv.solve(field, xbar, sig)  # warm-up: lazy initialisation may synchronise once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        slv.solve(field, xbar, sig)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_float32_state_agrees_with_float64_to_rounding(name):
    """The same solve in float32 and float64 differs by float32 rounding accumulated over the steps."""
    gauss = Gaussian(torch.tensor([0.5, -0.3, 0.2, 0.0]), torch.tensor([0.3, 0.5, 0.2, 0.4]))
    z = torch.randn(16, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    n = 10
    x64 = decode(z, name, n, model=gauss, schedule=SCHEDULE)
    x32 = decode(z.float(), name, n, model=gauss, schedule=SCHEDULE)
    assert x32.dtype == torch.float32 and x64.dtype == torch.float64
    sigma_max = float(make_grid(SCHEDULE, "uniform", n)[0])
    # rounding of x̄ ~ σ_max·z is eps32·σ_max·|z| per operation; a handful of operations per step
    bound = 4 * n * torch.finfo(torch.float32).eps * sigma_max * float(z.abs().max())
    err = float((x32.double() - x64).abs().max())
    assert err <= bound, f"{name}: |x32 - x64| = {err:.3g} > {bound:.3g}"
    assert err > 0.0  # it really ran in float32


@pytest.mark.parametrize("model_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["euler", "heun", "dpm-solver++2m"])
def test_low_precision_model_drives_a_float32_state(name, model_dtype):
    assert name in SOLVERS, f"{name} is no longer registered"
    z = torch.randn(8, 6, generator=torch.Generator().manual_seed(3))
    ref = decode(z, name, 8, model=TinyNet(), schedule=SCHEDULE, return_solution=True, trajectory=True)
    low = decode(
        z,
        name,
        8,
        model=TinyNet(dtype=model_dtype),
        schedule=SCHEDULE,
        return_solution=True,
        trajectory=True,
    )
    assert low.x.dtype == torch.float32 and low.trajectory is not None and low.trajectory.dtype == torch.float32
    # the state is not rounded to the model's precision: it keeps float32 digits...
    assert not torch.equal(low.xbar, low.xbar.to(model_dtype).float())
    # ...and the result differs from the float32 model's by the model's rounding, not more
    rel = float((low.x - ref.x).abs().max() / ref.x.abs().max())
    assert 0.0 < rel < 50 * torch.finfo(model_dtype).eps, rel


class _SyncingEuler(Solver):
    """Euler that reads the state's norm on the host every step: what the tests above must catch."""

    name = "syncing-euler-for-tests"

    def step(self, field: Any, xbar: Tensor, sigma: float, sigma_next: float, state: Any) -> tuple[Tensor, Any]:
        if float(xbar.norm()) > 1e30:
            raise FloatingPointError
        return xbar + (sigma_next - sigma) * field(xbar, sigma), state


def test_the_instrument_catches_a_sync_per_step():
    field = ProbabilityFlowODE(TinyNet(), SCHEDULE)
    x = torch.randn(4, 6).as_subclass(DeviceTensor)
    for n in (3, 12):
        sig = make_grid(SCHEDULE, "uniform", n)
        reads = _host_reads(partial(_SyncingEuler().solve, field, x * 158.0, sig))
        assert reads == ["__float__"] * (len(sig) - 1)
    assert _host_reads(lambda: x[x > 0]) == ["boolean mask indexing"]
    assert _host_reads(lambda: x.to("cpu")) == ["to"]
    assert _host_reads(lambda: x.sum().item()) == ["item"]


class _CountingSchedule(DiscreteSchedule):
    """The DDPM linear schedule, counting its calls of t(σ)."""

    def __init__(self) -> None:
        super().__init__(betas=SCHEDULE.betas)
        self.t_calls = 0

    def t(self, sigma):  # type: ignore[no-untyped-def]
        self.t_calls += 1
        return super().t(sigma)


@pytest.mark.parametrize("name", DETERMINISTIC)
@pytest.mark.parametrize("grid", ["uniform", "karras"])
def test_t_of_sigma_is_tabulated_once_per_solve(name, grid):
    """Grid points and every solver's stage points get t(σ) from one vectorised schedule call."""
    schedule = _CountingSchedule()
    field = ProbabilityFlowODE(TinyNet(), schedule)
    sig = make_grid(schedule, grid, 8)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    schedule.t_calls = 0
    sol = solve(field, x * math.sqrt(1 + float(sig[0]) ** 2), sig, name)
    assert sol.nfe >= 8 and schedule.t_calls == 1, f"{name}: {schedule.t_calls} schedule calls for one solve"


def test_lincomb_allocates_once_and_leaves_its_inputs_alone():
    from ddim_ode.solvers.base import lincomb

    a, b, c = (torch.randn(3, 5, dtype=torch.float64, requires_grad=True) for _ in range(3))
    a0, b0, c0 = a.detach().clone(), b.detach().clone(), c.detach().clone()
    out = lincomb([(1.0, a), (2.0, b), (0.0, c), (-0.5, c)])
    torch.testing.assert_close(out, a0 + 2.0 * b0 - 0.5 * c0, rtol=0, atol=1e-15)
    assert torch.equal(a.detach(), a0) and torch.equal(b.detach(), b0) and torch.equal(c.detach(), c0)
    out.sum().backward()  # in-place updates on the fresh result keep autograd exact
    assert float(a.grad.sum()) == 15.0 and float(b.grad.sum()) == 30.0 and float(c.grad.sum()) == -7.5
    assert lincomb([(1.0, a)]) is a and lincomb([(1.0, a), (0.0, b)]) is a
    torch.testing.assert_close(lincomb([(3.0, a), (1.0, b)]), 3.0 * a0 + b0, rtol=0, atol=1e-15)

"""Conditioning, classifier-free guidance and sub-batches of the field."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

import ddim_ode
from ddim_ode import solve
from ddim_ode.analytic import Gaussian
from ddim_ode.field import ProbabilityFlowODE
from ddim_ode.grids import make_grid
from ddim_ode.schedules import DiscreteSchedule

VP = DiscreteSchedule.linear()
CLASSES = 3


class CondNet(torch.nn.Module):
    """A class-conditional ε-network ``eps(x_t, t, y, gain=1, bias=None, emb=None)``, float64.

    Every operation is elementwise or a per-row lookup, so a sample's output does not depend on
    the batch it is evaluated in (what lets micro-batching be checked bit for bit). ``y = 3`` is
    the null class.
    """

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(CLASSES + 1, dim, generator=g, dtype=torch.float64))
        self.w = torch.nn.Parameter(torch.randn(dim, generator=g, dtype=torch.float64))
        self.requires_grad_(False)
        self.calls = 0

    def forward(self, x: Tensor, t: Tensor, y: Tensor, gain: float = 1.0, bias: Tensor | None = None, emb=None):
        self.calls += 1
        tt = t.to(x.dtype)[:, None] / 1000.0
        h = torch.tanh(x * self.w + self.table[y] + torch.sin(3 * tt))
        if bias is not None:
            h = h + bias
        if emb is not None:
            h = h * (1 + emb)
        return gain * h


class NullCondNet(CondNet):
    """CondNet that knows its unconditional call: the null class for every sample."""

    def null_kwargs(self, model_kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**model_kwargs, "y": torch.full_like(model_kwargs["y"], CLASSES)}


def _labels(n: int) -> Tensor:
    return torch.arange(n) % CLASSES


def _hand_cfg_ddim(net: CondNet, x: Tensor, ts: list[int], w: float, cond: dict, uncond: dict) -> Tensor:
    """Deterministic DDIM (Song et al. 2021, eq. 12, η = 0) with classifier-free guidance (Ho &
    Salimans 2022), in the model's scale, along the integer timesteps ``ts`` (−1 is ᾱ = 1)."""
    ab = VP.alphas_cumprod

    def abar(t: int) -> float:
        return 1.0 if t < 0 else float(ab[t])

    for t, t_next in zip(ts[:-1], ts[1:]):
        tv = torch.full((x.shape[0],), float(max(t, 0)), dtype=torch.float64)
        e_c, e_u = net(x, tv, **cond), net(x, tv, **uncond)
        e = e_u + w * (e_c - e_u)
        x0 = (x - math.sqrt(1 - abar(t)) * e) / math.sqrt(abar(t))
        x = math.sqrt(abar(t_next)) * x0 + math.sqrt(1 - abar(t_next)) * e
    return x


@pytest.mark.parametrize("mode", ["one-call", "two-calls", "null-condition"])
@pytest.mark.parametrize("direction", ["decode", "encode"])
def test_guided_ddim_equals_a_hand_written_cfg_loop(mode, direction):
    """Euler on the guided field is DDIM with guidance, both ways; NFE counts one per evaluation,
    network_calls one (concatenated batch) or two (keyword arguments that do not concatenate)."""
    w, n = 4.0, 10
    y = _labels(6)
    null = torch.full_like(y, CLASSES)
    net = NullCondNet() if mode == "null-condition" else CondNet()
    cond: dict[str, Any] = {"y": y}
    uncond: dict[str, Any] = {"y": null}
    if mode == "two-calls":
        cond["gain"], uncond["gain"] = 1.0, 0.5  # shared values that differ: two calls
    kw = {"uncond_kwargs": uncond} if mode != "null-condition" else {}
    field = ProbabilityFlowODE(net, VP, model_kwargs=cond, guidance_scale=w, **kw)
    sig = make_grid(VP, "uniform", n)  # timesteps 900, 800, ..., 0, then ᾱ = 1
    ts = list(range(900, -1, -100)) + [-1]
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    if direction == "encode":
        sig, ts = sig.flip(0), ts[::-1]
    want = _hand_cfg_ddim(CondNet(), x, ts, w, cond, uncond)
    net.calls = 0
    sol = solve(field, x * math.sqrt(1 + float(sig[0]) ** 2), sig, "euler")
    got = sol.xbar / math.sqrt(1 + float(sig[-1]) ** 2)
    assert float((got - want).abs().max()) < 1e-12, float((got - want).abs().max())
    calls = 2 * n if mode == "two-calls" else n
    assert sol.nfe == field.nfe == n and field.network_calls == net.calls == calls


def test_guidance_weight_interpolates_in_output_space():
    net = CondNet()
    y = _labels(5)
    x = torch.randn(5, 4, dtype=torch.float64)
    cond = ProbabilityFlowODE(net, VP, model_kwargs={"y": y})(x, 3.0)
    uncond = ProbabilityFlowODE(net, VP, model_kwargs={"y": torch.full_like(y, CLASSES)})(x, 3.0)
    for w in (0.0, 1.0, 7.5):
        field = ProbabilityFlowODE(
            net, VP, "eps", model_kwargs={"y": y}, guidance_scale=w, uncond_kwargs={"y": 0 * y + 3}
        )
        assert torch.allclose(field(x, 3.0), uncond + w * (cond - uncond), rtol=0, atol=1e-14)


def test_micro_batching_with_select_changes_no_bit():
    """Per-sample (y, emb) and shared (gain, a bias whose first dimension is 4) keyword arguments,
    guided: integrating parts of the batch through select() gives the bits of the whole batch,
    and the selected fields' evaluations add up in the parent's counters."""
    b = 8
    g = torch.Generator().manual_seed(2)
    y = _labels(b)
    cond = {"y": y, "emb": 0.1 * torch.randn(b, 4, generator=g, dtype=torch.float64), "gain": 0.9}
    bias = torch.linspace(-0.2, 0.2, 4, dtype=torch.float64)
    cond["bias"] = bias
    uncond = {
        "y": torch.full_like(y, CLASSES),
        "emb": torch.zeros(b, 4, dtype=torch.float64),
        "gain": 0.9,
        "bias": bias,
    }
    net = CondNet()
    sig = make_grid(VP, "uniform", 8)
    xbar = torch.randn(b, 4, generator=g, dtype=torch.float64) * math.sqrt(1 + float(sig[0]) ** 2)
    whole = solve(
        ProbabilityFlowODE(net, VP, model_kwargs=cond, guidance_scale=3.0, uncond_kwargs=uncond), xbar, sig, "heun"
    )

    field = ProbabilityFlowODE(net, VP, model_kwargs=cond, guidance_scale=3.0, uncond_kwargs=uncond, batch_size=b)
    net.calls = 0
    parts = [solve(field.select(slice(i, i + 4)), xbar[i : i + 4], sig, "heun") for i in (0, 4)]
    assert torch.equal(torch.cat([p.xbar for p in parts]), whole.xbar)
    index = torch.tensor([5, 0, 7])
    picked = solve(field.select(index), xbar[index], sig, "heun")
    assert torch.equal(picked.xbar, whole.xbar[index])
    assert field.nfe == sum(p.nfe for p in parts) + picked.nfe == 3 * whole.nfe
    assert field.network_calls == net.calls == field.nfe  # one concatenated call per evaluation


def test_select_on_a_field_without_per_sample_arguments_needs_no_batch_size():
    gauss = Gaussian(torch.zeros(3), 0.5)
    model = gauss.as_eps_model(VP)
    field = ProbabilityFlowODE(model, VP)
    x = torch.randn(4, 3, dtype=torch.float64)
    sub = field.select(slice(1, 3))
    assert torch.equal(sub(x[1:3], 2.0), field(x, 2.0)[1:3])
    assert field.nfe == 2


# --------------------------------------------------------------------------------------------- errors


def test_unknown_prediction_and_schedule():
    with pytest.raises(ValueError, match="unknown prediction type 'score'; allowed: eps, x0, v, flow"):
        ProbabilityFlowODE(CondNet(), VP, "score")
    with pytest.raises(TypeError, match="schedule must be a ddim_ode Schedule, got str"):
        ProbabilityFlowODE(CondNet(), "linear")  # type: ignore[arg-type]


def test_guidance_needs_an_unconditional_call():
    y = _labels(2)
    with pytest.raises(ValueError, match=r"guidance_scale needs the unconditional call: pass uncond_kwargs=\.\.\."):
        ProbabilityFlowODE(CondNet(), VP, model_kwargs={"y": y}, guidance_scale=2.0)
    with pytest.raises(ValueError, match="uncond_kwargs given without guidance_scale"):
        ProbabilityFlowODE(CondNet(), VP, model_kwargs={"y": y}, uncond_kwargs={"y": y})
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        ProbabilityFlowODE(CondNet(), VP, model_kwargs={"y": y}, guidance_scale=math.nan, uncond_kwargs={"y": y})
    with pytest.raises(ValueError, match="an exact SigmaModel takes none"):
        ProbabilityFlowODE(Gaussian(torch.zeros(2), 1.0), VP, model_kwargs={"y": y})


def test_per_sample_arguments_must_match_the_batch():
    y = _labels(8)
    x = torch.randn(4, 4, dtype=torch.float64)
    declared = ProbabilityFlowODE(CondNet(), VP, model_kwargs={"y": y}, batch_size=8)
    msg = r"model_kwargs\['y'\] holds 8 samples \(its first dimension\) but the field is evaluated on a batch of 4"
    with pytest.raises(ValueError, match=msg):
        declared(x, 1.0)
    bound = ProbabilityFlowODE(CondNet(), VP, model_kwargs={"y": y})
    bound(torch.randn(8, 4, dtype=torch.float64), 1.0)  # the first evaluation fixes the batch
    with pytest.raises(ValueError, match=msg):
        bound(x, 1.0)
    with pytest.raises(ValueError, match=r"select\(\) needs the batch size"):
        ProbabilityFlowODE(CondNet(), VP, model_kwargs={"y": y}).select(slice(0, 2))
    with pytest.raises(TypeError, match="select takes a slice or a 1-D integer tensor"):
        declared.select(torch.tensor([0.5]))
    with pytest.raises(IndexError, match="out of range for a batch of 8"):
        declared.select(torch.tensor([8]))


def test_every_output_shape_is_checked():
    """A model whose output changes shape after the first call is caught, not broadcast."""
    calls = []

    def model(x: Tensor, t: Tensor) -> Tensor:
        calls.append(1)
        return x if len(calls) < 3 else x[:, :1]  # (B, 1) would broadcast silently

    field = ProbabilityFlowODE(model, VP)
    x = torch.randn(2, 3, dtype=torch.float64)
    field(x, 1.0)
    field(x, 2.0)
    with pytest.raises(ValueError, match=r"returned shape \(2, 1\) for input shape \(2, 3\)"):
        field(x, 3.0)


@pytest.mark.parametrize("solver", ["euler", "heun", "dpm-solver++2m"])
def test_public_entries_carry_conditioning_and_batch_size_changes_no_bit(solver):
    """decode/encode with per-sample labels and guidance: batch_size chunks give the bits of the
    whole batch (labels sliced with the samples), and the guided DDIM decode is the hand loop."""
    b, w = 6, 2.5
    y = _labels(b)
    kw = dict(model=CondNet(), schedule=VP, model_kwargs={"y": y}, guidance_scale=w, uncond_kwargs={"y": 0 * y + 3})
    x = torch.randn(b, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    whole = ddim_ode.decode(x, solver, 10, return_solution=True, **kw)
    for size in (1, 4):
        part = ddim_ode.decode(x, solver, 10, batch_size=size, return_solution=True, **kw)
        assert torch.equal(part.x, whole.x) and part.nfe == whole.nfe * math.ceil(b / size)
    if solver == "euler":
        want = _hand_cfg_ddim(CondNet(), x, list(range(900, -1, -100)) + [-1], w, {"y": y}, {"y": 0 * y + 3})
        assert float((whole.x - want).abs().max()) < 1e-12
    back = ddim_ode.encode(whole.x, solver, 10, batch_size=4, **kw)
    assert torch.equal(back, ddim_ode.encode(whole.x, solver, 10, **kw))


def test_public_entries_refuse_mismatched_conditioning():
    x = torch.randn(4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"model_kwargs\['y'\], whose first dimension is 5 for a batch of 4"):
        ddim_ode.decode(x, "euler", 4, model=CondNet(), schedule=VP, model_kwargs={"y": _labels(5)})
    with pytest.raises(ValueError, match="uncond_kwargs"):
        ddim_ode.decode(x, "euler", 4, model=CondNet(), schedule=VP, model_kwargs={"y": _labels(4)}, guidance_scale=2)

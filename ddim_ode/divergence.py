"""Divergences of a network output with respect to its input, by vector–Jacobian products.

:func:`exact_divergence` takes the trace of the Jacobian (d products per sample batch);
:func:`hutchinson_divergence` is the Skilling–Hutchinson estimator vᵀ(∂ε/∂x)v with given probe
vectors (Hutchinson 1989; Grathwohl et al. 2019, "FFJORD"). Both differentiate through autograd
and keep the graph of ``eps`` for further products.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["exact_divergence", "hutchinson_divergence"]


def _vjps(eps: Tensor, x: Tensor, vs: Tensor) -> Tensor:
    """vᵀ (∂ε/∂x) for each v in ``vs`` (shape ``(m, *x.shape)``); batched where autograd allows."""
    try:
        (g,) = torch.autograd.grad(eps, x, grad_outputs=vs, retain_graph=True, is_grads_batched=True)
        return g
    except RuntimeError:  # an op without a batching rule: one product at a time
        rows = [torch.autograd.grad(eps, x, grad_outputs=v, retain_graph=True)[0] for v in vs]
        return torch.stack(rows)


def exact_divergence(eps: Tensor, x: Tensor, chunk: int) -> Tensor:
    """tr(∂ε_b/∂x_b) for every sample b, shape ``(batch, 1)``: d vector–Jacobian products."""
    b = x.shape[0]
    d = x[0].numel()
    out = torch.zeros(b, dtype=x.dtype, device=x.device)
    for start in range(0, d, chunk):
        idx = torch.arange(start, min(start + chunk, d), device=x.device)
        vs = torch.zeros(idx.numel(), b, d, dtype=x.dtype, device=x.device)
        vs[torch.arange(idx.numel(), device=x.device), :, idx] = 1.0
        g = _vjps(eps, x, vs.reshape(idx.numel(), *x.shape)).reshape(idx.numel(), b, d)
        out = out + g[torch.arange(idx.numel(), device=x.device), :, idx].sum(0)
    return out[:, None]


def hutchinson_divergence(eps: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """vᵀ (∂ε/∂x) v per sample and probe, shape ``(batch, probes)``."""
    g = _vjps(eps, x, probes)  # (P, B, ...)
    return (g * probes).reshape(probes.shape[0], x.shape[0], -1).sum(-1).T

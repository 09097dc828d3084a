"""EDM preconditioning: a raw network F as the denoiser D(x, σ) of Karras et al. 2022 (Table 1).

    D(x, σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x, c_noise(σ)),
    c_skip = σ_d²/(σ² + σ_d²),  c_out = σ σ_d/√(σ² + σ_d²),  c_in = 1/√(σ² + σ_d²),  c_noise = ¼ ln σ,

with σ_d the standard deviation of the data. The network's input and training target then have
unit variance at every noise level. On the variance-exploding path x = x0 + σ ε
(:class:`~ddim_ode.schedules.VESchedule`, which calls the model with t = σ) the wrapped network is
a model with ``prediction="x0"``:

    field = ProbabilityFlowODE(EDMPrecond(net), VESchedule(), prediction="x0")
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["EDMPrecond"]


class EDMPrecond(torch.nn.Module):
    """The EDM denoiser ``D(x, sigma, **kwargs)`` of a raw network ``net(x_in, c_noise, **kwargs)``.

    Args:
        net: the raw network F, called with the scaled input c_in·x and c_noise = ¼ ln σ (a 1-D
            tensor of length batch), plus any keyword arguments (conditioning).
        sigma_data: σ_d, the standard deviation of the training data (0.5 for images in [−1, 1]).

    ``sigma`` is a float or a 1-D tensor of length batch with σ > 0 (c_noise is −∞ at σ = 0; a
    :class:`~ddim_ode.schedules.VESchedule` never calls the model below its ``sigma_min``). The
    coefficients are computed in float64 and applied in the input's dtype; the output has the
    input's dtype.
    """

    def __init__(self, net: Callable[..., Tensor], sigma_data: float = 0.5) -> None:
        super().__init__()
        sd = float(sigma_data)
        if not (math.isfinite(sd) and sd > 0):
            raise ValueError(f"sigma_data must be a finite number > 0, got {sigma_data!r}")
        self.net = net
        self.sigma_data = sd

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in, c_noise) at σ (float64, shaped like ``sigma``), Karras et al. 2022, Table 1."""
        s = sigma.to(torch.float64)
        sd2 = self.sigma_data**2
        total = s * s + sd2
        return sd2 / total, s * self.sigma_data * torch.rsqrt(total), torch.rsqrt(total), 0.25 * torch.log(s)

    def forward(self, x: Tensor, sigma: Tensor | float, **kwargs: Any) -> Tensor:
        sig = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
        if sig.numel() == 1 and x.shape[0] != 1:
            sig = sig.expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = self.coefficients(sig)
        shape = (-1,) + (1,) * (x.ndim - 1)
        noise_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        f = self.net(x * c_in.reshape(shape).to(x.dtype), c_noise.to(noise_dtype), **kwargs)
        return x * c_skip.reshape(shape).to(x.dtype) + f.to(x.dtype) * c_out.reshape(shape).to(x.dtype)

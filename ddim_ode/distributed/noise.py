"""Per-index noise: the numbers a sample starts from depend only on the seed and its index."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["index_noise", "solver_noise_seed", "NOISE_RULE", "SOLVER_NOISE_RULE"]

_NOISE_STRIDE = 1_000_003

#: how :func:`index_noise` draws, as recorded in the manifest of a sampling run
NOISE_RULE = "torch.randn float32 (CPU), generator seed (seed*1000003 + i) mod 2**32"
#: how :func:`solver_noise_seed` seeds a stochastic solver, as recorded in the manifest
SOLVER_NOISE_RULE = "torch.Generator(device) per shard, seeded by SeedSequence([seed, start, 0x5EED])"


def index_noise(
    seed: int,
    start: int,
    stop: int,
    shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> Tensor:
    """The initial noise of samples ``start .. stop−1``: row ``i`` depends only on ``(seed, i)``.

    Row ``i`` is ``torch.randn(shape)`` from a CPU generator seeded with
    ``(seed · 1000003 + i) mod 2³²`` (the CPU generator keeps 32 bits of its seed), in float32,
    then cast to ``dtype`` and moved to ``device``; these are the numbers ``ddim-ode sample`` uses.
    Consequence of the 32-bit seed: runs with seeds ``s`` and ``s + 1`` share noise once they
    pass 1000003 indices (index ``i + 1000003`` of seed ``s`` is index ``i`` of seed ``s + 1``).
    """
    if not 0 <= start <= stop:
        raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
    if start == stop:
        return torch.empty((0, *shape), dtype=dtype, device=device)
    rows = [
        torch.randn(tuple(shape), generator=torch.Generator().manual_seed((seed * _NOISE_STRIDE + i) % 2**32))
        for i in range(start, stop)
    ]
    return torch.stack(rows).to(device=device, dtype=dtype)


def solver_noise_seed(seed: int, start: int) -> int:
    """Seed of the generator a stochastic solver uses for the shard starting at ``start``.

    Derived through ``numpy.random.SeedSequence`` so that it shares no stream with :func:`index_noise`.
    """
    return int(np.random.SeedSequence([seed % 2**63, start, 0x5EED]).generate_state(1, np.uint32)[0])

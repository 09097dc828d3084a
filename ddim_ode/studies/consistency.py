"""Consistency and interpolation (the DDIM paper's Figures 5–6, Section 5.3).

* Consistency: the same x_T decoded with different step counts n gives nearly the same image,
  because each n discretises the same ODE.
* Interpolation: spherical interpolation (slerp) between two latents, each point decoded, gives
  a smooth path between two samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._files import save_png
from ..driver import decode
from ..images import image_grid, slerp, to_unit
from .common import check_dtype, environment, event_shape, finish, resolve_model

__all__ = ["consistency_study"]


def consistency_study(
    model: Any = None,
    schedule: Any = None,
    *,
    solver: str = "euler",
    grid: str = "uniform",
    steps: tuple[int, ...] = (10, 20, 50, 100, 1000),
    rows: int = 4,
    frames: int = 9,
    interp_steps: int = 50,
    shape: tuple[int, ...] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    prediction: str = "eps",
    out_dir: str | Path = "results/consistency",
    quick: bool = False,
) -> dict[str, Any]:
    """Write ``consistency.png`` (rows: latents; columns: n ∈ ``steps``) and ``interpolation.png``
    (rows: latent pairs; columns: slerp weights), plus ``consistency.json`` with the RMS distance of
    each column to the last (largest n). ``quick``: 2 rows, n ∈ {5, 10, 20}, 5 frames, 10 steps."""
    dev = torch.device(device)
    dt = check_dtype(dtype)
    if quick:
        rows, steps, frames, interp_steps = 2, (5, 10, 20), 5, 10
    model_, schedule_, prediction_, meta = resolve_model(model, schedule, dev, prediction)
    if shape is None:
        shape = event_shape(meta)
    kw: dict[str, Any] = dict(model=model_, schedule=schedule_, grid=grid, prediction=prediction_)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn((rows, *shape), generator=g).to(dev, dt)
    with torch.no_grad():
        cols = [decode(x_T, solver, n, **kw) for n in steps]
        ends = torch.randn((2 * rows, *shape), generator=g).to(dev, dt)
        alphas = torch.linspace(0, 1, frames)
        strips = [
            decode(
                slerp(ends[2 * r : 2 * r + 1], ends[2 * r + 1 : 2 * r + 2], alphas).to(dev), solver, interp_steps, **kw
            )
            for r in range(rows)
        ]
    final = cols[-1]
    dist = [float((c - final).double().pow(2).mean().sqrt()) for c in cols]
    out = Path(out_dir)
    grid_cons = np.stack([to_unit(c) for c in cols], axis=1).reshape(-1, *to_unit(cols[0]).shape[1:])
    save_png(out / "consistency.png", image_grid(grid_cons, ncol=len(steps)))
    save_png(out / "interpolation.png", image_grid(np.concatenate([to_unit(s) for s in strips]), ncol=frames))
    doc = {
        "study": "consistency",
        "settings": {
            "solver": solver,
            "grid": grid,
            "steps": list(steps),
            "rows": rows,
            "frames": frames,
            "interp_steps": interp_steps,
            "seed": seed,
            "quick": quick,
        },
        "environment": environment(dev, dt),
        "results": [{"steps": n, "rms_to_largest_n": d} for n, d in zip(steps, dist)],
    }
    return finish(doc, out, None)

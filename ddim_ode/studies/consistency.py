"""Consistency and interpolation (the DDIM paper's Figures 5–6, Section 5.3).

* Consistency: the same x_T decoded with different step counts n gives nearly the same image,
  because each n discretises the same ODE.
* Interpolation: spherical interpolation (slerp) between two latents, each point decoded, gives
  a smooth path between two samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._files import save_png
from ..driver import decode
from ..images import image_grid, slerp, to_unit
from ..io import sample_shape
from ..models import resolve_model
from .common import StudyRun, check_dtype, environment, finish

__all__ = ["consistency_study"]


def consistency_study(
    model: Any = None,
    schedule: Any = None,
    *,
    solver: str = "euler",
    grid: str = "uniform",
    steps: Sequence[int] = (10, 20, 50, 100, 1000),
    rows: int = 4,
    frames: int = 9,
    interp_steps: int = 50,
    shape: tuple[int, ...] | None = None,
    dtype: str = "float32",
    prediction: str | None = None,
    run: StudyRun | None = None,
) -> dict[str, Any]:
    """Write ``consistency.png`` (rows: latents; columns: n ∈ ``steps``) and ``interpolation.png``
    (rows: latent pairs; columns: slerp weights), plus ``consistency.json`` with the RMS distance of
    each column to the last (largest n). ``quick``: 2 rows, n ∈ {5, 10, 20}, 5 frames, 10 steps."""
    run = run or StudyRun()
    dev, dt = run.torch_device(), check_dtype(dtype)
    if run.quick:
        rows, steps, frames, interp_steps = 2, (5, 10, 20), 5, 10
    resolved = resolve_model(model, schedule, prediction, dev)
    shape = shape if shape is not None else sample_shape(resolved.metadata)
    kw: dict[str, Any] = dict(
        model=resolved.model, schedule=resolved.schedule, grid=grid, prediction=resolved.prediction
    )
    g = torch.Generator().manual_seed(run.seed_or(0))
    x_T = torch.randn((rows, *shape), generator=g).to(dev, dt)
    ends = torch.randn((2 * rows, *shape), generator=g).to(dev, dt)
    with torch.no_grad():
        cols = [decode(x_T, solver, n, **kw) for n in steps]
        strips = [_interpolate(ends[2 * r], ends[2 * r + 1], frames, solver, interp_steps, kw) for r in range(rows)]
    out = run.folder("consistency")
    grid_cons = np.stack([to_unit(c) for c in cols], axis=1).reshape(-1, *to_unit(cols[0]).shape[1:])
    save_png(out / "consistency.png", image_grid(grid_cons, ncol=len(steps)))
    save_png(out / "interpolation.png", image_grid(np.concatenate([to_unit(s) for s in strips]), ncol=frames))
    dist = [float((c - cols[-1]).double().pow(2).mean().sqrt()) for c in cols]
    doc = {
        "study": "consistency",
        "settings": {
            "solver": solver,
            "grid": grid,
            "steps": list(steps),
            "rows": rows,
            "frames": frames,
            "interp_steps": interp_steps,
            "seed": run.seed_or(0),
            "quick": run.quick,
        },
        "environment": environment(dev, dt),
        "results": [{"steps": n, "rms_to_largest_n": d} for n, d in zip(steps, dist)],
    }
    return finish(doc, out, None)


def _interpolate(a: Tensor, b: Tensor, frames: int, solver: str, n: int, kw: dict[str, Any]) -> Tensor:
    """``frames`` latents on the great circle from ``a`` to ``b``, each decoded with ``n`` steps."""
    lat = slerp(a[None], b[None], torch.linspace(0, 1, frames)).to(a.device)
    return decode(lat, solver, n, **kw)

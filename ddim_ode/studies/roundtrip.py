"""Round-trip reconstruction: encode held-out data with S steps, decode with S steps (DDIM paper, Table 2).

The error is the per-dimension mean squared error with data scaled to [0, 1], as in the paper
(model scale [−1, 1] is mapped by (x + 1)/2, so MSE_[0,1] = MSE_[−1,1] / 4).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._files import save_png
from ..driver import decode, encode
from ..images import image_grid, to_unit
from ..models import ResolvedModel, resolve_model
from ..solvers import SOLVERS, get_solver
from .common import StudyRun, check_dtype, check_solvers, environment, finish, model_name, progress, pyplot, save_figure

__all__ = ["roundtrip_study", "plot_roundtrip", "DEFAULT_STEPS", "DEFAULT_SOLVERS"]

DEFAULT_STEPS = (5, 10, 20, 50, 100, 200, 500, 1000)
DEFAULT_SOLVERS = ("euler", "heun", "dpm-solver++2m", "unipc", "belm", "reversible-heun")
QUICK_SOLVERS = ("euler", "belm")
#: the step count whose reconstructions are shown in ``roundtrip_images.png``
PANEL_STEPS = 10


def roundtrip_study(
    model: Any = None,
    schedule: Any = None,
    *,
    data: Tensor | None = None,
    solvers: Sequence[str] | None = None,
    steps: Sequence[int] = DEFAULT_STEPS,
    num: int = 64,
    grid: str = "uniform",
    max_nfe: int = 1000,
    batch_size: int = 256,
    dtype: str = "float32",
    prediction: str | None = None,
    run: StudyRun | None = None,
) -> dict[str, Any]:
    """Encode→decode reconstruction MSE for every solver and step count S.

    Args:
        model, schedule, prediction: anything :func:`ddim_ode.models.resolve_model` accepts
            (default: the built-in model).
        data: images in model scale [−1, 1] (default: the held-out digits, for the built-in model).
        solvers: solver names (default: those of :data:`DEFAULT_SOLVERS` that are registered).
        steps: the step counts S; a (solver, S) pair whose NFE per direction exceeds ``max_nfe``
            is skipped (recorded as skipped).
        num: number of images (drawn with ``run.seed``). ``quick``: 8 images, S ∈ {5, 10, 20},
            Euler and BELM.

    Writes ``roundtrip.json`` (every number, settings and environment), ``roundtrip.png`` (log-log
    MSE vs S) and ``roundtrip_images.png`` (originals, reconstructions at S = 10 for DDIM and the
    best solver, differences) to the output folder; returns the JSON document.
    """
    run = run or StudyRun()
    dev, dt = run.torch_device(), check_dtype(dtype)
    resolved = resolve_model(model, schedule, prediction, dev)
    if run.quick:
        num, steps = min(num, 8), (5, 10, 20)
        solvers = solvers or tuple(n for n in QUICK_SOLVERS if n in SOLVERS)
    names = check_solvers(solvers or [n for n in DEFAULT_SOLVERS if n in SOLVERS])
    names = [n for n in names if get_solver(n).can_encode]
    x0 = _images(data, num, run.seed_or(0)).to(dev, dt)
    jobs = [(name, n) for name in names for n in steps]
    results, panels = [], {}
    for name, n in progress(jobs, len(jobs), "round trips", run.show_progress):
        row, rec = _round_trip(x0, name, n, resolved, grid, max_nfe, batch_size)
        results.append(row)
        if rec is not None and n == PANEL_STEPS:
            panels[name] = rec.cpu()
    doc = {
        "study": "roundtrip",
        "settings": {
            "solvers": names,
            "steps": list(steps),
            "num": len(x0),
            "grid": grid,
            "max_nfe": max_nfe,
            "seed": run.seed_or(0),
            "schedule": repr(resolved.schedule),
            "model": model_name(model),
            "data_scale": "MSE per dimension with data mapped from [-1, 1] to [0, 1]",
            "quick": run.quick,
        },
        "environment": environment(dev, dt),
        "results": results,
    }
    out = run.folder("roundtrip")
    finish(doc, out, plot_roundtrip)
    if panels:
        _image_panel(x0.cpu(), panels, doc, out / "roundtrip_images.png")
    return doc


def _images(data: Tensor | None, num: int, seed: int) -> Tensor:
    """``num`` images drawn from ``data`` (default: the held-out digits) with ``seed``."""
    if data is None:
        from ..data import load_digits

        data = load_digits("heldout")
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:num]
    return data[idx]


def _round_trip(
    x0: Tensor, name: str, n: int, resolved: ResolvedModel, grid: str, max_nfe: int, batch_size: int
) -> tuple[dict[str, Any], Tensor | None]:
    """(result row, reconstructions) of one solver at S = n; no reconstructions when skipped."""
    nfe_est = get_solver(name).nfe_per_step * n
    if nfe_est > max_nfe:
        return {"solver": name, "steps": n, "skipped": f"NFE {nfe_est:g} > max_nfe {max_nfe}"}, None
    kw = dict(model=resolved.model, schedule=resolved.schedule, grid=grid, prediction=resolved.prediction)
    t0 = time.perf_counter()
    recs, nfe = [], 0
    with torch.no_grad():
        for i in range(0, len(x0), batch_size):
            enc = encode(x0[i : i + batch_size], name, n, return_solution=True, **kw)
            dec = decode(enc.x, name, n, state=enc.state, return_solution=True, **kw)
            recs.append(dec.x)
            nfe = enc.nfe + dec.nfe
    rec = torch.cat(recs)
    per_image = ((rec - x0) / 2).double().pow(2).flatten(1).mean(1)
    row = {
        "solver": name,
        "steps": n,
        "nfe_round_trip": nfe,
        "mse": float(per_image.mean()),
        "mse_stderr": float(per_image.std() / np.sqrt(len(per_image))) if len(per_image) > 1 else 0.0,
        "max_abs": float((rec - x0).abs().max() / 2),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return row, rec


def _best_at(doc: dict[str, Any], n: int) -> str | None:
    rows = [r for r in doc["results"] if r.get("steps") == n and "mse" in r]
    return min(rows, key=lambda r: r["mse"])["solver"] if rows else None


def _image_panel(x0: Tensor, panels: dict[str, Tensor], doc: dict[str, Any], path: Path, cols: int = 16) -> None:
    """Rows: originals, then reconstruction and |difference| for DDIM and the best solver at S = 10."""
    if x0.ndim != 4:
        return
    x0 = x0[:cols]
    panels = {k: v[:cols] for k, v in panels.items()}
    best = _best_at(doc, PANEL_STEPS)
    rows = [to_unit(x0)]
    for name in dict.fromkeys(n for n in ("euler", best) if n in panels):
        rows += [to_unit(panels[name]), to_unit((panels[name] - x0).abs() - 1.0)]
    save_png(path, image_grid(np.concatenate(rows), ncol=len(x0)))


def plot_roundtrip(doc: dict[str, Any], out_dir: str | Path) -> Path:
    """Log-log plot of reconstruction MSE against S (re-plottable from the JSON alone)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name in doc["settings"]["solvers"]:
        rows = [r for r in doc["results"] if r["solver"] == name and "mse" in r]
        if rows:
            mse = [max(r["mse"], 1e-35) for r in rows]
            ax.loglog([r["steps"] for r in rows], mse, "o-", label=name)
    ax.set_xlabel("steps S (each direction)")
    ax.set_ylabel("per-dimension MSE, data in [0, 1]")
    ax.set_title("encode → decode reconstruction error")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, Path(out_dir) / "roundtrip.png")

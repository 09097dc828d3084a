"""Exact inversion: round-trip error of decode(encode(x0)) and the spread of the encoded latent.

Unit-scale 3-D data (two Gaussians of std 0.5 at (1, 0, −1) and (−1, 0.5, 1)) through the
ε-network path (:meth:`ddim_ode.analytic.AnalyticModel.as_eps_model`, DDPM linear schedule), in
float64 and float32, for the reversible solvers and two ordinary ones, on several grids and n.
A reversible solver's latent carries its auxiliary state, so its decode retraces the encode.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..analytic import GaussianMixture
from ..driver import decode, encode
from ..schedules import DiscreteSchedule
from .common import StudyRun, check_solvers, environment, finish, progress, write_markdown

__all__ = ["inversion_study", "inversion_table", "DEFAULT_SOLVERS", "DEFAULT_STEPS"]

DEFAULT_SOLVERS = ("belm", "reversible-heun", "euler", "dpm-solver++2m")
DEFAULT_GRIDS = ("uniform", "karras", "logsnr")
DEFAULT_STEPS = (1, 2, 5, 10, 20, 50, 100, 200)
DTYPES = (torch.float64, torch.float32)


def inversion_study(
    solvers: Sequence[str] | None = None,
    *,
    grids: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    num: int = 256,
    run: StudyRun | None = None,
) -> dict[str, Any]:
    """Round-trip MSE per dimension and latent mean/std for every solver, grid, dtype and n; writes
    ``inversion.json`` and ``inversion.md``. ``quick``: belm and euler, one grid, n ∈ {2, 10}, 32 points."""
    run = run or StudyRun()
    if run.quick:
        solvers, grids, steps, num = solvers or ("belm", "euler"), grids or ("uniform",), steps or (2, 10), min(num, 32)
    names = check_solvers(solvers or DEFAULT_SOLVERS)
    grids, steps = tuple(grids or DEFAULT_GRIDS), tuple(steps or DEFAULT_STEPS)
    schedule = DiscreteSchedule.linear()
    data = GaussianMixture(torch.tensor([[1.0, 0.0, -1.0], [-1.0, 0.5, 1.0]]), 0.5**2)
    model = data.as_eps_model(schedule)
    seed = run.seed_or(0)
    rows = []
    jobs = [(name, grid, dtype) for name in names for grid in grids for dtype in DTYPES]
    for name, grid, dtype in progress(jobs, len(jobs), "inversion", run.show_progress):
        for n in steps:
            x0 = data.sample(num, generator=torch.Generator().manual_seed(seed), dtype=dtype)
            z = encode(x0, name, n, model=model, schedule=schedule, grid=grid)
            back = decode(z, name, n, model=model, schedule=schedule, grid=grid)
            rows.append(
                {
                    "solver": name,
                    "grid": grid,
                    "dtype": str(dtype),
                    "n": n,
                    "roundtrip_mse": float(((back.double() - x0.double()) ** 2).mean()),
                    "latent_std": float(z.double().std()),
                    "latent_mean": float(z.double().mean()),
                }
            )
    doc = {
        "study": "inversion",
        "settings": {
            "solvers": names,
            "grids": list(grids),
            "steps": list(steps),
            "num": num,
            "seed": seed,
            "quick": run.quick,
        },
        "environment": environment("cpu", torch.float64),
        "results": rows,
    }
    return finish(doc, run.folder("inversion"), write_inversion_table)


def inversion_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: round-trip MSE per (solver, grid, dtype) against n, then the float64 latents' std."""
    ns = sorted({r["n"] for r in rows})
    by = {(r["solver"], r["grid"], r["dtype"], r["n"]): r for r in rows}
    keys = dict.fromkeys((r["solver"], r["grid"], r["dtype"]) for r in rows)
    out = ["| solver | grid | dtype | " + " | ".join(f"n={n}" for n in ns) + " |", "|---|---|---|" + "---|" * len(ns)]
    for solver, grid, dtype in keys:
        cells = [f"{by[solver, grid, dtype, n]['roundtrip_mse']:.1e}" for n in ns]
        out.append(f"| {solver} | {grid} | {dtype.replace('torch.', '')} | " + " | ".join(cells) + " |")
    out += ["", "Encoded latent std (float64; N(0, I) noise would give 1.00):", ""]
    out.append("| solver | grid | " + " | ".join(f"n={n}" for n in ns) + " |")
    out.append("|---|---|" + "---|" * len(ns))
    for solver, grid, dtype in keys:
        if dtype == "torch.float64":
            cells = [f"{by[solver, grid, dtype, n]['latent_std']:.2f}" for n in ns]
            out.append(f"| {solver} | {grid} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def write_inversion_table(doc: dict[str, Any], out_dir: str | Path) -> Path:
    """``inversion.md`` from an inversion JSON."""
    return write_markdown(Path(out_dir) / "inversion.md", inversion_table(doc["results"]))

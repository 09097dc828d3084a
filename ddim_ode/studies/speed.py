"""Speed: wall time per sample and per NFE, split into network time and solver overhead.

The model is wrapped in a timer (synchronising CUDA around each call when the device is a GPU),
so ``network`` is the time spent inside the ε-network and ``overhead`` = total − network is the
time of everything else (grid, solver arithmetic, checks). A near-zero-cost model makes the
overhead itself visible.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..driver import decode
from ..solvers import SOLVERS, get_solver
from .common import (
    check_dtype,
    check_solvers,
    environment,
    event_shape,
    finish,
    markdown_table,
    progress,
    pyplot,
    resolve_model,
    save_figure,
)

__all__ = ["speed_study", "plot_speed", "speed_table", "TimedModel", "ZeroCostModel"]


QUICK_SOLVERS = ("euler", "heun", "dpm-solver++2m")


def _default_solvers() -> list[str]:
    """Every registered solver except the adaptive ones other than dopri5 (their NFE is not set by n)."""
    return [n for n in sorted(SOLVERS) if not get_solver(n).adaptive or n == "dopri5"]


class ZeroCostModel(torch.nn.Module):
    """A near-zero-cost ε-model, ε = 0.1 x_t: isolates the solver's own overhead."""

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        return x_t * 0.1


class TimedModel(torch.nn.Module):
    """Wraps an ε-model and accumulates the wall time spent inside it."""

    def __init__(self, inner: Any, device: torch.device) -> None:
        super().__init__()
        self.inner = inner
        self.cuda = device.type == "cuda"
        self.seconds = 0.0

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = self.inner(x_t, t)
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        return out


def speed_study(
    model: Any = None,
    schedule: Any = None,
    *,
    solvers: tuple[str, ...] | None = None,
    batch_sizes: tuple[int, ...] = (1, 16, 128),
    steps: int = 20,
    repeats: int = 3,
    shape: tuple[int, ...] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    prediction: str = "eps",
    out_dir: str | Path = "results/speed",
    quick: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Time ``decode`` with n = ``steps`` for every solver and batch size, on the given model
    (default: the built-in one) and on :class:`ZeroCostModel`; medians over ``repeats`` runs.
    ``quick``: batch sizes {1, 16}, one repeat, 5 steps. Writes ``speed.json`` and ``speed.png``."""
    dev = torch.device(device)
    dt = check_dtype(dtype)
    if quick:
        batch_sizes, repeats, steps = (1, 16), 1, 5
        solvers = solvers or tuple(n for n in QUICK_SOLVERS if n in SOLVERS)
    model_, schedule_, prediction_, meta = resolve_model(model, schedule, dev, prediction)
    if shape is None:
        shape = event_shape(meta)
    names = check_solvers(solvers) if solvers else _default_solvers()
    models = {"network": model_, "zero-cost": ZeroCostModel()}
    results = []
    jobs = [(m, name, b) for m in models for name in names for b in batch_sizes]
    for mname, name, b in progress(jobs, len(jobs), "speed", show_progress):
        slv = get_solver(name)
        opts: dict[str, Any] = {"rtol": 1e-3, "atol": 1e-4} if slv.adaptive else {}
        x = torch.randn((b, *shape), generator=torch.Generator().manual_seed(seed)).to(dev, dt)
        timed = TimedModel(models[mname], dev)
        totals, nets, nfe = [], [], 0
        with torch.no_grad():
            for rep in range(repeats + 1):  # the first run warms up and is not counted
                timed.seconds = 0.0
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                sol = decode(
                    x,
                    name,
                    steps,
                    model=timed,
                    schedule=schedule_,
                    prediction=prediction_,  # type: ignore[arg-type]
                    solver_options=opts,
                    return_solution=True,
                )
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                if rep:
                    totals.append(time.perf_counter() - t0)
                    nets.append(timed.seconds)
                nfe = sol.nfe
        total, net = statistics.median(totals), statistics.median(nets)
        results.append(
            {
                "model": mname,
                "solver": name,
                "batch": b,
                "steps": steps,
                "nfe": nfe,
                "total_s": total,
                "network_s": net,
                "overhead_s": total - net,
                "per_sample_s": total / b,
                "per_nfe_s": total / max(nfe, 1),
                "overhead_per_nfe_s": (total - net) / max(nfe, 1),
            }
        )
    doc = {
        "study": "speed",
        "settings": {
            "solvers": names,
            "batch_sizes": list(batch_sizes),
            "steps": steps,
            "repeats": repeats,
            "shape": list(shape),
            "seed": seed,
            "quick": quick,
            "model": "built-in" if model is None else type(model).__name__,
        },
        "environment": environment(dev, dt),
        "results": results,
    }
    return finish(doc, out_dir, plot_speed)


def plot_speed(doc: dict[str, Any], out_dir: str | Path) -> Path:
    """Bars: per-NFE time split into network and overhead, for the largest batch."""
    plt = pyplot()
    b = max(doc["settings"]["batch_sizes"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, mname in zip(axes, ("network", "zero-cost")):
        rows = [r for r in doc["results"] if r["model"] == mname and r["batch"] == b]
        names = [r["solver"] for r in rows]
        net = [1e3 * r["network_s"] / max(r["nfe"], 1) for r in rows]
        ovh = [1e3 * r["overhead_per_nfe_s"] for r in rows]
        ax.bar(names, net, label="network")
        ax.bar(names, ovh, bottom=net, label="overhead")
        ax.set_ylabel("ms per NFE")
        ax.set_title(f"{mname} model, batch {b}")
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        ax.legend(fontsize=8)
    return save_figure(fig, Path(out_dir) / "speed.png")


def speed_table(doc: dict[str, Any], model: str = "network") -> str:
    """Markdown: ms per NFE (total / overhead) for each solver and batch size."""
    bs = doc["settings"]["batch_sizes"]
    rows = []
    for name in doc["settings"]["solvers"]:
        cells: list[Any] = [name]
        for b in bs:
            r = next((r for r in doc["results"] if (r["model"], r["solver"], r["batch"]) == (model, name, b)), None)
            cells.append(f"{1e3 * r['per_nfe_s']:.3g} / {1e3 * r['overhead_per_nfe_s']:.3g}" if r else None)
        rows.append(cells)
    return markdown_table(["solver"] + [f"batch {b}: ms/NFE total / overhead" for b in bs], rows)

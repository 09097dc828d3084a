"""Speed: wall time per sample and per NFE, split into network time and solver overhead.

The model is wrapped in a timer (synchronising CUDA around each call when the device is a GPU),
so ``network`` is the time spent inside the ε-network and ``overhead`` = total − network is the
time of everything else (grid, solver arithmetic, checks). A near-zero-cost model makes the
overhead itself visible.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..driver import decode
from ..io import sample_shape
from ..models import resolve_model
from ..schedules import Schedule
from ..solvers import SOLVERS, get_solver
from .common import StudyRun, check_dtype, check_solvers, environment, finish, model_name, progress, pyplot, save_figure

__all__ = ["speed_study", "plot_speed", "TimedModel", "ZeroCostModel"]


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
        self.sync()
        t0 = time.perf_counter()
        out = self.inner(x_t, t)
        self.sync()
        self.seconds += time.perf_counter() - t0
        return out

    def sync(self) -> None:
        """Wait for the GPU (a no-op on the CPU)."""
        if self.cuda:
            torch.cuda.synchronize()


def speed_study(
    model: Any = None,
    schedule: Any = None,
    *,
    solvers: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = (1, 16, 128),
    steps: int = 20,
    repeats: int = 3,
    shape: tuple[int, ...] | None = None,
    dtype: str = "float32",
    prediction: str | None = None,
    run: StudyRun | None = None,
) -> dict[str, Any]:
    """Time ``decode`` with n = ``steps`` for every solver and batch size, on the given model
    (default: the built-in one) and on :class:`ZeroCostModel`; medians over ``repeats`` runs after
    a warm-up. ``quick``: batch sizes {1, 16}, one repeat, 5 steps. Writes ``speed.json`` and ``speed.png``."""
    run = run or StudyRun()
    dev, dt, seed = run.torch_device(), check_dtype(dtype), run.seed_or(0)
    if run.quick:
        batch_sizes, repeats, steps = (1, 16), 1, 5
        solvers = solvers or tuple(n for n in QUICK_SOLVERS if n in SOLVERS)
    resolved = resolve_model(model, schedule, prediction, dev)
    shape = shape if shape is not None else sample_shape(resolved.metadata)
    names = check_solvers(solvers) if solvers else _default_solvers()
    models = {"network": resolved.model, "zero-cost": ZeroCostModel()}
    jobs = [(m, name, b) for m in models for name in names for b in batch_sizes]
    results = []
    for mname, name, b in progress(jobs, len(jobs), "speed", run.show_progress):
        x = torch.randn((b, *shape), generator=torch.Generator().manual_seed(seed)).to(dev, dt)
        timed = TimedModel(models[mname], dev)
        total, net, nfe = _time_decode(x, name, steps, timed, resolved.schedule, resolved.prediction, repeats)
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
            "quick": run.quick,
            "model": model_name(model),
        },
        "environment": environment(dev, dt),
        "results": results,
    }
    return finish(doc, run.folder("speed"), plot_speed)


def _time_decode(
    x: Tensor, name: str, steps: int, timed: TimedModel, schedule: Schedule, prediction: str, repeats: int
) -> tuple[float, float, int]:
    """(median total seconds, median network seconds, NFE) of ``repeats`` decodes after one warm-up."""
    opts: dict[str, Any] = {"rtol": 1e-3, "atol": 1e-4} if get_solver(name).adaptive else {}
    totals, nets, nfe = [], [], 0
    with torch.no_grad():
        for rep in range(repeats + 1):  # the first run warms up and is not counted
            timed.seconds = 0.0
            timed.sync()
            t0 = time.perf_counter()
            sol = decode(
                x,
                name,
                steps,
                model=timed,
                schedule=schedule,
                prediction=prediction,  # type: ignore[arg-type]
                solver_options=opts,
                return_solution=True,
            )
            timed.sync()
            if rep:
                totals.append(time.perf_counter() - t0)
                nets.append(timed.seconds)
            nfe = sol.nfe
    return statistics.median(totals), statistics.median(nets), nfe


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

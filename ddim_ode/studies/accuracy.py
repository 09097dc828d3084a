"""Accuracy versus NFE: each solver's final-state error against a float64 high-accuracy reference.

From the same starting points, each solver integrates along a grid with n steps (n chosen so
that NFE ≈ each target) and its result is compared with the scipy DOP853 solution of the same
ODE at rtol 1e-10 (float64). Decoding compares x̄ at σ = 0 (the samples); encoding compares x̄
at the top of the grid (the latents). Errors are RMS per dimension and max-abs, in x̄.
Problems: the 2-D 8-mode ring mixture, a 64-dimensional 8-component mixture (exact oracles,
:mod:`ddim_ode.analytic`), and the built-in digits model (in float64).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

from ..analytic import GaussianMixture, reference_solve
from ..driver import integrate
from ..field import ProbabilityFlowODE
from ..grids import make_grid
from ..schedules import DiscreteSchedule
from ..solvers import SOLVERS, get_solver
from .common import (
    check_solvers,
    environment,
    finish,
    fit_order,
    markdown_table,
    progress,
    pyplot,
    save_figure,
)

__all__ = ["accuracy_study", "plot_accuracy", "accuracy_table", "PROBLEMS"]

PROBLEMS = ("ring", "mix64", "model")
DEFAULT_NFES = (3, 5, 10, 20, 50)
MODEL_NUM = 8  # images for the built-in-model problem
# the network's field has a kink at every integer timestep (t is piecewise linear in log σ), which makes
# rtol 1e-10 cost ~15k NFE; at 1e-8 the reference differs from a 1e-6 solve by 6e-6 RMS, far below the errors measured
REF_RTOL_MODEL = 1e-8
ADAPTIVE_RTOLS = (1e-2, 1e-3, 1e-4)


def _problem(name: str, num: int, seed: int, device: torch.device) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    if name in ("ring", "mix64"):
        oracle = GaussianMixture.ring() if name == "ring" else GaussianMixture.random(k=8, dim=64, seed=seed)
        x0 = oracle.sample(num, g).to(device)
        return {
            "model": oracle,
            "schedule": DiscreteSchedule.linear(),
            "prediction": "eps",
            "x0": x0,
            "label": repr(oracle),
            "ref_rtol": 1e-10,
        }
    if name == "model":
        from ..data import load_digits
        from ..io import load_default

        model, schedule, meta = load_default(device)
        model64 = copy.deepcopy(model).double().eval().requires_grad_(False)
        data = load_digits("heldout")
        num = min(num, MODEL_NUM)  # the float64 network reference is the expensive part
        x0 = data[torch.randperm(len(data), generator=g)[:num]].to(device, torch.float64)
        return {
            "model": model64,
            "schedule": schedule,
            "prediction": meta.get("prediction", "eps"),
            "x0": x0,
            "label": "built-in digits model",
            "ref_rtol": REF_RTOL_MODEL,
        }
    raise ValueError(f"unknown problem {name!r}; allowed: {', '.join(PROBLEMS)}")


def _error(x: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    d = (x.double() - ref).reshape(len(ref), -1)
    return float(d.pow(2).mean().sqrt()), float(d.abs().max())


def accuracy_study(
    problems: tuple[str, ...] = ("ring", "mix64", "model"),
    *,
    solvers: tuple[str, ...] | None = None,
    grids: tuple[str, ...] = ("karras",),
    nfes: tuple[int, ...] = DEFAULT_NFES,
    adaptive_rtols: tuple[float, ...] = ADAPTIVE_RTOLS,
    directions: tuple[str, ...] = ("decode", "encode"),
    num: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    out_dir: str | Path = "results/accuracy",
    quick: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Error vs NFE for every solver, grid, problem and direction; writes ``accuracy.json``/``.png``.

    ``solvers`` defaults to every registered deterministic solver (stochastic ones are skipped);
    fixed-grid solvers are run with n = round(NFE / NFE-per-step) for each NFE in ``nfes``,
    adaptive ones at each rtol in ``adaptive_rtols`` (atol = rtol/10). ``quick``: the ring problem
    only, 16 points, NFE ∈ {5, 10, 20}, one grid, decoding only.
    """
    dev = torch.device(device)
    if quick:
        problems, num, nfes, grids, directions, adaptive_rtols = (
            ("ring",),
            16,
            (5, 10, 20),
            grids[:1],
            ("decode",),
            (1e-3,),
        )
    for d in directions:
        if d not in ("decode", "encode"):
            raise ValueError(f"unknown direction {d!r}; allowed: decode, encode")
    names = check_solvers(solvers) if solvers else sorted(SOLVERS)
    if not solvers:  # by default the deterministic fixed-grid solvers and two adaptive ones
        names = [n for n in names if (not get_solver(n).adaptive or n in ("dopri5", "bosh3")) and n != "ddim"]
    names = [n for n in names if not get_solver(n).stochastic]
    results: list[dict[str, Any]] = []
    references: list[dict[str, Any]] = []
    jobs = [(p, g, d) for p in problems for g in grids for d in directions]
    for prob_name, grid, direction in progress(jobs, len(jobs), "accuracy", show_progress):
        prob = _problem(prob_name, num, seed, dev)
        sch = prob["schedule"]
        sig_dec = make_grid(sch, grid, 10)
        s_top = float(sig_dec[0])
        gx = torch.Generator().manual_seed(seed + 1)
        if direction == "decode":
            start = torch.randn(prob["x0"].shape, generator=gx, dtype=torch.float64).to(dev) * (1 + s_top**2) ** 0.5
            s0, s1 = s_top, 0.0
        else:
            start, s0, s1 = prob["x0"].to(torch.float64), 0.0, s_top
        field = ProbabilityFlowODE(prob["model"], sch, prediction=prob["prediction"])
        t0 = time.perf_counter()
        ref, ref_nfe = reference_solve(field, start, s0, s1, rtol=prob["ref_rtol"], atol=prob["ref_rtol"])
        references.append(
            {
                "problem": prob_name,
                "grid": grid,
                "direction": direction,
                "nfe": ref_nfe,
                "seconds": time.perf_counter() - t0,
            }
        )
        x_in = start / (1 + s0**2) ** 0.5  # VP scale at the start
        for name in names:
            slv = get_solver(name)
            if direction == "encode" and not slv.can_encode:
                continue
            settings: list[tuple[int, dict[str, Any]]]
            if slv.adaptive:
                settings = [(1, {"rtol": r, "atol": r / 10}) for r in adaptive_rtols]
            else:
                ns = sorted({max(1, int(round(nfe / slv.nfe_per_step))) for nfe in nfes})
                settings = [(n, {}) for n in ns]
            for n, opts in settings:
                sig = make_grid(sch, grid, n)
                if direction == "encode":
                    sig = sig.flip(0)
                try:
                    sol = integrate(
                        x_in,
                        solver=name,
                        model=prob["model"],
                        schedule=sch,
                        sigmas=sig,
                        prediction=prob["prediction"],
                        solver_options=opts,
                        return_solution=True,
                    )
                    rms, mx = _error(sol.xbar, ref)
                    row = {"nfe": sol.nfe, "rms": rms, "max": mx}
                except (ValueError, FloatingPointError) as err:
                    row = {"nfe": None, "rms": None, "max": None, "error": str(err)}
                results.append(
                    {
                        "problem": prob_name,
                        "grid": grid,
                        "direction": direction,
                        "solver": name,
                        "steps": n,
                        **opts,
                        **row,
                    }
                )
    orders = []
    for p, g, d in jobs:
        for name in names:
            rows = [r for r in results if (r["problem"], r["grid"], r["direction"], r["solver"]) == (p, g, d, name)]
            rows = [r for r in rows if r["rms"] is not None and r["nfe"] and r["nfe"] >= 10]
            if rows:
                orders.append(
                    {
                        "problem": p,
                        "grid": g,
                        "direction": d,
                        "solver": name,
                        "order": fit_order([r["nfe"] for r in rows], [r["rms"] for r in rows]),
                    }
                )
    doc = {
        "study": "accuracy",
        "settings": {
            "problems": list(problems),
            "solvers": names,
            "grids": list(grids),
            "nfes": list(nfes),
            "adaptive_rtols": list(adaptive_rtols),
            "directions": list(directions),
            "num": num,
            "model_num": min(num, MODEL_NUM),
            "seed": seed,
            "reference": "scipy DOP853 in float64, rtol = atol = 1e-10 (analytic problems), 1e-8 (built-in model)",
            "error": "RMS per dimension of x̄",
            "quick": quick,
        },
        "environment": environment(dev, torch.float64),
        "references": references,
        "results": results,
        "orders": orders,
    }
    return finish(doc, out_dir, plot_accuracy)


def plot_accuracy(doc: dict[str, Any], out_dir: str | Path) -> Path:
    """One log-log panel per (problem, direction) on the first grid: error vs NFE, one line per solver."""
    plt = pyplot()
    s = doc["settings"]
    grid = s["grids"][0]
    panels = [(p, d) for d in s["directions"] for p in s["problems"]]
    nrow, ncol = len(s["directions"]), len(s["problems"])
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 4.4 * nrow), squeeze=False)
    order = {(o["problem"], o["direction"], o["solver"]): o["order"] for o in doc["orders"] if o["grid"] == grid}
    for ax, (p, d) in zip(axes.reshape(-1), panels):
        for name in s["solvers"]:
            rows = [
                r
                for r in doc["results"]
                if (r["problem"], r["grid"], r["direction"], r["solver"]) == (p, grid, d, name)
            ]
            rows = sorted((r for r in rows if r["rms"]), key=lambda r: r["nfe"])
            if rows:
                k = order.get((p, d, name), float("nan"))
                ax.loglog([r["nfe"] for r in rows], [r["rms"] for r in rows], "o-", ms=3, label=f"{name} ({k:.1f})")
        ax.set_title(f"{p}, {d}, grid={grid}")
        ax.set_xlabel("NFE")
        ax.set_ylabel("RMS error per dimension")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, title="solver (fitted order)", title_fontsize=6)
    return save_figure(fig, Path(out_dir) / "accuracy.png")


def accuracy_table(
    doc: dict[str, Any],
    problem: str,
    direction: str = "decode",
    grid: str | None = None,
    at: tuple[int, ...] = (5, 10, 20, 50),
) -> str:
    """Markdown: RMS error of each solver at the NFE closest to each target in ``at``."""
    grid = grid or doc["settings"]["grids"][0]
    rows = []
    for name in doc["settings"]["solvers"]:
        rs = [
            r
            for r in doc["results"]
            if (r["problem"], r["grid"], r["direction"], r["solver"]) == (problem, grid, direction, name)
        ]
        rs = [r for r in rs if r["rms"] is not None]
        if not rs:
            continue
        cells = []
        for target in at:
            best = min(rs, key=lambda r: abs(r["nfe"] - target))
            cells.append(best["rms"] if abs(best["nfe"] - target) <= 0.2 * target + 1 else None)
        rows.append([name] + cells)
    return markdown_table(["solver"] + [f"NFE≈{a}" for a in at], rows, fmt=lambda v: f"{v:.2e}")

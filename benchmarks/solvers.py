"""Accuracy of every solver against a float64 reference: error vs NFE, decoding and encoding.

    python benchmarks/solvers.py [--quick] [--out DIR] [--grids karras,uniform] [--problems ring,mixture64]

For each problem (an ε-model and its schedule, fixed noise x_T and data x0) and each grid, every
deterministic fixed-grid solver is run at the step counts whose NFE best fills the budgets
3 … 100, and the adaptive solvers at a few tolerances. Errors are the RMS per dimension of

* decode: the final x̄ (= x0) against a float64 DOP853 reference solve (rtol = atol = 1e-10)
  of the same ODE from the same x_T (VP scale at the grid's first σ);
* encode: the VP-scale latent x_T = x̄/√(1 + σ_max²) from data samples x0, against the reference;
* round trip: decode(encode(x0)) against x0, same solver and grid.

Problems: (a) ``ring`` — the 2-D 8-mode ring ``GaussianMixture.ring()``, (b) ``mixture64`` —
``GaussianMixture.random(dim=64)``, both exact oracles on ``DiscreteSchedule.linear()``. Any other
model is one more :class:`Problem` (e.g. a trained network with ``Problem.from_model``); the
reference solve only needs the field.

Writes ``DIR/results/solvers.json`` (every number, with the environment), ``DIR/img/solvers_*.png``
(log-log error vs NFE, one line per solver, fitted slopes in the legend) and
``DIR/results/solvers_tables.md`` (errors at NFE ∈ {5, 10, 20, 50} and the adaptive tables).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import ddim_ode
from ddim_ode import analytic
from ddim_ode.core import from_xbar, solve, to_xbar
from ddim_ode.field import ProbabilityFlowODE
from ddim_ode.grids import make_grid
from ddim_ode.schedules import DiscreteSchedule, Schedule

TABLE_NFE = (5, 10, 20, 50)
CURVE_NFE = (3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 70, 100)
TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
ADAPTIVE = ("dopri5", "bosh3", "dopri8", "adaptive_heun")
# solvers whose steps are identical to another one (tested to rounding): run, but not plotted separately
ALIASES = {"ddim": "euler", "dpm-solver-1": "euler"}
# options variants worth showing next to the defaults
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("heun[final=full]", "heun", {"final_step": "full"}),
    ("dpm-solver++3m[published]", "dpm-solver++3m", {"third_order_term": "published"}),
)


@dataclass
class Problem:
    """A benchmark problem: an ε-model with its schedule, fixed noise and (optionally) data samples."""

    name: str
    model: Any
    schedule: Schedule
    x_T: Tensor
    x0: Tensor | None = None
    prediction: str = "eps"
    meta: dict[str, Any] = dc_field(default_factory=dict)

    def field(self) -> ProbabilityFlowODE:
        return ProbabilityFlowODE(self.model, self.schedule, prediction=self.prediction)  # type: ignore[arg-type]

    @classmethod
    def from_model(
        cls,
        name: str,
        model: Any,
        schedule: Schedule,
        shape: tuple[int, ...],
        batch: int,
        x0: Tensor | None = None,
        prediction: str = "eps",
        seed: int = 0,
    ) -> Problem:
        """Any ε-model (a trained network included), with seeded N(0, I) noise of ``shape``."""
        g = torch.Generator().manual_seed(seed)
        x_T = torch.randn((batch, *shape), generator=g, dtype=torch.float64)
        return cls(name, model, schedule, x_T, x0, prediction, {"shape": list(shape), "batch": batch})


def builtin_problems(names: list[str], quick: bool) -> list[Problem]:
    schedule = DiscreteSchedule.linear()
    out = []
    for name in names:
        if name == "ring":
            oracle = analytic.GaussianMixture.ring()
            batch = 64 if quick else 256
        elif name == "mixture64":
            oracle = analytic.GaussianMixture.random(dim=64)
            batch = 16 if quick else 64
        else:
            raise SystemExit(f"unknown problem {name!r}; built in: ring, mixture64")
        x0 = oracle.sample(batch, generator=torch.Generator().manual_seed(1))
        prob = Problem.from_model(name, oracle, schedule, oracle.event_shape, batch, x0=x0)
        prob.meta["oracle"] = repr(oracle)
        prob.meta["schedule"] = repr(schedule)
        out.append(prob)
    return out


# ---------------------------------------------------------------------------------------------
# references (cached by the σ they start from)


class References:
    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.field = problem.field()
        self._decode: dict[float, Tensor] = {}
        self._encode: dict[float, Tensor] = {}
        self.nfe: dict[str, int] = {}

    def decode(self, sigma0: float) -> Tensor:
        if sigma0 not in self._decode:
            xbar = to_xbar(self.problem.x_T, sigma0)
            out, nfe = analytic.reference_solve(self.field, xbar, sigma0, 0.0, rtol=1e-10, atol=1e-10)
            self._decode[sigma0] = out
            self.nfe[f"decode from {sigma0:.6g}"] = nfe
        return self._decode[sigma0]

    def encode(self, sigma_top: float) -> Tensor:
        if sigma_top not in self._encode:
            assert self.problem.x0 is not None
            out, nfe = analytic.reference_solve(self.field, self.problem.x0, 0.0, sigma_top, rtol=1e-10, atol=1e-10)
            self._encode[sigma_top] = from_xbar(out, sigma_top)
            self.nfe[f"encode to {sigma_top:.6g}"] = nfe
        return self._encode[sigma_top]


def rms(a: Tensor, b: Tensor) -> float:
    """RMS per dimension over the batch."""
    return float(((a.double() - b.double()) ** 2).mean().sqrt())


def median_sample_error(a: Tensor, b: Tensor) -> float:
    """Median over samples of each sample's RMS error (insensitive to a few mode switches)."""
    per = ((a.double() - b.double()) ** 2).reshape(a.shape[0], -1).mean(1).sqrt()
    return float(per.median())


# ---------------------------------------------------------------------------------------------
# NFE bookkeeping for fixed-grid solvers (a zero model: the count does not depend on the values)


class _Zero:
    def eps_xbar(self, xbar: Tensor, sigma: float) -> Tensor:
        return torch.zeros_like(xbar)


def nfe_of(name: str, options: dict[str, Any], sigmas: Tensor, schedule: Schedule) -> int:
    f = ProbabilityFlowODE(_Zero(), schedule)
    return solve(f, torch.zeros(1, 1, dtype=torch.float64), sigmas, name, solver_options=options).nfe


def step_counts(
    name: str, options: dict[str, Any], schedule: Schedule, grid: str, budgets: tuple[int, ...]
) -> dict[int, int]:
    """{n: NFE} for the largest n whose NFE fits each budget."""
    cache: dict[int, int] = {}
    chosen: dict[int, int] = {}
    for budget in budgets:
        best = None
        for n in range(1, budget + 1):
            if n not in cache:
                cache[n] = nfe_of(name, options, make_grid(schedule, grid, n), schedule)
            if cache[n] <= budget:
                best = n
        if best is not None:
            chosen[best] = cache[best]
    return chosen


# ---------------------------------------------------------------------------------------------
# runs


def fixed_grid_specs() -> list[tuple[str, str, dict[str, Any]]]:
    specs = [
        (info.name, info.name, {})
        for info in ddim_ode.list_solvers()
        if not info.adaptive and not info.stochastic and info.name != "ddpm"
    ]
    return specs + list(VARIANTS)


def run_fixed(
    problem: Problem,
    refs: References,
    grid: str,
    label: str,
    name: str,
    options: dict[str, Any],
    budgets: tuple[int, ...],
) -> list[dict[str, Any]]:
    rows = []
    schedule = problem.schedule
    slv = ddim_ode.get_solver(name, **options)
    can_encode = slv.can_encode and problem.x0 is not None
    for n, nfe in sorted(step_counts(name, options, schedule, grid, budgets).items()):
        sig = make_grid(schedule, grid, n)
        field = problem.field()
        t0 = time.perf_counter()
        sol = solve(field, to_xbar(problem.x_T, float(sig[0])), sig, name, solver_options=options)
        elapsed = time.perf_counter() - t0
        row: dict[str, Any] = {
            "problem": problem.name,
            "grid": grid,
            "label": label,
            "solver": name,
            "options": options,
            "n": n,
            "nfe": sol.nfe,
            "decode_error": rms(sol.xbar, refs.decode(float(sig[0]))),
            "decode_median_sample_error": median_sample_error(sol.xbar, refs.decode(float(sig[0]))),
            "decode_seconds": elapsed,
        }
        assert sol.nfe == nfe, (label, n, sol.nfe, nfe)
        if can_encode:
            assert problem.x0 is not None
            up = sig.flip(0)
            enc = solve(problem.field(), problem.x0, up, name, solver_options=options)
            row["encode_nfe"] = enc.nfe
            row["encode_error"] = rms(from_xbar(enc.xbar, float(up[-1])), refs.encode(float(up[-1])))
            state = enc.state if slv.reversible else None
            back = solve(problem.field(), enc.xbar, sig, name, solver_options=options, state=state)
            row["roundtrip_error"] = rms(back.xbar, problem.x0)
        rows.append(row)
    return rows


def run_adaptive(
    problem: Problem, refs: References, grid: str, method: str, variable: str, tols: tuple[float, ...]
) -> list[dict[str, Any]]:
    rows = []
    sig = make_grid(problem.schedule, grid, 10)  # only the endpoints and the last positive σ matter
    for tol in tols:
        options = {"rtol": tol, "atol": tol, "variable": variable}
        t0 = time.perf_counter()
        sol = solve(problem.field(), to_xbar(problem.x_T, float(sig[0])), sig, method, solver_options=options)
        elapsed = time.perf_counter() - t0
        row: dict[str, Any] = {
            "problem": problem.name,
            "grid": grid,
            "label": f"{method}[{variable}]",
            "solver": method,
            "options": options,
            "tol": tol,
            "variable": variable,
            "nfe": sol.nfe,
            "decode_error": rms(sol.xbar, refs.decode(float(sig[0]))),
            "decode_seconds": elapsed,
        }
        if problem.x0 is not None:
            up = sig.flip(0)
            enc = solve(problem.field(), problem.x0, up, method, solver_options=options)
            row["encode_nfe"] = enc.nfe
            row["encode_error"] = rms(from_xbar(enc.xbar, float(up[-1])), refs.encode(float(up[-1])))
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# summaries


def fit_slope(rows: list[dict[str, Any]], key: str = "decode_error", nfe_key: str = "nfe", min_nfe: int = 10) -> float:
    pts = [(r[nfe_key], r[key]) for r in rows if r.get(key) is not None and r[nfe_key] >= min_nfe and r[key] > 0]
    if len(pts) < 2:
        return float("nan")
    x = np.log([p[0] for p in pts])
    y = np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def at_budget(rows: list[dict[str, Any]], budget: int, key: str) -> dict[str, Any] | None:
    fits = [r for r in rows if r["nfe"] <= budget and r.get(key) is not None]
    return max(fits, key=lambda r: r["nfe"]) if fits else None


def fmt(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.2e}"


def markdown_tables(record: dict[str, Any], problems: list[str], grids: list[str]) -> str:
    results = record["results"]
    out = []
    floors = record.get("floors", {})
    if floors:
        out.append("\n**floor** — error of one first-order step σ_min → 0 from the exact x̄(σ_min)\n")
        out.append("| problem | " + " | ".join(grids) + " |")
        out.append("|---|" + "---|" * len(grids))
        for prob in problems:
            out.append(f"| {prob} | " + " | ".join(fmt(floors.get(prob, {}).get(g)) for g in grids) + " |")
    for grid in grids:
        for key, what in (("decode_error", "decode"), ("encode_error", "encode"), ("roundtrip_error", "round trip")):
            for prob in problems:
                rows = [r for r in results if r["problem"] == prob and r["grid"] == grid and "tol" not in r]
                labels = list(dict.fromkeys(r["label"] for r in rows if r.get(key) is not None))
                if not labels:
                    continue
                out.append(f"\n**{what}, {prob}, grid {grid!r}** — RMS error per dimension (NFE actually used)\n")
                out.append("| solver | " + " | ".join(f"NFE ≤ {b}" for b in TABLE_NFE) + " | slope |")
                out.append("|---|" + "---|" * (len(TABLE_NFE) + 1))
                for label in labels:
                    mine = [r for r in rows if r["label"] == label]
                    cells = []
                    for b in TABLE_NFE:
                        r = at_budget(mine, b, key)
                        cells.append("—" if r is None else f"{fmt(r[key])} ({r['nfe']})")
                    out.append(f"| {label} | " + " | ".join(cells) + f" | {fit_slope(mine, key):.2f} |")
    adaptive = [r for r in results if "tol" in r]
    if adaptive:
        for grid in grids:
            for prob in problems:
                rows = [r for r in adaptive if r["problem"] == prob and r["grid"] == grid]
                if not rows:
                    continue
                out.append(f"\n**adaptive, {prob}, grid {grid!r}** — decode NFE / RMS error (encode NFE / error)\n")
                tols = sorted({r["tol"] for r in rows}, reverse=True)
                out.append("| method [variable] | " + " | ".join(f"tol {t:g}" for t in tols) + " |")
                out.append("|---|" + "---|" * len(tols))
                for label in dict.fromkeys(r["label"] for r in rows):
                    cells = []
                    for t in tols:
                        r = next((r for r in rows if r["label"] == label and r["tol"] == t), None)
                        if r is None:
                            cells.append("—")
                            continue
                        cell = f"{r['nfe']} / {fmt(r['decode_error'])}"
                        if "encode_nfe" in r:
                            cell += f" ({r['encode_nfe']} / {fmt(r['encode_error'])})"
                        cells.append(cell)
                    out.append(f"| {label} | " + " | ".join(cells) + " |")
    if adaptive:
        out.append(adaptive_reach_table(adaptive, problems, grids[0]))
    return "\n".join(out) + "\n"


def adaptive_reach_table(rows: list[dict[str, Any]], problems: list[str], grid: str) -> str:
    """NFE each adaptive method needs to reach RMS 1e-3 and 1e-5, in log σ and in σ (smallest NFE over
    the tolerances whose error is below the threshold; '>' the largest NFE tried when none is)."""
    out = [
        f"\n**adaptive, log σ against σ, grid {grid!r}** — NFE to reach an RMS error of 1e-3 / 1e-5\n",
        "| problem | method | direction | log σ: 1e-3 | σ: 1e-3 | log σ: 1e-5 | σ: 1e-5 |",
        "|---|---|---|---|---|---|---|",
    ]
    for prob in problems:
        methods = dict.fromkeys(r["solver"] for r in rows if r["problem"] == prob and r["grid"] == grid)
        for method in methods:
            for direction, key, nfe_key in (
                ("decode", "decode_error", "nfe"),
                ("encode", "encode_error", "encode_nfe"),
            ):
                cells = []
                for threshold in (1e-3, 1e-5):
                    for variable in ("log", "sigma"):
                        mine = [
                            r
                            for r in rows
                            if (r["problem"], r["grid"], r["solver"], r["variable"]) == (prob, grid, method, variable)
                            and r.get(key) is not None
                        ]
                        ok = [r[nfe_key] for r in mine if r[key] <= threshold]
                        cells.append(str(min(ok)) if ok else (f"> {max(r[nfe_key] for r in mine)}" if mine else "—"))
                out.append(f"| {prob} | {method} | {direction} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _style(label: str, name: str) -> tuple[str, str]:
    """(line style, marker) by solver family."""
    module = type(ddim_ode.get_solver(name)).__module__.rsplit(".", 1)[-1]
    return {
        "rk": ("-", "o"),
        "exponential": ("--", "^"),
        "multistep": ("-.", "D"),
        "reversible": (":", "v"),
        "stochastic": ("-", "o"),
        "adaptive": ("--", "s"),
    }.get(module, ("-", "o"))


def plot(record: dict[str, Any], problems: list[str], grid: str, key: str, path: Path, title: str) -> None:
    """Rows: problems; columns: fixed-grid solvers, adaptive solvers. Legends carry fitted slopes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = record["results"]
    fig, axes = plt.subplots(len(problems), 2, figsize=(17, 5.8 * len(problems)), squeeze=False)
    for row, prob in enumerate(problems):
        floor = record.get("floors", {}).get(prob, {}).get(grid) if key == "decode_error" else None
        for col, adaptive in enumerate((False, True)):
            ax = axes[row][col]
            rows = [
                r
                for r in results
                if r["problem"] == prob and r["grid"] == grid and r.get(key) is not None and ("tol" in r) == adaptive
            ]
            labels = [lab for lab in dict.fromkeys(r["label"] for r in rows) if lab not in ALIASES]
            cmap = plt.get_cmap("tab20" if len(labels) > 10 else "tab10")
            for i, label in enumerate(labels):
                mine = sorted((r for r in rows if r["label"] == label), key=lambda r: r["nfe"])
                nfe_key = "encode_nfe" if key == "encode_error" and adaptive else "nfe"
                mine = sorted(mine, key=lambda r: r[nfe_key])
                ls, marker = _style(label, mine[0]["solver"])
                name = label + (" (= ddim = dpm-solver-1)" if label == "euler" else "")
                ax.loglog(
                    [r[nfe_key] for r in mine],
                    [max(r[key], 1e-17) for r in mine],
                    ls=ls,
                    marker=marker,
                    color=cmap(i % cmap.N),
                    ms=4,
                    lw=1.3,
                    label=f"{name}: slope {fit_slope(mine, key, nfe_key):.2f}",
                )
            if floor is not None and not adaptive:
                ax.axhline(floor, color="0.4", lw=0.8, ls=(0, (6, 4)), label="floor: 1st-order step σ_min → 0")
            ax.set_xlabel("NFE")
            ax.set_ylabel("RMS error per dimension")
            kind = "adaptive (tol 1e-2 … 1e-6)" if adaptive else "fixed grid"
            ax.set_title(f"{prob}, grid {grid!r}: {kind}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(
                fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="fitted over NFE ≥ 10", title_fontsize=7
            )
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def environment(dtype: torch.dtype) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "dtype": str(dtype),
        "threads": torch.get_num_threads(),
        "ddim_ode": ddim_ode.__version__,
    }


def final_step_floor(problem: Problem, refs: References, grid: str) -> float:
    """Error of one first-order step σ_min → 0 taken from the exact x̄(σ_min): the accuracy limit of
    every solver whose step to σ = 0 is first order (all but RK with ``final_step="full"``)."""
    sig = make_grid(problem.schedule, grid, 10)
    sigma0, sigma_min = float(sig[0]), float(sig[-2])
    xbar, _ = analytic.reference_solve(
        refs.field, to_xbar(problem.x_T, sigma0), sigma0, sigma_min, rtol=1e-10, atol=1e-10
    )
    last = xbar - sigma_min * refs.field(xbar, sigma_min)
    return rms(last, refs.decode(sigma0))


def run(
    problems: list[Problem],
    grids: list[str],
    budgets: tuple[int, ...],
    tolerances: tuple[float, ...],
    adaptive: tuple[str, ...],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every solver on every problem and grid; returns the JSON-ready record."""
    results: list[dict[str, Any]] = []
    refs_nfe: dict[str, dict[str, int]] = {}
    floors: dict[str, dict[str, float]] = {}
    for problem in problems:
        refs = References(problem)
        for grid in grids:
            floors.setdefault(problem.name, {})[grid] = final_step_floor(problem, refs, grid)
            for label, name, options in fixed_grid_specs():
                t0 = time.perf_counter()
                rows = run_fixed(problem, refs, grid, label, name, options, budgets)
                results += rows
                log(f"{problem.name:10s} {grid:8s} {label:28s} {len(rows):2d} runs  {time.perf_counter() - t0:6.1f}s")
            for method in adaptive:
                for variable in ("log", "sigma"):
                    t0 = time.perf_counter()
                    results += run_adaptive(problem, refs, grid, method, variable, tolerances)
                    log(f"{problem.name:10s} {grid:8s} {method}[{variable}]  {time.perf_counter() - t0:6.1f}s")
        refs_nfe[problem.name] = refs.nfe
    return {
        "problems": {p.name: p.meta for p in problems},
        "reference": {"method": "scipy DOP853", "rtol": 1e-10, "atol": 1e-10, "nfe": refs_nfe},
        "floors": floors,
        "grids": grids,
        "results": results,
    }


# ---------------------------------------------------------------------------------------------
# measured orders (--orders): the numbers behind tests/test_solvers.py


ORDER_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("heun", {"final_step": "full"}),
    ("dpm-solver++2m", {"warmup": "singlestep"}),
    ("dpm-solver++3m", {"warmup": "singlestep"}),
    ("dpm-solver++3m", {"warmup": "singlestep", "third_order_term": "published"}),
    ("plms", {"warmup": "singlestep"}),
    ("unipc", {"order": 1}),
    ("unipc", {"order": 3}),
)


def _geometric(hi: float, lo: float, n: int) -> Tensor:
    return torch.exp(torch.linspace(math.log(hi), math.log(lo), n + 1, dtype=torch.float64))


def measure_orders() -> dict[str, Any]:
    """Observed orders: exact Gaussian N((0.5, −1), 0.5²) between σ = 2 and 0.05 (geometric grid,
    n = 128/256/512, decode and encode) and a 3-mode 2-D mixture between σ = 5 and 0.05 against
    a DOP853 reference at 1e-13 (n = 64/128/256, decode)."""
    schedule = DiscreteSchedule.linear()
    gauss = analytic.Gaussian(torch.tensor([0.5, -1.0]), 0.5)
    mixture = analytic.GaussianMixture(
        torch.tensor([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]]),
        torch.tensor([0.3, 0.4, 0.5]) ** 2,
        torch.tensor([0.3, 0.3, 0.4]),
    )
    z = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    zm = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    mix_field = ProbabilityFlowODE(mixture, schedule)
    mix_ref, _ = analytic.reference_solve(mix_field, zm * math.sqrt(25.5), 5.0, 0.05, rtol=1e-13, atol=1e-13)
    specs = [(s.name, {}) for s in ddim_ode.list_solvers() if not s.adaptive and not s.stochastic]
    rows = []
    for name, options in specs + list(ORDER_VARIANTS):
        row: dict[str, Any] = {
            "solver": name,
            "options": options,
            "declared": ddim_ode.get_solver(name, **options).order,
        }
        for direction in ("decode", "encode"):
            errs = []
            for n in (128, 256, 512):
                sig = _geometric(2.0, 0.05, n)
                sig = sig.flip(0) if direction == "encode" else sig
                a, b = float(sig[0]), float(sig[-1])
                xbar = gauss.means[0] + z * math.sqrt(0.25 + a * a)
                sol = solve(ProbabilityFlowODE(gauss, schedule), xbar, sig, name, solver_options=options)
                errs.append(rms(sol.xbar, gauss.solution(xbar, a, b)))
            row[f"gaussian_{direction}_errors"] = errs
            row[f"gaussian_{direction}_order"] = math.log2(errs[1] / errs[2])
        errs = []
        for n in (64, 128, 256):
            sol = solve(mix_field, zm * math.sqrt(25.5), _geometric(5.0, 0.05, n), name, solver_options=options)
            errs.append(rms(sol.xbar, mix_ref))
        row["mixture_errors"] = errs
        row["mixture_order"] = math.log2(errs[1] / errs[2])
        rows.append(row)
        print(f"{name:16s} {options} {row['gaussian_decode_order']:.2f} {row['mixture_order']:.2f}")
    return {"orders": rows}


def orders_table(rows: list[dict[str, Any]]) -> str:
    out = ["| solver | declared order | Gaussian decode | Gaussian encode | mixture decode |", "|---|---|---|---|---|"]
    for r in rows:
        label = r["solver"] + "".join(f" [{k}={v}]" for k, v in r["options"].items())
        out.append(
            f"| {label} | {r['declared']} | {r['gaussian_decode_order']:.2f} | {r['gaussian_encode_order']:.2f} "
            f"| {r['mixture_order']:.2f} |"
        )
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# exact inversion (--inversion)


def measure_inversion() -> dict[str, Any]:
    """Round-trip MSE per dimension of decode(encode(x0)) and the spread of the encoded latent, for
    the reversible solvers and two ordinary ones, on unit-scale 3-D data through the ε-network path
    (DDPM linear schedule), float32 and float64, three grids, n = 1 … 200."""
    schedule = DiscreteSchedule.linear()
    data = analytic.GaussianMixture(torch.tensor([[1.0, 0.0, -1.0], [-1.0, 0.5, 1.0]]), 0.5**2)
    model = data.as_eps_model(schedule)
    rows = []
    for name in ("belm", "reversible-heun", "euler", "dpm-solver++2m"):
        for grid in ("uniform", "karras", "logsnr"):
            for dtype in (torch.float64, torch.float32):
                for n in (1, 2, 5, 10, 20, 50, 100, 200):
                    x0 = data.sample(256, generator=torch.Generator().manual_seed(0), dtype=dtype)
                    z = ddim_ode.encode(x0, name, n, model=model, schedule=schedule, grid=grid)
                    back = ddim_ode.decode(z, name, n, model=model, schedule=schedule, grid=grid)
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
        print(name)
    return {"inversion": rows}


def inversion_table(rows: list[dict[str, Any]]) -> str:
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="ring only, karras grid, NFE {5,10,20,50}, 2 tolerances")
    ap.add_argument("--out", default="out/benchmarks", help="output directory (results/ and img/ are created)")
    ap.add_argument("--grids", default=None, help="comma-separated grids (default karras,uniform,logsnr)")
    ap.add_argument("--problems", default=None, help="comma-separated problems (default ring,mixture64)")
    ap.add_argument("--orders", action="store_true", help="only measure convergence orders (solvers_orders.*)")
    ap.add_argument("--inversion", action="store_true", help="only measure round trips (solvers_inversion.*)")
    ap.add_argument("--render", default=None, metavar="JSON", help="only redraw tables and plots from a solvers.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/solvers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    if args.orders or args.inversion:
        stem, record = ("orders", measure_orders()) if args.orders else ("inversion", measure_inversion())
        table = orders_table(record["orders"]) if args.orders else inversion_table(record["inversion"])
        record |= {"environment": environment(torch.float64), "command": command, "seconds": time.perf_counter() - t0}
        (out / "results" / f"solvers_{stem}.json").write_text(json.dumps(record, indent=1))
        (out / "results" / f"solvers_{stem}.md").write_text(f"Command: `{command}`\n\n" + table)
        print(table)
        return
    if args.render:
        record = json.loads(Path(args.render).read_text())
        grids, names = record["grids"], list(record["problems"])
        command = record["command"]
    else:
        grids = (args.grids or ("karras" if args.quick else "karras,uniform,logsnr")).split(",")
        names = (args.problems or ("ring" if args.quick else "ring,mixture64")).split(",")
        budgets = TABLE_NFE if args.quick else CURVE_NFE
        tolerances = (1e-3, 1e-5) if args.quick else TOLERANCES
        adaptive = ("dopri5", "bosh3") if args.quick else ADAPTIVE
        record = run(builtin_problems(names, args.quick), grids, budgets, tolerances, adaptive)
        record |= {"environment": environment(torch.float64), "command": command, "seconds": time.perf_counter() - t0}
        (out / "results" / "solvers.json").write_text(json.dumps(record, indent=1))
    tables = markdown_tables(record, names, grids)
    (out / "results" / "solvers_tables.md").write_text(f"Command: `{command}`\n" + tables)
    for grid in grids:
        suffix = "" if grid == grids[0] else f"_{grid}"
        plot(
            record,
            names,
            grid,
            "decode_error",
            out / "img" / f"solvers_decode{suffix}.png",
            "decode: RMS error of x0 against a float64 reference, DDPM linear schedule",
        )
        plot(
            record,
            names,
            grid,
            "encode_error",
            out / "img" / f"solvers_encode{suffix}.png",
            "encode: RMS error of the VP latent x_T against a float64 reference, DDPM linear schedule",
        )
    print(tables)
    print(f"wrote {out}/results/solvers.json, solvers_tables.md and img/solvers_*.png in {record['seconds']:.0f}s")


if __name__ == "__main__":
    main()

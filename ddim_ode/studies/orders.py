"""Measured convergence orders of every fixed-grid solver (the numbers behind ``tests/test_solvers.py``).

Two problems, both in float64 on the DDPM linear schedule, geometric σ grids:

* the exact Gaussian N((0.5, −1), 0.5²), whose flow is known in closed form
  (:meth:`ddim_ode.analytic.Gaussian.solution`), between σ = 2 and 0.05, decoding and encoding;
* a 3-mode 2-D mixture between σ = 5 and 0.05, decoding, against a DOP853 reference at
  rtol = atol = 1e-13.

The order is log₂ of the ratio of the errors at the two largest n (each twice the one before).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..analytic import Gaussian, GaussianMixture, reference_solve
from ..core import solve
from ..field import ProbabilityFlowODE
from ..schedules import DiscreteSchedule
from ..solvers import get_solver, list_solvers
from .common import StudyRun, check_solvers, environment, finish, progress, rms, write_markdown

__all__ = ["orders_study", "orders_table", "VARIANTS"]

#: option variants whose order differs from the default's
VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("heun", {"final_step": "full"}),
    ("dpm-solver++2m", {"warmup": "singlestep"}),
    ("dpm-solver++3m", {"warmup": "singlestep"}),
    ("dpm-solver++3m", {"warmup": "singlestep", "third_order_term": "published"}),
    ("plms", {"warmup": "singlestep"}),
    ("unipc", {"order": 1}),
    ("unipc", {"order": 3}),
)
#: (Gaussian n, mixture n): full and quick
STEPS = {False: ((128, 256, 512), (64, 128, 256)), True: ((32, 64, 128), (16, 32, 64))}
QUICK_SOLVERS = ("euler", "heun", "rk4", "dpm-solver++2m")


def _geometric(hi: float, lo: float, n: int) -> Tensor:
    return torch.exp(torch.linspace(math.log(hi), math.log(lo), n + 1, dtype=torch.float64))


class _Problems:
    """The exact Gaussian with its starting points, and the mixture with its reference solution."""

    def __init__(self) -> None:
        self.schedule = DiscreteSchedule.linear()
        self.gauss = Gaussian(torch.tensor([0.5, -1.0]), 0.5)
        mixture = GaussianMixture(
            torch.tensor([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]]),
            torch.tensor([0.3, 0.4, 0.5]) ** 2,
            torch.tensor([0.3, 0.3, 0.4]),
        )
        self.z = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        self.mix_start = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        self.mix_start = self.mix_start * math.sqrt(25.5)
        self.mix_field = ProbabilityFlowODE(mixture, self.schedule)
        self.mix_ref, _ = reference_solve(self.mix_field, self.mix_start, 5.0, 0.05, rtol=1e-13, atol=1e-13)

    def gaussian_error(self, name: str, options: dict[str, Any], n: int, direction: str) -> float:
        sig = _geometric(2.0, 0.05, n)
        sig = sig.flip(0) if direction == "encode" else sig
        a, b = float(sig[0]), float(sig[-1])
        xbar = self.gauss.means[0] + self.z * math.sqrt(0.25 + a * a)
        sol = solve(ProbabilityFlowODE(self.gauss, self.schedule), xbar, sig, name, solver_options=options)
        return rms(sol.xbar, self.gauss.solution(xbar, a, b))

    def mixture_error(self, name: str, options: dict[str, Any], n: int) -> float:
        sol = solve(self.mix_field, self.mix_start, _geometric(5.0, 0.05, n), name, solver_options=options)
        return rms(sol.xbar, self.mix_ref)


def _measure(problems: _Problems, name: str, options: dict[str, Any], quick: bool) -> dict[str, Any]:
    gauss_ns, mix_ns = STEPS[quick]
    row: dict[str, Any] = {"solver": name, "options": options, "declared": get_solver(name, **options).order}
    for direction in ("decode", "encode"):
        errs = [problems.gaussian_error(name, options, n, direction) for n in gauss_ns]
        row[f"gaussian_{direction}_errors"] = errs
        row[f"gaussian_{direction}_order"] = math.log2(errs[1] / errs[2])
    errs = [problems.mixture_error(name, options, n) for n in mix_ns]
    row["mixture_errors"] = errs
    row["mixture_order"] = math.log2(errs[1] / errs[2])
    return row


def orders_study(solvers: Sequence[str] | None = None, *, run: StudyRun | None = None) -> dict[str, Any]:
    """Observed order of each solver (default: every deterministic fixed-grid one and :data:`VARIANTS`);
    writes ``orders.json`` and ``orders.md``. ``quick``: four solvers, n four times smaller."""
    run = run or StudyRun()
    if solvers is not None:
        specs = [(n, {}) for n in check_solvers(solvers)]
    elif run.quick:
        specs = [(n, {}) for n in QUICK_SOLVERS]
    else:
        specs = [(s.name, {}) for s in list_solvers() if not s.adaptive and not s.stochastic] + list(VARIANTS)
    problems = _Problems()
    rows = [_measure(problems, n, o, run.quick) for n, o in progress(specs, len(specs), "orders", run.show_progress)]
    gauss_ns, mix_ns = STEPS[run.quick]
    doc = {
        "study": "orders",
        "settings": {"gaussian_steps": list(gauss_ns), "mixture_steps": list(mix_ns), "quick": run.quick},
        "environment": environment("cpu", torch.float64),
        "results": rows,
    }
    return finish(doc, run.folder("orders"), write_orders_table)


def orders_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: declared and measured orders, one row per solver and options."""
    out = ["| solver | declared order | Gaussian decode | Gaussian encode | mixture decode |", "|---|---|---|---|---|"]
    for r in rows:
        label = r["solver"] + "".join(f" [{k}={v}]" for k, v in r["options"].items())
        out.append(
            f"| {label} | {r['declared']} | {r['gaussian_decode_order']:.2f} | {r['gaussian_encode_order']:.2f} "
            f"| {r['mixture_order']:.2f} |"
        )
    return "\n".join(out) + "\n"


def write_orders_table(doc: dict[str, Any], out_dir: str | Path) -> Path:
    """``orders.md`` from an orders JSON."""
    return write_markdown(Path(out_dir) / "orders.md", orders_table(doc["results"]))

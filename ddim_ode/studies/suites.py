"""Configurations of the accuracy study: which solvers it runs, at which step counts, on what.

A :class:`Suite` is one complete configuration, data rather than code: problems with their sizes
and seeds, grids, the rule that picks step counts (:class:`NfeTargets` or :class:`NfeBudgets`), the
solvers (:class:`SolverSpec`: registry name, options, label), the adaptive tolerances and integration
variables, the directions, and whether to measure the first-order floor. :data:`SUITES` holds each
suite with its quick version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from ..core import solve
from ..field import ProbabilityFlowODE
from ..grids import make_grid
from ..schedules import Schedule
from ..solvers import get_solver, list_solvers
from .problems import PROBLEMS

__all__ = ["DIRECTIONS", "SolverSpec", "NfeTargets", "NfeBudgets", "Suite", "OVERVIEW", "COMPARISON", "SUITES"]

DIRECTIONS = ("decode", "encode", "roundtrip")
#: steps of the grid whose endpoints (and last positive σ) an adaptive solver integrates between
ADAPTIVE_GRID_STEPS = 10


@dataclass(frozen=True)
class SolverSpec:
    """A solver as the study runs it: registry name, constructor options, and its label in tables and plots."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def title(self) -> str:
        """The label, or the registry name when there is none."""
        return self.label or self.name


@dataclass(frozen=True)
class NfeTargets:
    """n = round(NFE / NFE-per-step) for each target NFE (a solver whose last step is a first-order
    one uses a stage or two fewer)."""

    nfes: tuple[int, ...]

    def steps(self, spec: SolverSpec, schedule: Schedule, grid: str) -> list[int]:
        """The step counts of ``spec`` (the same on every grid)."""
        per = get_solver(spec.name, **spec.options).nfe_per_step
        return sorted({max(1, int(round(nfe / per))) for nfe in self.nfes})


class _ZeroModel:
    """ε = 0: the NFE of a fixed-grid solve does not depend on the field's values."""

    def eps_xbar(self, xbar: Tensor, sigma: float) -> Tensor:
        return torch.zeros_like(xbar)


@dataclass(frozen=True)
class NfeBudgets:
    """For each budget, the largest n whose NFE (counted on a zero field) fits it."""

    nfes: tuple[int, ...]

    def steps(self, spec: SolverSpec, schedule: Schedule, grid: str) -> list[int]:
        """The step counts of ``spec`` on ``grid``: one per budget that some n fits, without repeats."""
        zero = ProbabilityFlowODE(_ZeroModel(), schedule)
        x = torch.zeros(1, 1, dtype=torch.float64)
        counts: dict[int, int] = {}
        chosen: set[int] = set()
        for budget in self.nfes:
            best = None
            for n in range(1, budget + 1):
                if n not in counts:
                    sig = make_grid(schedule, grid, n)
                    counts[n] = solve(zero, x, sig, spec.name, solver_options=spec.options).nfe
                if counts[n] <= budget:
                    best = n
            if best is not None:
                chosen.add(best)
        return sorted(chosen)


@dataclass(frozen=True)
class Suite:
    """One complete configuration of the study.

    Attributes:
        problems: the problems run by default (names from :data:`.problems.PROBLEMS`).
        nums: samples per problem, as (name, num) pairs; any other problem gets ``default_num``.
        data_seed, noise_seed: seeds of the data samples and of the noise.
        grids: σ grids (the first one is the one the overview plot shows).
        steps: the rule that picks each fixed-grid solver's step counts.
        exclude: registry solvers left out by default (identical to another one).
        variants: solvers with non-default options run next to the registry's.
        adaptive: adaptive solvers run by default.
        variables: integration variables of the adaptive solvers (``log`` and/or ``sigma``).
        rtols, atol_divisor: adaptive tolerances, atol = rtol / ``atol_divisor``.
        directions: among :data:`DIRECTIONS`.
        floors: also measure the first-order floor (one Euler step σ_min → 0 from the exact x̄(σ_min)).
    """

    name: str
    problems: tuple[str, ...]
    nums: tuple[tuple[str, int], ...]
    default_num: int
    data_seed: int
    noise_seed: int
    grids: tuple[str, ...]
    steps: NfeTargets | NfeBudgets
    exclude: tuple[str, ...] = ()
    variants: tuple[SolverSpec, ...] = ()
    adaptive: tuple[str, ...] = ()
    variables: tuple[str, ...] = ("log", "sigma")
    rtols: tuple[float, ...] = ()
    atol_divisor: float = 1.0
    directions: tuple[str, ...] = ("decode", "encode")
    floors: bool = False

    def num(self, problem: str) -> int:
        """Samples of ``problem``."""
        return dict(self.nums).get(problem, self.default_num)

    def fixed_specs(self, solvers: Sequence[str] | None) -> list[SolverSpec]:
        """The fixed-grid solvers: ``solvers`` (the deterministic ones among them), or the registry's
        deterministic ones less :attr:`exclude`, plus :attr:`variants`."""
        if solvers is not None:
            return [SolverSpec(n) for n in solvers if not get_solver(n).adaptive and not get_solver(n).stochastic]
        names = [s.name for s in list_solvers() if not s.adaptive and not s.stochastic and s.name not in self.exclude]
        return [SolverSpec(n) for n in names] + list(self.variants)

    def adaptive_specs(self, solvers: Sequence[str] | None) -> list[SolverSpec]:
        """One spec per adaptive solver, integration variable and tolerance."""
        names = [n for n in solvers if get_solver(n).adaptive] if solvers is not None else list(self.adaptive)
        return [
            SolverSpec(m, {"rtol": r, "atol": r / self.atol_divisor, "variable": v}, f"{m}[{v}]")
            for m in names
            for v in self.variables
            for r in self.rtols
        ]


OVERVIEW = Suite(
    name="overview",
    problems=PROBLEMS,
    nums=(),
    default_num=64,
    data_seed=0,
    noise_seed=1,
    grids=("karras",),
    steps=NfeTargets((3, 5, 10, 20, 50)),
    exclude=("ddim",),  # = euler
    adaptive=("dopri5", "bosh3"),
    variables=("sigma",),
    rtols=(1e-2, 1e-3, 1e-4),
    atol_divisor=10.0,
)
COMPARISON = Suite(
    name="comparison",
    problems=("ring", "mixture64"),
    nums=(("ring", 256), ("mixture64", 64)),
    default_num=64,
    data_seed=1,
    noise_seed=0,
    grids=("karras", "uniform", "logsnr"),
    steps=NfeBudgets((3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 70, 100)),
    variants=(
        SolverSpec("heun", {"final_step": "full"}, "heun[final=full]"),
        SolverSpec("dpm-solver++3m", {"third_order_term": "published"}, "dpm-solver++3m[published]"),
    ),
    adaptive=("dopri5", "bosh3", "dopri8", "adaptive_heun"),
    rtols=(1e-2, 1e-3, 1e-4, 1e-5, 1e-6),
    directions=DIRECTIONS,
    floors=True,
)
#: each suite and its ``quick`` version (seconds on a CPU)
SUITES: dict[str, tuple[Suite, Suite]] = {
    "overview": (
        OVERVIEW,
        replace(
            OVERVIEW,
            problems=("ring",),
            default_num=16,
            steps=NfeTargets((5, 10, 20)),
            rtols=(1e-3,),
            directions=("decode",),
        ),
    ),
    "comparison": (
        COMPARISON,
        replace(
            COMPARISON,
            problems=("ring",),
            nums=(("ring", 64), ("mixture64", 16)),
            default_num=16,
            grids=("karras",),
            steps=NfeBudgets((5, 10, 20, 50)),
            adaptive=("dopri5", "bosh3"),
            rtols=(1e-3, 1e-5),
        ),
    ),
}

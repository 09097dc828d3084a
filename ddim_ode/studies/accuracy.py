"""Accuracy versus NFE: every solver's error against a float64 reference, decoding and encoding.

From the same starting points each solver integrates along a grid with n steps, and its result is
compared with scipy's DOP853 solution of the same ODE (float64; rtol = atol = 1e-10 on the exact
mixtures, 1e-8 on the network, see :mod:`.problems`):

* decode: x̄ at σ = 0 (= x0) from the noise x_T at the grid's first σ; RMS per dimension, max-abs
  and the median over samples of each sample's RMS (insensitive to a few samples changing mode);
* encode: the latent at the top of the grid from the data x0; RMS per dimension in VP scale
  (x_T = x̄/√(1 + σ_max²)), RMS and max-abs in x̄;
* round trip: decode(encode(x0)) against x0 with the same solver and grid (a reversible solver
  carries its state across), for the fixed-grid solvers.

Fixed-grid solvers run at the step counts the suite's rule picks; adaptive ones at each tolerance and
integration variable, between the grid's endpoints. A suite (:mod:`.suites`) is one complete
configuration: ``overview`` (the default: the two mixtures and the network, Karras grid) or
``comparison`` (every solver and option variant on the mixtures, three grids, NFE budgets, adaptive
solvers in log σ and in σ, round trips and the first-order floor).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from ..core import from_xbar, solve, to_xbar
from ..grids import make_grid
from ..solvers import get_solver
from .accuracy_report import render_accuracy
from .common import StudyRun, check_solvers, environment, finish, fit_order, progress, rms
from .problems import Problem, References, make_problem
from .suites import ADAPTIVE_GRID_STEPS, DIRECTIONS, SUITES, SolverSpec, Suite

__all__ = ["accuracy_study", "max_abs", "median_sample_error"]


def max_abs(a: Tensor, b: Tensor) -> float:
    """Largest absolute difference, in float64."""
    return float((a.double() - b.double()).abs().max())


def median_sample_error(a: Tensor, b: Tensor) -> float:
    """Median over samples of each sample's RMS error."""
    per = ((a.double() - b.double()) ** 2).reshape(a.shape[0], -1).mean(1).sqrt()
    return float(per.median())


def accuracy_study(
    problems: Sequence[str | Problem] | None = None,
    *,
    suite: str = "overview",
    solvers: Sequence[str] | None = None,
    grids: Sequence[str] | None = None,
    nfes: Sequence[int] | None = None,
    adaptive_rtols: Sequence[float] | None = None,
    directions: Sequence[str] | None = None,
    num: int | None = None,
    run: StudyRun | None = None,
) -> dict[str, Any]:
    """Error against NFE of every solver on every problem and grid; writes ``accuracy.json``, its
    plots (``accuracy.png``: problems × directions on the first grid; ``accuracy_decode[_GRID].png``,
    ``accuracy_encode[_GRID].png``: fixed-grid and adaptive solvers per grid) and ``accuracy_tables.md``.

    Args:
        problems: names from :data:`.problems.PROBLEMS` or :class:`.problems.Problem` objects
            (default: the suite's).
        suite: ``"overview"`` or ``"comparison"`` (:data:`.suites.SUITES`); the arguments below
            override it.
        solvers: solver names (default: the suite's; stochastic solvers are skipped, adaptive ones
            run at the suite's tolerances).
        grids, nfes, adaptive_rtols, directions, num: grids, NFE targets or budgets, adaptive
            solvers' rtols, directions (:data:`.suites.DIRECTIONS`) and samples per problem.
        run: output folder, device, seed (the data's; the noise's is seed + 1) and ``quick``, the
            suite's small version.
    """
    run = run or StudyRun()
    cfg = _configure(suite, run, grids, nfes, adaptive_rtols, directions)
    dev = run.torch_device()
    names = check_solvers(solvers) if solvers is not None else None
    fixed, adaptive = cfg.fixed_specs(names), cfg.adaptive_specs(names)
    probs = _problems(cfg, problems, num, dev)
    results, references, floors = _measure(probs, cfg, fixed, adaptive, run.show_progress)
    doc = {
        "study": "accuracy",
        "settings": _settings(cfg, probs, fixed, adaptive, run.quick),
        "environment": environment(dev, torch.float64),
        "references": references,
        "floors": floors,
        "results": results,
        "orders": _orders(results),
    }
    return finish(doc, run.folder("accuracy"), render_accuracy)


def _configure(
    suite: str,
    run: StudyRun,
    grids: Sequence[str] | None,
    nfes: Sequence[int] | None,
    adaptive_rtols: Sequence[float] | None,
    directions: Sequence[str] | None,
) -> Suite:
    """The suite (its quick version with ``run.quick``) with the caller's overrides."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; allowed: {', '.join(SUITES)}")
    cfg = SUITES[suite][run.quick]
    if run.seed is not None:
        cfg = replace(cfg, data_seed=run.seed, noise_seed=run.seed + 1)
    if grids is not None:
        cfg = replace(cfg, grids=tuple(grids))
    if nfes is not None:
        cfg = replace(cfg, steps=replace(cfg.steps, nfes=tuple(nfes)))
    if adaptive_rtols is not None:
        cfg = replace(cfg, rtols=tuple(adaptive_rtols))
    if directions is not None:
        for d in directions:
            if d not in DIRECTIONS:
                raise ValueError(f"unknown direction {d!r}; allowed: {', '.join(DIRECTIONS)}")
        if "roundtrip" in directions and "encode" not in directions:
            raise ValueError("direction 'roundtrip' needs 'encode' too")
        cfg = replace(cfg, directions=tuple(directions))
    return cfg


def _problems(
    cfg: Suite, problems: Sequence[str | Problem] | None, num: int | None, dev: torch.device
) -> list[Problem]:
    """The problems asked for (the suite's by default), built with the suite's sizes and seeds."""
    out = []
    for p in problems if problems is not None else cfg.problems:
        if isinstance(p, Problem):
            out.append(p)
            continue
        n = num if num is not None else cfg.num(p)
        out.append(make_problem(p, n, data_seed=cfg.data_seed, noise_seed=cfg.noise_seed, device=dev))
    return out


def _measure(
    problems: list[Problem], cfg: Suite, fixed: list[SolverSpec], adaptive: list[SolverSpec], show: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, float]]]:
    """(result rows, reference solves, floors) over every problem and grid."""
    results: list[dict[str, Any]] = []
    references: list[dict[str, Any]] = []
    floors: dict[str, dict[str, float]] = {}
    jobs = [(p, g) for p in problems for g in cfg.grids]
    refs = {p.name: References(p) for p in problems}
    for problem, grid in progress(jobs, len(jobs), "accuracy", show):
        ref = refs[problem.name]
        if cfg.floors:
            floors.setdefault(problem.name, {})[grid] = _floor(ref, grid)
        results += _fixed_rows(ref, grid, fixed, cfg)
        results += _adaptive_rows(ref, grid, adaptive, cfg)
    for ref in refs.values():
        references += ref.records
    return results, references, floors


def _fixed_rows(refs: References, grid: str, specs: list[SolverSpec], cfg: Suite) -> list[dict[str, Any]]:
    schedule = refs.problem.schedule
    rows = []
    for spec in specs:
        for n in cfg.steps.steps(spec, schedule, grid):
            row = {"n": n, **_run(refs, make_grid(schedule, grid, n), spec, cfg.directions)}
            rows.append(_head(refs.problem, grid, spec) | row)
    return rows


def _adaptive_rows(refs: References, grid: str, specs: list[SolverSpec], cfg: Suite) -> list[dict[str, Any]]:
    sig = make_grid(refs.problem.schedule, grid, ADAPTIVE_GRID_STEPS)
    directions = tuple(d for d in cfg.directions if d != "roundtrip")
    return [
        _head(refs.problem, grid, spec)
        | {"tol": spec.options["rtol"], "variable": spec.options["variable"]}
        | _run(refs, sig, spec, directions)
        for spec in specs
    ]


def _head(problem: Problem, grid: str, spec: SolverSpec) -> dict[str, Any]:
    return {"problem": problem.name, "grid": grid, "label": spec.title, "solver": spec.name, "options": spec.options}


def _run(refs: References, sig: Tensor, spec: SolverSpec, directions: Sequence[str]) -> dict[str, Any]:
    """The errors of one solver on one grid, in each direction asked for."""
    row: dict[str, Any] = {}
    if "decode" in directions:
        row |= _decode(refs, sig, spec)
    if "encode" in directions and get_solver(spec.name, **spec.options).can_encode:
        row |= _encode(refs, sig, spec, "roundtrip" in directions)
    return row


def _decode(refs: References, sig: Tensor, spec: SolverSpec) -> dict[str, Any]:
    problem, sigma0 = refs.problem, float(sig[0])
    t0 = time.perf_counter()
    try:
        sol = solve(problem.field(), to_xbar(problem.x_T, sigma0), sig, spec.name, solver_options=spec.options)
    except (ValueError, FloatingPointError) as err:
        return {"nfe": None, "decode_error": None, "decode_failed": str(err)}
    seconds = time.perf_counter() - t0
    ref = refs.decode(sigma0)
    return {
        "nfe": sol.nfe,
        "decode_error": rms(sol.xbar, ref),
        "decode_max_error": max_abs(sol.xbar, ref),
        "decode_median_sample_error": median_sample_error(sol.xbar, ref),
        "decode_seconds": seconds,
    }


def _encode(refs: References, sig: Tensor, spec: SolverSpec, roundtrip: bool) -> dict[str, Any]:
    problem, up = refs.problem, sig.flip(0)
    top = float(up[-1])
    try:
        enc = solve(problem.field(), problem.x0, up, spec.name, solver_options=spec.options)
    except (ValueError, FloatingPointError) as err:
        return {"encode_nfe": None, "encode_error": None, "encode_failed": str(err)}
    ref = refs.encode(top)
    row = {
        "encode_nfe": enc.nfe,
        "encode_error": rms(from_xbar(enc.xbar, top), from_xbar(ref, top)),
        "encode_xbar_error": rms(enc.xbar, ref),
        "encode_max_error": max_abs(enc.xbar, ref),
    }
    if roundtrip:
        state = enc.state if enc.solver is not None and enc.solver.reversible else None
        try:
            back = solve(problem.field(), enc.xbar, sig, spec.name, solver_options=spec.options, state=state)
            row["roundtrip_error"] = rms(back.xbar, problem.x0)
        except (ValueError, FloatingPointError) as err:
            row |= {"roundtrip_error": None, "roundtrip_failed": str(err)}
    return row


def _floor(refs: References, grid: str) -> float:
    """Error of one first-order step σ_min → 0 taken from the exact x̄(σ_min): the accuracy limit of
    every solver whose step to σ = 0 is first order (all but Runge–Kutta with ``final_step="full"``)."""
    problem = refs.problem
    sig = make_grid(problem.schedule, grid, ADAPTIVE_GRID_STEPS)
    sigma0, sigma_min = float(sig[0]), float(sig[-2])
    xbar = refs.solve(to_xbar(problem.x_T, sigma0), sigma0, sigma_min)
    last = xbar - sigma_min * refs.field(xbar, sigma_min)
    return rms(last, refs.decode(sigma0))


#: (direction, error key, NFE key) of the fitted orders; encoding is fitted on the error in x̄
ORDER_KEYS = (("decode", "decode_error", "nfe"), ("encode", "encode_xbar_error", "encode_nfe"))


def _orders(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fitted order of each (problem, grid, label, direction) over the runs with NFE ≥ 10."""
    out = []
    keys = dict.fromkeys((r["problem"], r["grid"], r["label"]) for r in results)
    for direction, err_key, nfe_key in ORDER_KEYS:
        for problem, grid, label in keys:
            rows = [
                r
                for r in results
                if (r["problem"], r["grid"], r["label"]) == (problem, grid, label)
                and r.get(err_key) is not None
                and r[nfe_key] >= 10
            ]
            if rows:
                order = fit_order([r[nfe_key] for r in rows], [r[err_key] for r in rows])
                out.append({"problem": problem, "grid": grid, "direction": direction, "label": label, "order": order})
    return out


def _settings(
    cfg: Suite, problems: list[Problem], fixed: list[SolverSpec], adaptive: list[SolverSpec], quick: bool
) -> dict[str, Any]:
    return {
        "suite": cfg.name,
        "problems": [p.describe() for p in problems],
        "grids": list(cfg.grids),
        "steps": {"rule": type(cfg.steps).__name__, "nfes": list(cfg.steps.nfes)},
        "solvers": list(dict.fromkeys(s.title for s in fixed + adaptive)),
        "adaptive": {
            "rtols": list(cfg.rtols),
            "atol": f"rtol / {cfg.atol_divisor:g}",
            "variables": list(cfg.variables),
        },
        "directions": list(cfg.directions),
        "data_seed": cfg.data_seed,
        "noise_seed": cfg.noise_seed,
        "reference": "scipy DOP853 in float64, rtol = atol = each problem's ref_rtol",
        "error": "RMS per dimension (decode: x0; encode: VP-scale latent and x̄ at the top of the grid)",
        "quick": quick,
    }

"""Few-step sampling: error at 3–10 NFE of every deterministic solver on the standard and tuned grids,
beside diffusers' schedulers in the same run, and the Fréchet distance of the built-in models' samples.

For each problem (:mod:`.fewstep_problems`) and each NFE budget, every deterministic fixed-step
solver runs on every standard grid with the most steps the budget buys (NFE counted, not
estimated); a short list of solvers also runs on grids tuned to the problem
(:func:`ddim_ode.tune_grid`, tuned on other noises than those measured). The error is the RMS
difference of x0 from the accurate RK4 solution from the same noise. diffusers' schedulers
(:mod:`.fewstep_diffusers`) run on the same noise with NFE timesteps. On the built-in models the
Fréchet distance in the shipped classifier's features (:mod:`ddim_ode.features`) to the held-out
digits is measured at a few NFE for the best method of each family, and on ``digits`` for the
accurate solution too, with the Fréchet distance's own sampling noise (its spread over subsets of
the training digits of the same size).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..grids import make_grid
from ..solvers import SOLVERS, get_solver
from ..tuning import grid_nfe, tune_grid
from .common import StudyRun, environment, finish, progress, pyplot, rms, save_figure, write_markdown
from .fewstep_diffusers import diffusers_sample, diffusers_schedulers
from .fewstep_problems import FEWSTEP_PROBLEMS, FewStepProblem, make_fewstep_problem

__all__ = ["fewstep_study", "render_fewstep", "deterministic_solvers"]

DEFAULT_NFES = (3, 4, 5, 6, 8, 10)
DEFAULT_TUNED = ("dpm-solver++2m", "unipc", "ipndm")
#: the solvers tuned on the network problems (tuning unipc costs tens of thousands of NFE: its corrector
#: evaluates the network off the reference at every pair of steps)
NETWORK_TUNED = ("dpm-solver++2m", "ipndm")
FD_NFES = (6, 10)
#: the plot's error axis stops at this multiple of diffusers' largest error on the panel
CLIP_ABOVE_DIFFUSERS = 5.0
#: RK4 steps of the accurate samples whose Fréchet distance is the converged value
FD_REF_STEPS = 32
#: tune_grid sizes: exact oracles are cheap, networks are not
_TUNE_ANALYTIC = dict(num_samples=512, heldout_samples=256, candidates=24, reference_steps=96, refine_solves=20)
_TUNE_NETWORK = dict(num_samples=16, heldout_samples=16, candidates=20, reference_steps=48, refine_solves=12)
_TUNE_QUICK = dict(num_samples=8, heldout_samples=8, candidates=10, reference_steps=16, refine_solves=0)


def deterministic_solvers() -> list[str]:
    """Every registered fixed-step ODE solver: not adaptive, not stochastic (``ddpm`` draws fresh noise per step);
    ``ddim`` is left out too (at η = 0 it is ``euler``)."""
    solvers = {n: get_solver(n) for n in SOLVERS if n != "ddim"}  # the flags may be set per instance
    return sorted(n for n, s in solvers.items() if not s.adaptive and not s.stochastic)


class _Budget:
    """The most steps a solver can take on a grid for an NFE budget, by counting its evaluations."""

    def __init__(self, problem: FewStepProblem) -> None:
        self.problem = problem
        self._count: dict[tuple[str, str, int], int | None] = {}

    def nfe(self, solver: str, grid: str, n: int) -> int | None:
        key = (solver, grid, n)
        if key not in self._count:
            sig = make_grid(self.problem.schedule, grid, n)
            try:
                if math.isinf(float(sig[0])):  # the first step from pure noise: count it on one sample
                    self._count[key] = self.problem.sample(self.problem.z[:1], solver, sig)[1]
                else:
                    self._count[key] = grid_nfe(SOLVERS[solver](), self.problem.schedule, sig)
            except ValueError:  # the solver cannot run this grid (e.g. exact inversion from σ = ∞)
                self._count[key] = None
        return self._count[key]

    def steps(self, solver: str, grid: str, budget: int) -> int | None:
        best = None
        for n in range(1, budget + 1):
            used = self.nfe(solver, grid, n)
            if used is None or used > budget:
                break
            best = n
        return best


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _standard_rows(problem: FewStepProblem, solvers: Sequence[str], nfes: Sequence[int]) -> list[dict[str, Any]]:
    budget = _Budget(problem)
    rows = []
    for solver in solvers:
        for grid in problem.grids:
            for target in nfes:
                n = budget.steps(solver, grid, target)
                if n is None:
                    continue
                err, used = problem.error(solver, make_grid(problem.schedule, grid, n))
                rows.append(
                    {"kind": "standard", "solver": solver, "grid": grid, "n": n, "nfe": used, "target_nfe": target}
                    | {"error": _finite(err)}
                )
    return rows


def _tuned_rows(
    problem: FewStepProblem, solvers: Sequence[str], nfes: Sequence[int], sizes: dict[str, Any], seed: int
) -> list[dict[str, Any]]:
    rows = []
    for solver in solvers:
        for target in nfes:
            g = tune_grid(
                nfe=target,
                solver=solver,
                model=problem.model,
                schedule=problem.schedule,
                prediction=problem.prediction,
                shape=tuple(problem.z.shape[1:]),
                seed=seed,
                **sizes,
            )
            err, used = problem.error(solver, g.sigmas)
            rows.append(
                {
                    "kind": "tuned",
                    "solver": solver,
                    "grid": f"tuned ({g.chosen})",
                    "n": g.n,
                    "nfe": used,
                    "target_nfe": target,
                    "error": _finite(err),
                    "tuning_nfe": g.tuning_nfe,
                    "sigmas": g.sigmas.tolist(),
                }
            )
    return rows


def _diffusers_rows(problem: FewStepProblem, nfes: Sequence[int]) -> list[dict[str, Any]]:
    rows = []
    for name in diffusers_schedulers(problem):
        for target in nfes:
            try:
                x0, used = diffusers_sample(problem, name, target)
            except (ValueError, TypeError, NotImplementedError) as exc:  # a configuration it does not build
                rows.append({"kind": "diffusers", "solver": name, "target_nfe": target, "failed": str(exc)})
                continue
            err = rms(x0, problem.ref_x0)
            rows.append(
                {"kind": "diffusers", "solver": name, "grid": "own", "nfe": used, "target_nfe": target}
                | {"error": _finite(err)}
            )
    return rows


def best_rows(rows: list[dict[str, Any]], kind: str, nfe: int) -> dict[str, Any] | None:
    """The row of least error of ``kind`` (``standard``, ``tuned``, ``diffusers`` or ``ours`` = standard or
    tuned) whose budget is ``nfe``."""
    kinds = ("standard", "tuned") if kind == "ours" else (kind,)
    ok = [r for r in rows if r["kind"] in kinds and r["target_nfe"] == nfe and r.get("error") is not None]
    return min(ok, key=lambda r: r["error"]) if ok else None


def _fd_scores(
    problem: FewStepProblem, rows: list[dict[str, Any]], nfes: Sequence[int], num: int, seed: int
) -> dict[str, Any]:
    """Fréchet distance to the held-out digits of ``num`` samples from fresh noise, for the best standard,
    tuned and diffusers method at each NFE (and, on the unconditional VP model, of the accurate solution)."""
    from ..data import load_digits
    from ..features import features, frechet_distance, load_classifier

    dev = problem.z.device
    clf = load_classifier(dev)
    held = features(load_digits("heldout").to(dev), clf)

    def fd(x: torch.Tensor) -> float:
        return frechet_distance(features(x.float().clamp(-1, 1), clf), held)

    z = torch.randn((num, *problem.z.shape[1:]), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z.to(dev)
    out: dict[str, Any] = {"num": num, "reference": "held-out digits", "scores": []}
    for nfe in nfes:
        for kind in ("standard", "tuned", "diffusers"):
            best = best_rows(rows, kind, nfe)
            if best is None:
                continue
            if kind == "diffusers":
                x0 = diffusers_sample(problem, best["solver"], nfe, z)[0]
            else:
                sig = (
                    torch.tensor(best["sigmas"])
                    if kind == "tuned"
                    else make_grid(problem.schedule, best["grid"], best["n"])
                )
                x0 = problem.sample(z, best["solver"], sig)[0]
            out["scores"].append(
                {"kind": kind, "solver": best["solver"], "grid": best["grid"], "nfe": best["nfe"], "fd": fd(x0)}
            )
    if problem.name == "digits":
        x_ref, ref_nfe = problem.sample(z, "rk4", make_grid(problem.schedule, "logsnr", FD_REF_STEPS))
        out["accurate_fd"] = fd(x_ref)
        out["accurate_nfe"] = ref_nfe
        train = load_digits("train")
        g = torch.Generator().manual_seed(seed + 1)
        subsets = [fd(train[torch.randperm(len(train), generator=g)[:num]].to(dev)) for _ in range(5)]
        out["train_subset_fd"] = subsets
        out["fd_noise"] = float(np.std(subsets, ddof=1))
    return out


def _sample_errors(problem: FewStepProblem, row: dict[str, Any]) -> torch.Tensor:
    """Mean squared error of x0 per noise of the method of ``row`` (run again on the problem's noise)."""
    if row["kind"] == "diffusers":
        x0 = diffusers_sample(problem, row["solver"], row["target_nfe"])[0]
    else:
        sig = (
            torch.tensor(row["sigmas"])
            if row["kind"] == "tuned"
            else make_grid(problem.schedule, row["grid"], row["n"])
        )
        x0 = problem.sample(problem.z, row["solver"], sig)[0]
    d = (x0.double() - problem.ref_x0.double()).reshape(len(x0), -1)
    return (d * d).mean(dim=1)


def ratio_interval(ours: torch.Tensor, theirs: torch.Tensor, level: float = 0.9, draws: int = 2000) -> list[float]:
    """Paired bootstrap interval of the ratio of RMS errors √(mean ours)/√(mean theirs) over the noises.

    ``ours`` and ``theirs`` hold each noise's mean squared error; the same resampled noises enter both
    (seeded, so the interval is reproducible).
    """
    idx = torch.randint(len(ours), (draws, len(ours)), generator=torch.Generator().manual_seed(0))
    ratios = (ours[idx].mean(dim=1) / theirs[idx].mean(dim=1)).sqrt()
    lo, hi = torch.quantile(ratios, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=ratios.dtype)).tolist()
    return [lo, hi]


def _targets(problem: FewStepProblem, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Best error of ours (any solver, standard or tuned grid) over diffusers' best at 5 and 10 NFE, with a
    90 % paired bootstrap interval over the noises."""
    out: dict[str, Any] = {}
    for nfe in (5, 10):
        ours, theirs = best_rows(rows, "ours", nfe), best_rows(rows, "diffusers", nfe)
        if ours is None or theirs is None:
            continue
        a, b = _sample_errors(problem, ours), _sample_errors(problem, theirs)
        out[str(nfe)] = {
            "ours": f"{ours['solver']} / {ours['grid']}",
            "ours_error": ours["error"],
            "diffusers": theirs["solver"],
            "diffusers_error": theirs["error"],
            "ratio": ours["error"] / theirs["error"],
            "ratio_check": float((a.mean() / b.mean()).sqrt()),
            "ratio_90": ratio_interval(a, b),
            "target": 0.2 if nfe == 10 else 0.4,
        }
    return out


def fewstep_study(
    problems: Sequence[str] = FEWSTEP_PROBLEMS,
    *,
    solvers: Sequence[str] | None = None,
    tuned: Sequence[str] = DEFAULT_TUNED,
    network_tuned: Sequence[str] = NETWORK_TUNED,
    nfes: Sequence[int] = DEFAULT_NFES,
    num: int = 256,
    network_num: int = 32,
    fd_num: int = 256,
    run: StudyRun | None = None,
) -> dict[str, Any]:
    """Error against NFE of every deterministic solver on standard and tuned grids, beside diffusers.

    Args:
        problems: names from :data:`~ddim_ode.studies.fewstep_problems.FEWSTEP_PROBLEMS`.
        solvers: the solvers on standard grids (default :func:`deterministic_solvers`).
        tuned: the solvers also run on grids tuned to the analytic problem, at every NFE;
            ``network_tuned``: those tuned to each network problem (about 800 NFE per grid), at every NFE.
        nfes: the NFE budgets.
        num: noises per analytic problem; ``network_num`` per network problem.
        fd_num: samples per Fréchet distance (built-in models only).

    ``quick``: ``mixture64`` and ``digits`` with 8 noises, NFE {3, 5, 10}, euler and dpm-solver++2m, one small tuned
    grid, no Fréchet distance. Writes ``fewstep.json``, ``fewstep.png`` and ``fewstep.md``.
    """
    run = run or StudyRun()
    dev, seed = run.torch_device(), run.seed_or(0)
    names = list(solvers) if solvers is not None else deterministic_solvers()
    for p in problems:
        if p not in FEWSTEP_PROBLEMS:
            raise ValueError(f"unknown problem {p!r}; allowed: {', '.join(FEWSTEP_PROBLEMS)}")
    fd_on = not run.quick
    if run.quick:
        problems = [p for p in problems if p in ("mixture64", "digits")]
        nfes, num, network_num = (3, 5, 10), 8, 8
        names = [n for n in names if n in ("euler", "dpm-solver++2m")]
        tuned, network_tuned = tuned[:1], network_tuned[:1]
    doc_problems, results, fds, targets = [], [], {}, {}
    for name in progress(problems, len(problems), "fewstep", run.show_progress):
        t0 = time.perf_counter()
        network = name != "mixture64"
        ref_steps = 16 if run.quick else (96 if network else 256)
        prob = make_fewstep_problem(name, network_num if network else num, seed=seed, ref_steps=ref_steps, device=dev)
        rows = _standard_rows(prob, names, nfes)
        tune_solvers = list(network_tuned if network else tuned)
        sizes = _TUNE_QUICK if run.quick else (_TUNE_NETWORK if network else _TUNE_ANALYTIC)
        rows += _tuned_rows(prob, tune_solvers, nfes, sizes, seed + 1000)
        rows += _diffusers_rows(prob, nfes)
        for r in rows:
            r["problem"] = name
        if fd_on and prob.network:
            fds[name] = _fd_scores(prob, rows, [n for n in FD_NFES if n in nfes], fd_num, seed + 1)
        targets[name] = _targets(prob, rows)
        results += rows
        doc_problems.append(prob.describe() | {"seconds": round(time.perf_counter() - t0, 1)})
    doc = {
        "study": "fewstep",
        "settings": {
            "problems": doc_problems,
            "solvers": names,
            "tuned": list(tuned),
            "network_tuned": list(network_tuned),
            "nfes": list(nfes),
            "num": num,
            "network_num": network_num,
            "fd_num": fd_num if fd_on else 0,
            "seed": seed,
            "quick": run.quick,
            "tune_sizes": {"analytic": _TUNE_ANALYTIC, "network": _TUNE_NETWORK, "quick": _TUNE_QUICK},
        },
        "environment": environment(dev, torch.float64),
        "results": results,
        "frechet": fds,
        "targets": targets,
    }
    return finish(doc, run.folder("fewstep"), render_fewstep)


def _method_lines(rows: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """One line per method: each solver at its best standard grid per NFE, each tuned solver, each scheduler."""
    lines: dict[str, dict[int, float]] = {}
    for r in rows:
        if r.get("error") is None:
            continue
        label = {"standard": r["solver"], "tuned": f"{r['solver']} tuned", "diffusers": f"diffusers {r['solver']}"}
        key = label[r["kind"]]
        best = lines.setdefault(key, {})
        best[r["target_nfe"]] = min(best.get(r["target_nfe"], math.inf), r["error"])
    return {k: sorted(v.items()) for k, v in lines.items()}


def render_fewstep(doc: dict[str, Any], out_dir: str | Path) -> Path:
    """``fewstep.png`` (error against NFE, one panel per problem, diffusers dashed; errors above
    :data:`CLIP_ABOVE_DIFFUSERS` times diffusers' largest are off the plot) and ``fewstep.md``."""
    plt = pyplot()
    names = [p["name"] for p in doc["settings"]["problems"]]
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 4.4), squeeze=False)
    keys = list(_method_lines(doc["results"]))  # one colour per method on every panel
    palette = [*plt.get_cmap("tab20").colors, *plt.get_cmap("tab20b").colors]
    colour = {key: palette[i % len(palette)] for i, key in enumerate(keys)}
    for ax, name in zip(axes[0], names):
        rows = [r for r in doc["results"] if r["problem"] == name]
        for key, pts in _method_lines(rows).items():
            style = "--" if key.startswith("diffusers") else ("-" if key.endswith("tuned") else ":")
            lw = 2.0 if key.endswith("tuned") or key.startswith("diffusers") else 1.0
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(xs, ys, style, marker=".", lw=lw, label=key, color=colour[key])
        ax.set_xscale("log")
        ax.set_yscale("log")
        errors = [r["error"] for r in rows if r.get("error") is not None and r["error"] > 0]
        theirs = [r["error"] for r in rows if r["kind"] == "diffusers" and r.get("error") is not None]
        if errors and theirs:  # a blown-up solver (a one-step method over six decades of σ) squashes the rest
            ax.set_ylim(0.8 * min(errors), min(1.25 * max(errors), CLIP_ABOVE_DIFFUSERS * max(theirs)))
        ax.set_xticks(doc["settings"]["nfes"], [str(n) for n in doc["settings"]["nfes"]])
        ax.set_xlabel("NFE")
        ax.set_ylabel("RMS error of x0 vs accurate solve")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
    handles: dict[str, Any] = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    out = save_figure(fig, Path(out_dir) / "fewstep.png")
    write_markdown(Path(out_dir) / "fewstep.md", fewstep_tables(doc))
    return out


def fewstep_tables(doc: dict[str, Any]) -> str:
    """Markdown: per problem, best error per family at each NFE; the targets; the Fréchet distances."""
    nfes = doc["settings"]["nfes"]
    lines = []
    for p in doc["settings"]["problems"]:
        name = p["name"]
        rows = [r for r in doc["results"] if r["problem"] == name]
        lines += [
            f"### {name}",
            "",
            f"{p['label']}; {p['num']} noises; reference error ≤ {p['reference_error']:.1e}",
            "",
        ]
        lines += ["| NFE | best solver, standard grid | best tuned grid | diffusers' best | ours / diffusers |"]
        lines += ["|---|---|---|---|---|"]
        for nfe in nfes:
            cells = []
            for kind in ("standard", "tuned", "diffusers"):
                b = best_rows(rows, kind, nfe)
                where = f" ({b['grid']}, n={b['n']})" if b is not None and kind == "standard" else ""
                cells.append("—" if b is None else f"{b['solver']}{where} {b['error']:.4f}")
            ours, theirs = best_rows(rows, "ours", nfe), best_rows(rows, "diffusers", nfe)
            ratio = f"{ours['error'] / theirs['error']:.2f}" if ours and theirs else "—"
            lines.append(f"| {nfe} | " + " | ".join(cells) + f" | {ratio} |")
        fd = doc.get("frechet", {}).get(name)
        if fd:
            lines += ["", f"Fréchet distance to the held-out digits ({fd['num']} samples):", ""]
            lines += ["| NFE | method | FD |", "|---|---|---|"]
            lines += [
                f"| {s['nfe']} | {s['kind']}: {s['solver']} ({s['grid']}) | {s['fd']:.2f} |" for s in fd["scores"]
            ]
            if "accurate_fd" in fd:
                lines.append(f"| {fd['accurate_nfe']} | accurate RK4 solve | {fd['accurate_fd']:.2f} |")
                lines += [
                    "",
                    f"FD sampling noise (std over 5 subsets of {fd['num']} training digits): {fd['fd_noise']:.2f}",
                ]
        lines.append("")
    lines += _target_table(doc.get("targets", {}))
    return "\n".join(lines)


def _target_table(targets: dict[str, Any]) -> list[str]:
    """Markdown: our best over diffusers' best at 5 and 10 NFE per problem, with the 90 % interval."""
    if not targets:
        return []
    lines = [
        "### Ours / diffusers' best",
        "",
        "| problem | NFE | ours | diffusers | ratio | 90 % interval (bootstrap over noises) | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, per_nfe in targets.items():
        for nfe, t in per_nfe.items():
            lo, hi = t["ratio_90"]
            lines.append(
                f"| {name} | {nfe} | {t['ours']} {t['ours_error']:.4f} | {t['diffusers']} {t['diffusers_error']:.4f} "
                f"| {t['ratio']:.2f} | {lo:.2f}–{hi:.2f} | ≤ {t['target']:g} |"
            )
    return [*lines, ""]

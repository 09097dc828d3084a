"""Tables and plots of the accuracy study, drawn from its JSON alone (``ddim-ode bench --replot``).

:func:`render_accuracy` writes, next to ``accuracy.json``:

* ``accuracy.png``: one log-log panel per (problem, direction) on the first grid, one line per
  solver, the fitted order in the legend;
* ``accuracy_decode[_GRID].png`` and ``accuracy_encode[_GRID].png``: per grid, rows of problems,
  fixed-grid solvers left and adaptive ones right, the fitted slope in the legend (each where the
  JSON has those errors);
* ``accuracy_tables.md``: the floor, the error at NFE 5/10/20/50 of every solver per direction,
  problem and grid, the adaptive runs, and the NFE each adaptive method needs in log σ and in σ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..solvers import get_solver
from .common import fit_order, pyplot, save_figure, write_markdown

__all__ = ["render_accuracy", "plot_overview", "plot_grid", "accuracy_tables"]

TABLE_NFE = (5, 10, 20, 50)
#: solvers whose steps are identical to euler's (tested to rounding): tabulated, not plotted separately
ALIASES = ("ddim", "dpm-solver-1")
#: (error key, NFE key) of each direction; encoding is plotted in x̄ in the overview, in VP scale per grid
OVERVIEW_KEYS = {"decode": ("decode_error", "nfe"), "encode": ("encode_xbar_error", "encode_nfe")}


def render_accuracy(doc: dict[str, Any], out_dir: str | Path) -> Path:
    """Every plot and the tables of an accuracy JSON; returns the overview plot's path."""
    out = Path(out_dir)
    grids = doc["settings"]["grids"]
    for grid in grids:
        suffix = "" if grid == grids[0] else f"_{grid}"
        for key in ("decode_error", "encode_error"):
            if any(r["grid"] == grid and r.get(key) is not None for r in doc["results"]):
                plot_grid(doc, grid, key, out / f"accuracy_{key.split('_')[0]}{suffix}.png")
    write_markdown(out / "accuracy_tables.md", accuracy_tables(doc))
    return plot_overview(doc, out / "accuracy.png")


def _problems(doc: dict[str, Any]) -> list[str]:
    return [p["name"] for p in doc["settings"]["problems"]]


def _fmt(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.2e}"


def _nfe(row: dict[str, Any]) -> int | None:
    """The NFE a fixed-grid row is tabulated at: decoding's, or encoding's in an encode-only run."""
    return row["nfe"] if row.get("nfe") is not None else row.get("encode_nfe")


def _encode_nfe(row: dict[str, Any]) -> int | None:
    return row.get("encode_nfe")


def _slope(rows: list[dict[str, Any]], key: str, nfe: Callable[[dict[str, Any]], int | None] = _nfe) -> float:
    """Fitted slope of log error against log NFE over NFE ≥ 10 (−order)."""
    pts = [(nfe(r), r[key]) for r in rows if r.get(key) is not None and nfe(r) is not None]
    pts = [(n, e) for n, e in pts if n >= 10]  # type: ignore[operator]
    return -fit_order([n for n, _ in pts], [e for _, e in pts])  # type: ignore[misc]


def _pick(rows: list[dict[str, Any]], target: int, key: str, rule: str) -> dict[str, Any] | None:
    """The row tabulated at ``target``: the largest NFE within the budget, or the closest NFE to the
    target (within 20 % + 1) when the step counts came from NFE targets."""
    rows = [r for r in rows if r.get(key) is not None and _nfe(r) is not None]
    if rule == "NfeTargets":
        best = min(rows, key=lambda r: abs(_nfe(r) - target), default=None)  # type: ignore[operator]
        return best if best is not None and abs(_nfe(best) - target) <= 0.2 * target + 1 else None  # type: ignore[operator]
    fits = [r for r in rows if _nfe(r) <= target]  # type: ignore[operator]
    return max(fits, key=_nfe) if fits else None  # type: ignore[arg-type, return-value]


def accuracy_tables(doc: dict[str, Any]) -> str:
    """Markdown: the floors, the fixed-grid tables, the adaptive tables and the adaptive reach table."""
    settings, results = doc["settings"], doc["results"]
    problems, grids = _problems(doc), settings["grids"]
    out = [f"Accuracy study, suite `{settings['suite']}`; every number is in accuracy.json."]
    out += _floor_table(doc.get("floors", {}), problems, grids)
    out += _fixed_tables(results, problems, grids, settings["steps"]["rule"])
    adaptive = [r for r in results if "tol" in r]
    if adaptive:
        out += _adaptive_tables(adaptive, problems, grids)
        out.append(_reach_table(adaptive, problems, grids[0]))
    return "\n".join(out) + "\n"


def _floor_table(floors: dict[str, dict[str, float]], problems: list[str], grids: list[str]) -> list[str]:
    if not floors:
        return []
    out = ["\n**floor** — error of one first-order step σ_min → 0 from the exact x̄(σ_min)\n"]
    out.append("| problem | " + " | ".join(grids) + " |")
    out.append("|---|" + "---|" * len(grids))
    for prob in problems:
        out.append(f"| {prob} | " + " | ".join(_fmt(floors.get(prob, {}).get(g)) for g in grids) + " |")
    return out


def _fixed_tables(results: list[dict[str, Any]], problems: list[str], grids: list[str], rule: str) -> list[str]:
    out = []
    head = "NFE ≈" if rule == "NfeTargets" else "NFE ≤"
    for grid in grids:
        for key, what in (("decode_error", "decode"), ("encode_error", "encode"), ("roundtrip_error", "round trip")):
            for prob in problems:
                rows = [r for r in results if r["problem"] == prob and r["grid"] == grid and "tol" not in r]
                labels = list(dict.fromkeys(r["label"] for r in rows if r.get(key) is not None))
                if not labels:
                    continue
                out.append(f"\n**{what}, {prob}, grid {grid!r}** — RMS error per dimension (NFE actually used)\n")
                out.append("| solver | " + " | ".join(f"{head} {b}" for b in TABLE_NFE) + " | slope |")
                out.append("|---|" + "---|" * (len(TABLE_NFE) + 1))
                for label in labels:
                    mine = [r for r in rows if r["label"] == label]
                    cells = []
                    for b in TABLE_NFE:
                        r = _pick(mine, b, key, rule)
                        cells.append("—" if r is None else f"{_fmt(r[key])} ({_nfe(r)})")
                    out.append(f"| {label} | " + " | ".join(cells) + f" | {_slope(mine, key):.2f} |")
    return out


def _adaptive_tables(rows: list[dict[str, Any]], problems: list[str], grids: list[str]) -> list[str]:
    out = []
    for grid in grids:
        for prob in problems:
            mine = [r for r in rows if r["problem"] == prob and r["grid"] == grid]
            if not mine:
                continue
            out.append(f"\n**adaptive, {prob}, grid {grid!r}** — decode NFE / RMS error (encode NFE / error)\n")
            tols = sorted({r["tol"] for r in mine}, reverse=True)
            out.append("| method [variable] | " + " | ".join(f"tol {t:g}" for t in tols) + " |")
            out.append("|---|" + "---|" * len(tols))
            for label in dict.fromkeys(r["label"] for r in mine):
                cells = []
                for t in tols:
                    r = next((r for r in mine if r["label"] == label and r["tol"] == t), None)
                    if r is None:
                        cells.append("—")
                        continue
                    cell = f"{r.get('nfe')} / {_fmt(r.get('decode_error'))}"
                    if r.get("encode_error") is not None:
                        cell += f" ({r['encode_nfe']} / {_fmt(r['encode_error'])})"
                    cells.append(cell)
                out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


REACH_KEYS = (("decode", "decode_error", "nfe"), ("encode", "encode_error", "encode_nfe"))


def _reach_table(rows: list[dict[str, Any]], problems: list[str], grid: str) -> str:
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
            for direction, key, nfe_key in REACH_KEYS:
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


def plot_overview(doc: dict[str, Any], path: str | Path) -> Path:
    """One log-log panel per (problem, direction) on the first grid: error vs NFE, one line per solver."""
    plt = pyplot()
    s = doc["settings"]
    grid, problems = s["grids"][0], _problems(doc)
    directions = [d for d in s["directions"] if d in OVERVIEW_KEYS]
    fig, axes = plt.subplots(
        len(directions), len(problems), figsize=(5.2 * len(problems), 4.4 * len(directions)), squeeze=False
    )
    order = {(o["problem"], o["direction"], o["label"]): o["order"] for o in doc["orders"] if o["grid"] == grid}
    for ax, (d, p) in zip(axes.reshape(-1), [(d, p) for d in directions for p in problems]):
        key, nfe_key = OVERVIEW_KEYS[d]
        for label in s["solvers"]:
            rows = [r for r in doc["results"] if (r["problem"], r["grid"], r["label"]) == (p, grid, label)]
            rows = sorted((r for r in rows if r.get(key)), key=lambda r: r[nfe_key])
            if rows:
                k = order.get((p, d, label), float("nan"))
                ax.loglog([r[nfe_key] for r in rows], [r[key] for r in rows], "o-", ms=3, label=f"{label} ({k:.1f})")
        ax.set_title(f"{p}, {d}, grid={grid}")
        ax.set_xlabel("NFE")
        ax.set_ylabel("RMS error per dimension" + (" of x̄" if d == "encode" else ""))
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6, title="solver (fitted order)", title_fontsize=6)
    return save_figure(fig, path)


def _style(name: str) -> tuple[str, str]:
    """(line style, marker) by kind of solver: adaptive, reversible, multi-stage or one NFE per step."""
    slv = get_solver(name)
    if slv.adaptive:
        return "--", "s"
    if slv.reversible:
        return ":", "v"
    return ("-", "o") if slv.nfe_per_step > 1 else ("-.", "D")


def plot_grid(doc: dict[str, Any], grid: str, key: str, path: str | Path) -> Path:
    """Rows: problems; columns: fixed-grid solvers, adaptive solvers. Legends carry fitted slopes."""
    plt = pyplot()
    problems = _problems(doc)
    what = "decode: RMS error of x0" if key == "decode_error" else "encode: RMS error of the VP latent x_T"
    fig, axes = plt.subplots(len(problems), 2, figsize=(17, 5.8 * len(problems)), squeeze=False)
    for i, prob in enumerate(problems):
        floor = doc.get("floors", {}).get(prob, {}).get(grid) if key == "decode_error" else None
        for j, adaptive in enumerate((False, True)):
            ax = axes[i][j]
            rows = [
                r
                for r in doc["results"]
                if r["problem"] == prob and r["grid"] == grid and r.get(key) is not None and ("tol" in r) == adaptive
            ]
            nfe = _encode_nfe if key == "encode_error" and adaptive else _nfe
            labels = [lab for lab in dict.fromkeys(r["label"] for r in rows) if lab not in ALIASES]
            cmap = plt.get_cmap("tab20" if len(labels) > 10 else "tab10")
            for c, label in enumerate(labels):
                mine = sorted((r for r in rows if r["label"] == label), key=nfe)
                ls, marker = _style(mine[0]["solver"])
                name = label + (" (= ddim = dpm-solver-1)" if label == "euler" else "")
                ax.loglog(
                    [nfe(r) for r in mine],
                    [max(r[key], 1e-17) for r in mine],
                    ls=ls,
                    marker=marker,
                    color=cmap(c % cmap.N),
                    ms=4,
                    lw=1.3,
                    label=f"{name}: slope {_slope(mine, key, nfe):.2f}",
                )
            if floor is not None and not adaptive:
                ax.axhline(floor, color="0.4", lw=0.8, ls=(0, (6, 4)), label="floor: 1st-order step σ_min → 0")
            ax.set_xlabel("NFE")
            ax.set_ylabel("RMS error per dimension")
            ax.set_title(f"{prob}, grid {grid!r}: {'adaptive' if adaptive else 'fixed grid'}")
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(
                    fontsize=7,
                    loc="upper left",
                    bbox_to_anchor=(1.01, 1.0),
                    title="fitted over NFE ≥ 10",
                    title_fontsize=7,
                )
    fig.suptitle(f"{what} against a float64 reference")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100, tight=False)

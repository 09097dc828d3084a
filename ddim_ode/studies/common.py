"""What every study shares: the environment record, atomic JSON, model resolution, plotting set-up."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._files import atomic_path

__all__ = [
    "environment",
    "write_json",
    "read_json",
    "resolve_model",
    "pyplot",
    "save_figure",
    "progress",
    "fit_order",
    "markdown_table",
    "DTYPES",
    "check_dtype",
    "check_solvers",
    "event_shape",
    "finish",
]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def environment(device: torch.device | str, dtype: torch.dtype) -> dict[str, Any]:
    """Package and torch versions, device, threads, dtype and date: stored with every result."""
    from .. import __version__

    dev = torch.device(device)
    info: dict[str, Any] = {
        "ddim_ode": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "dtype": str(dtype).replace("torch.", ""),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return info


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    p = Path(path)
    with atomic_path(p) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, allow_nan=True) + "\n")
    return p


def read_json(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such results file: {p}")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{p} is not a valid results JSON: {err}") from None


def resolve_model(
    model: Any, schedule: Any, device: torch.device, prediction: str = "eps"
) -> tuple[Any, Any, str, dict[str, Any]]:
    """(model, schedule, prediction, metadata): the built-in model when ``model`` is None."""
    if model is None:
        if schedule is not None:
            raise ValueError("schedule given without model: the built-in model comes with its own schedule")
        from ..io import load_default

        m, s, meta = load_default(device)
        m.eval().requires_grad_(False)
        return m, s, meta.get("prediction", "eps"), meta
    if schedule is None:
        raise ValueError("schedule is required when a model is given")
    return model, schedule, prediction, {}


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    p = Path(path)
    with atomic_path(p) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    pyplot().close(fig)
    return p


def progress(items: Iterable[Any], total: int, desc: str, enabled: bool) -> Iterator[Any]:
    from tqdm.auto import tqdm

    yield from tqdm(items, total=total, desc=desc, disable=not enabled, leave=False)


def fit_order(nfe: list[float], err: list[float]) -> float:
    """Empirical order: −slope of log(err) against log(NFE) (NaN with fewer than 2 usable points)."""
    pts = [(a, b) for a, b in zip(nfe, err) if b is not None and np.isfinite(b) and b > 0]
    if len(pts) < 2:
        return float("nan")
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(-np.polyfit(x, y, 1)[0])


def markdown_table(header: list[str], rows: list[list[Any]], fmt: Callable[[Any], str] | None = None) -> str:
    """A Markdown table; floats formatted with ``fmt`` (default ``.3g``)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return fmt(v) if fmt else ("–" if not np.isfinite(v) else f"{v:.3g}")
        return "–" if v is None else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def check_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_solvers(names: Iterable[str]) -> list[str]:
    from ..solvers import SOLVERS

    out = list(names)
    for name in out:
        if name not in SOLVERS:
            raise ValueError(f"unknown solver {name!r}; available: {', '.join(sorted(SOLVERS))}")
    return out


def event_shape(meta: dict[str, Any]) -> tuple[int, ...]:
    """The (C, H, W) of a loaded model's samples (the built-in model: (1, 8, 8))."""
    from ..io import sample_shape

    return sample_shape(meta)


def finish(
    doc: dict[str, Any], out_dir: str | Path, plot: Callable[[dict[str, Any], Path], Any] | None
) -> dict[str, Any]:
    """Write ``<study>.json`` into ``out_dir`` and draw its plot; returns ``doc``."""
    out = Path(out_dir)
    write_json(out / f"{doc['study']}.json", doc)
    if plot is not None:
        plot(doc, out)
    return doc

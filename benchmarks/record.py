"""What the benchmarks here share: rows printed as they arrive, and a JSON record of them with the
command line that produced them."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ddim_ode._files import write_json


def command_line(script: str, argv: list[str] | None) -> str:
    """``python benchmarks/NAME.py ARGS`` for the benchmark file ``script`` run with ``argv``."""
    return f"python benchmarks/{Path(script).name} " + " ".join(sys.argv[1:] if argv is None else argv)


def save_record(path: str | Path | None, script: str, argv: list[str] | None, **fields: Any) -> None:
    """Write ``{"command": ..., **fields}`` as JSON, atomically (NaN allowed); nothing when ``path`` is None."""
    if path is not None:
        write_json(path, {"command": command_line(script, argv), **fields}, allow_nan=True)


def collect(rows: Iterable[dict[str, Any]], line: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """The rows of a (slow) measurement, each printed with ``line`` as soon as it is measured."""
    out = []
    for row in rows:
        print(line(row), flush=True)
        out.append(row)
    return out

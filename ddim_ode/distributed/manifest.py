"""The manifest of a run folder: every argument the numbers depend on, checked on every read.

``manifest.json`` is written once, by the first run in a folder, and read by every resume and
merge. A manifest is trusted only after each field has the type and the bounds this module states
(a hand-edited ``num: 1e12`` must not make the merge allocate terabytes) and its run id matches
its arguments.

Bounds (also enforced on the arguments of a new run, so every run writes a manifest it can read):
``num`` ≤ :data:`MAX_NUM`, at most :data:`MAX_SHARDS` shards, a sample of at most
:data:`MAX_EVENT_DIMS` dimensions and :data:`MAX_EVENT_NUMEL` numbers.
"""

from __future__ import annotations

import math
import reprlib
import string
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._files import read_json, write_json
from ..checks import MAX_STEPS
from ..field import PREDICTIONS
from ..grids import GRIDS
from ..ranges import check_choice
from .fingerprints import grid_sha256, run_id
from .layout import MANIFEST, OUTPUTS, check_writable, is_regular_file, parse_shard_name

__all__ = [
    "ResumeError",
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_NUM",
    "MAX_SHARDS",
    "MAX_EVENT_DIMS",
    "MAX_EVENT_NUMEL",
    "DTYPES",
    "EXPLICIT_GRID",
    "grid_values",
    "grid_from_values",
    "check_int",
    "check_shape",
    "check_shard_count",
    "new_manifest",
    "read_manifest",
    "open_run",
]

FORMAT = "ddim_ode.shards"
FORMAT_VERSION = 1
#: the most indices a run may have
MAX_NUM = 10**9
#: the most shard files a run may have (``ceil(num / shard_size)``)
MAX_SHARDS = 10**6
#: the most dimensions of one sample
MAX_EVENT_DIMS = 8
#: the most numbers in one sample (e.g. 3 × 8192 × 8192 fits)
MAX_EVENT_NUMEL = 2**28
#: the dtypes of a run's state and files
DTYPES = ("float32", "float64")
#: the ``grid`` of a run given an explicit σ grid (its values are the manifest's ``sigmas``)
EXPLICIT_GRID = "sigmas"
#: how σ = ∞ (pure noise, the top of a flow path) is written in the manifest (strict JSON has no infinity)
_INF = "inf"

Check = Callable[[str, Any], Any]


class ResumeError(ValueError):
    """``out_dir`` holds a run made with other arguments (or files that are not from a run)."""


def check_int(name: str, value: Any, low: int = 1, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``: ``TypeError`` for a non-int (bools included), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        want = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
        raise TypeError(f"{name} must be {want}, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return int(value)


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """The shape of one sample: 1 to :data:`MAX_EVENT_DIMS` positive ints, at most :data:`MAX_EVENT_NUMEL` numbers."""
    ok = isinstance(shape, (list, tuple)) and 1 <= len(shape) <= MAX_EVENT_DIMS
    ok = ok and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in shape)
    if not ok:
        raise ValueError(f"{name} must be the shape of one sample (1 to {MAX_EVENT_DIMS} positive ints), got {shape!r}")
    out = tuple(int(s) for s in shape)
    if math.prod(out) > MAX_EVENT_NUMEL:
        raise ValueError(f"{name} {out} has {math.prod(out)} numbers per sample; at most {MAX_EVENT_NUMEL} allowed")
    return out


def check_shard_count(num: int, shard_size: int) -> None:
    """Refuse runs of more than :data:`MAX_SHARDS` shards."""
    if -(-num // shard_size) > MAX_SHARDS:
        raise ValueError(
            f"shard_size {shard_size} cuts num={num} into more than {MAX_SHARDS} shards; "
            f"use shard_size >= {-(-num // MAX_SHARDS)}"
        )


def grid_values(sig: np.ndarray) -> list[float | str]:
    """An explicit σ grid as the manifest records it: JSON numbers (exact: Python writes the shortest
    text that reads back to the same float64), σ = ∞ as the string ``"inf"``."""
    return [_INF if math.isinf(v) else v for v in np.asarray(sig, dtype=np.float64).tolist()]


def grid_from_values(values: list[float | str]) -> np.ndarray:
    """The float64 σ grid of the manifest's ``sigmas`` (:func:`grid_values` read back)."""
    return np.array([math.inf if v == _INF else v for v in values], dtype=np.float64)


def _bounded(low: int, high: int | None = None) -> Check:
    return lambda name, value: check_int(name, value, low, high)


def _choice(*allowed: Any) -> Check:
    return lambda name, value: check_choice(name, value, allowed)


def _text(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def _options(name: str, value: Any) -> None:
    if not isinstance(value, (dict, str)):
        raise ValueError(f"{name} must be a JSON object (or the text of options that are not JSON), got {value!r}")


def _finite(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _sigmas(name: str, value: Any) -> None:
    """An explicit decoding grid: 2 to MAX_STEPS + 1 numbers >= 0, the first one possibly ``"inf"``."""
    ok = isinstance(value, list) and 2 <= len(value) <= MAX_STEPS + 1
    ok = ok and all(
        (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0)
        or (i == 0 and v == _INF)
        for i, v in enumerate(value)
    )
    if not ok:
        raise ValueError(
            f"{name} must be a list of 2 to {MAX_STEPS + 1} numbers >= 0 (the first one may be {_INF!r}), "
            f"got {reprlib.repr(value)}"
        )


def _hex(digits: int) -> Check:
    def check(name: str, value: Any) -> None:
        if not isinstance(value, str) or len(value) != digits or not set(value) <= set(string.hexdigits.lower()):
            raise ValueError(f"{name} must be {digits} lowercase hex digits, got {value!r}")

    return check


def _record(fields: Mapping[str, Check], optional: frozenset[str] = frozenset()) -> Check:
    """A JSON object with exactly ``fields`` (those in ``optional`` may be absent), each checked."""

    def check(name: str, value: Any) -> None:
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a JSON object, got {type(value).__name__}")
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ValueError(f"{name or 'the manifest'} has unknown field(s) {', '.join(map(repr, unknown))}")
        for key, check_field in fields.items():
            if key in value:
                check_field(f"{name}.{key}" if name else key, value[key])
            elif key not in optional:
                raise ValueError(f"{name or 'the manifest'} lacks the field {key!r}")

    return check


_HASHED = _record({"class": _text, "sha256": _hex(64), "verified": _flag})
#: the conditioning of a run (absent when unconditioned): hashes of the network's keyword arguments
#: and the guidance weight (see :mod:`.conditioning`)
_CONDITIONING = _record(
    {"model_kwargs_sha256": _hex(64), "guidance_scale": _finite, "uncond_kwargs_sha256": _hex(64)},
    frozenset({"guidance_scale", "uncond_kwargs_sha256"}),
)
_COMMON: dict[str, Check] = {
    "kind": _choice(*OUTPUTS),
    "dtype": _choice(*DTYPES),
    "num": _bounded(1, MAX_NUM),
    "shape": check_shape,
    "shard_size": _bounded(1, MAX_NUM),
    "solver": _text,
    "solver_options": _options,
    "n": _bounded(1),
    "grid": _choice(*GRIDS, EXPLICIT_GRID),
    "sigmas_sha256": _hex(64),
    "sigmas": _sigmas,
    "prediction": _choice(*PREDICTIONS),
    "model": _HASHED,
    "schedule": _HASHED,
    "conditioning": _CONDITIONING,
}
_BY_KIND = {
    "sample": _record(
        _COMMON | {"seed": _bounded(-(2**62)), "noise": _text, "solver_noise": _text},
        frozenset({"solver_noise", "conditioning", "sigmas"}),
    ),
    "encode": _record(_COMMON | {"data_sha256": _hex(64)}, frozenset({"conditioning", "sigmas"})),
}


def _arguments(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {type(value).__name__}")
    _choice(*OUTPUTS)(f"{name}.kind", value.get("kind"))
    _BY_KIND[value["kind"]](name, value)
    check_shard_count(value["num"], value["shard_size"])
    _check_explicit_grid(name, value)


def _check_explicit_grid(name: str, value: dict[str, Any]) -> None:
    """An explicit grid (``grid: "sigmas"``) comes with its values, ``n`` steps and their hash; a named one without."""
    explicit = value["grid"] == EXPLICIT_GRID
    if explicit != ("sigmas" in value):
        what = "lacks the field 'sigmas'" if explicit else f"has 'sigmas' although its grid is {value['grid']!r}"
        raise ValueError(f"{name} {what}")
    if not explicit:
        return
    sig = grid_from_values(value["sigmas"])
    if value["n"] != len(sig) - 1:
        raise ValueError(f"{name}.n must be {len(sig) - 1} (the steps of {name}.sigmas), got {value['n']}")
    if value["sigmas_sha256"] != grid_sha256(sig):
        raise ValueError(f"{name}.sigmas_sha256 does not match {name}.sigmas")


def _version(name: str, value: Any) -> None:
    if isinstance(value, bool) or value != FORMAT_VERSION:
        raise ValueError(f"{name} must be {FORMAT_VERSION} (the format this version reads), got {value!r}")


_MANIFEST = _record(
    {
        "format": _choice(FORMAT),
        "format_version": _version,
        "run_id": _hex(16),
        "arguments": _arguments,
        "environment": _record(
            {
                "torch": _text,
                "device_type": _text,
                "device_name": _text,
                "world_size": _bounded(1),
                "threads": _bounded(1),
            }
        ),
    }
)


def new_manifest(arguments: dict[str, Any], environment: dict[str, Any]) -> dict[str, Any]:
    """The manifest document of a new run (checked as every manifest read back will be)."""
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arguments": arguments,
        "environment": environment,
        "run_id": run_id(arguments),
    }
    _MANIFEST("", doc)
    return doc


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The checked manifest of the run in ``out_dir``; ``None`` when there is none.

    Raises:
        ResumeError: it is not a regular file, not JSON, not a manifest of a sharded run, or a field
            is missing, unknown, of the wrong type or out of bounds (the message names the field),
            or its run id does not match its arguments.
    """
    path = out_dir / MANIFEST
    try:
        if not is_regular_file(path):
            return None
        doc = read_json(path)
    except OSError as err:
        raise ResumeError(f"cannot read {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise ResumeError(f"{err}; use another out_dir") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ResumeError(f"{path} is not a manifest of a ddim_ode sharded run; use another out_dir")
    try:
        _MANIFEST("", doc)
    except (TypeError, ValueError) as err:
        raise ResumeError(f"{path} is damaged: {err}") from None
    if doc["run_id"] != run_id(doc["arguments"]):
        raise ResumeError(f"{path} is damaged: run_id does not match the arguments (was the file edited?)")
    return doc


_SHORT = reprlib.Repr()  # a long list (an explicit grid) is shown by its first values
_SHORT.maxlist, _SHORT.maxstring, _SHORT.maxother = 8, 80, 80


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``field: old on disk vs new now`` for every argument that differs (long lists abbreviated)."""
    keys = sorted(set(old) | set(new))
    return [
        f"{k}: {_SHORT.repr(old.get(k))} on disk vs {_SHORT.repr(new.get(k))} now"
        for k in keys
        if old.get(k) != new.get(k)
    ]


def open_run(out_dir: Path, arguments: dict[str, Any], environment: dict[str, Any]) -> None:
    """Create ``out_dir`` with the manifest of a new run, or check that it holds this very run.

    A change of device type or torch version between runs is allowed with a warning.

    Raises:
        ResumeError: ``out_dir`` holds a run with other arguments (the differences are listed),
            shard files without a manifest, or a manifest :func:`read_manifest` refuses.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = read_manifest(out_dir)
    if doc is None:
        if any(parse_shard_name(p.name) for p in out_dir.iterdir()):
            raise ResumeError(f"{out_dir} holds shard files but no {MANIFEST}; refusing to mix runs, use a new out_dir")
        check_writable(out_dir / MANIFEST)
        write_json(out_dir / MANIFEST, new_manifest(arguments, environment), sort_keys=True)
        return
    diffs = _differences(doc["arguments"], arguments)
    if diffs:
        raise ResumeError(
            f"refusing to resume in {out_dir}: it holds a run made with other arguments ("
            + "; ".join(diffs)
            + "). Use the same arguments to resume, or a new out_dir"
        )
    old_env = doc["environment"]
    changed = [k for k in ("device_type", "torch") if old_env[k] != environment[k]]
    if changed:
        warnings.warn(
            f"resuming in {out_dir} with a different {', '.join(changed)} "
            f"({', '.join(f'{old_env[k]} -> {environment[k]}' for k in changed)}): the shards "
            "already written are valid but may differ in the last bits from a run made here",
            stacklevel=2,
        )

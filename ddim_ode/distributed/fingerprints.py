"""What identifies a run: SHA-256 hashes of tensors, models, schedules and the run's arguments."""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..analytic import AnalyticModel
from ..schedules import Schedule

__all__ = ["sha256", "tensor_bytes", "grid_sha256", "fingerprint", "jsonable", "run_id"]


def sha256(*chunks: bytes) -> str:
    """Hex SHA-256 of the chunks, each prefixed by its length (so that no two sequences collide)."""
    h = hashlib.sha256()
    for c in chunks:
        h.update(len(c).to_bytes(8, "little"))
        h.update(c)
    return h.hexdigest()


def tensor_bytes(t: Tensor) -> bytes:
    """dtype, shape and raw bytes of a tensor (bfloat16 as its 16-bit pattern)."""
    t = t.detach().cpu().contiguous()
    head = f"{t.dtype}{tuple(t.shape)}".encode()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return head + t.numpy().tobytes()


def grid_sha256(sig: np.ndarray | Tensor) -> str:
    """The hash of a σ grid: its float64 values' bytes."""
    values = sig.detach().cpu().numpy() if isinstance(sig, Tensor) else sig
    return sha256(np.asarray(values, dtype=np.float64).tobytes())


def fingerprint(obj: Any) -> dict[str, Any]:
    """What identifies a model or schedule: its class and a hash of its numbers (if it has any).

    The numbers are a module's ``state_dict`` (and its ``config``), and the tensor, number and
    string attributes of the object (private ones too for a schedule, whose tables are private).
    ``verified`` is false when no numbers were found (a plain function: only its name is hashed).
    """
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    chunks: list[bytes] = [kind.encode()]
    numbers = False
    if isinstance(obj, torch.nn.Module):
        for name, t in obj.state_dict().items():
            chunks += [name.encode(), tensor_bytes(t)]
            numbers = True
        cfg = getattr(obj, "config", None)
        if cfg is not None:
            chunks.append(repr(cfg).encode())
    attrs = vars(obj) if hasattr(obj, "__dict__") else {}
    for name in sorted(attrs):
        if name.startswith("_") and not isinstance(obj, Schedule):
            continue
        if isinstance(getattr(type(obj), name, None), functools.cached_property):
            continue  # a value derived from the others and cached on first use (e.g. sigma_max)
        val = attrs[name]
        if isinstance(val, Tensor):
            chunks += [name.encode(), tensor_bytes(val)]
            numbers = True
        elif isinstance(val, (bool, int, float, str)):
            chunks += [name.encode(), repr(val).encode()]
            numbers = True
        elif isinstance(val, (AnalyticModel, Schedule)):
            chunks += [name.encode(), fingerprint(val)["sha256"].encode()]
            numbers = True
    if not numbers and callable(obj):
        name = getattr(obj, "__qualname__", kind)
        chunks.append(str(name).encode())
    return {"class": kind, "sha256": sha256(*chunks), "verified": numbers}


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON, or its ``repr`` when it is not JSON."""
    try:
        return json.loads(json.dumps(value, sort_keys=True))
    except (TypeError, ValueError):
        return repr(value)


def run_id(arguments: dict[str, Any]) -> str:
    """The run id: the first 16 hex digits of the hash of the arguments as sorted JSON."""
    return sha256(json.dumps(arguments, sort_keys=True).encode())[:16]

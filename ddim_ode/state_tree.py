"""Solver states as flat lists of tensors, and back.

A solver's state is whatever its :meth:`~ddim_ode.solvers.Solver.step` carries: tensors, tuples,
named tuples, lists, dicts and dataclasses of them, with any other value kept as a constant. The
adjoint differentiates through states of every solver by flattening them to their tensors.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

__all__ = ["flatten"]


def flatten(obj: Any) -> tuple[list[Tensor], Callable[[Sequence[Tensor]], Any]]:
    """The tensors inside ``obj`` and a function rebuilding ``obj`` with other tensors in their place."""
    if isinstance(obj, Tensor):
        return [obj], lambda ts: ts[0]
    if isinstance(obj, (tuple, list)):
        parts = [flatten(o) for o in obj]
        sizes = [len(p[0]) for p in parts]
        leaves = [t for p in parts for t in p[0]]

        def rebuild_seq(ts: Sequence[Tensor]) -> Any:
            out, i = [], 0
            for (_, fn), k in zip(parts, sizes):
                out.append(fn(ts[i : i + k]))
                i += k
            if isinstance(obj, list):
                return out
            return type(obj)(*out) if hasattr(obj, "_fields") else type(obj)(out)

        return leaves, rebuild_seq
    if isinstance(obj, dict):
        keys = list(obj)
        leaves_d, rebuild_vals = flatten([obj[k] for k in keys])
        return leaves_d, lambda ts: type(obj)(zip(keys, rebuild_vals(ts)))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        names = [f.name for f in dataclasses.fields(obj)]
        leaves_c, rebuild_fields = flatten([getattr(obj, n) for n in names])

        def rebuild_dc(ts: Sequence[Tensor]) -> Any:
            new = copy.copy(obj)  # also for frozen and slotted dataclasses; no __init__ re-run
            for n, v in zip(names, rebuild_fields(ts)):
                object.__setattr__(new, n, v)
            return new

        return leaves_c, rebuild_dc
    if hasattr(obj, "__dict__") and any(isinstance(v, Tensor) for v in vars(obj).values()):
        raise TypeError(
            f"the adjoint cannot trace tensors inside a solver state of type {type(obj).__name__}; "
            "solver states must be tensors, tuples, lists, dicts or dataclasses of them"
        )
    return [], lambda ts: obj

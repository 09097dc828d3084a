"""Conditioning of a sharded run: keyword arguments of the network, sliced by sample index, and guidance.

A tensor keyword argument whose first dimension is the run's ``num`` is *per sample*: row ``i``
belongs to index ``i``, and each shard passes the network the rows of its own indices (the padded
rows of the last shard repeat the last index), so sample ``i`` sees the same conditioning whatever
the shard size, the number of processes or the interruptions. Anything else is shared and passed
as it is. The manifest records a hash of the keyword arguments and the guidance weight, so that a
resume with other labels or another weight is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..field import conditioning_arguments
from .fingerprints import jsonable, sha256, tensor_bytes

__all__ = ["RunConditioning"]


def _kwargs_sha256(kwargs: Mapping[str, Any]) -> str:
    """A hash of keyword arguments: names, and tensors' bytes or other values' JSON (else ``repr``)."""
    chunks: list[bytes] = []
    for name in sorted(kwargs):
        value = kwargs[name]
        chunks += [name.encode(), tensor_bytes(value) if isinstance(value, Tensor) else repr(jsonable(value)).encode()]
    return sha256(*chunks)


@dataclass(frozen=True)
class RunConditioning:
    """The keyword arguments and guidance of a sharded run, checked, with what the manifest records.

    Attributes:
        model_kwargs: passed to every network call (per-sample tensors are sliced per shard).
        guidance_scale: classifier-free guidance weight w, or ``None``.
        uncond_kwargs: the unconditional call's keyword arguments when guided.
        per_sample: the names of the per-sample tensors (in either dict).
        num: the number of indices of the run.
    """

    model_kwargs: dict[str, Any]
    guidance_scale: float | None
    uncond_kwargs: dict[str, Any] | None
    per_sample: frozenset[str]
    num: int

    @classmethod
    def make(
        cls,
        model: Any,
        num: int,
        model_kwargs: dict[str, Any] | None,
        guidance_scale: float | None,
        uncond_kwargs: dict[str, Any] | None,
    ) -> RunConditioning:
        """Check the arguments; without ``uncond_kwargs`` a guided run asks the model
        (a :class:`~ddim_ode.field.NullConditionModel`) for ``null_kwargs(model_kwargs)`` now, before any work."""
        cond, w, uncond_kwargs = conditioning_arguments(model, model_kwargs, guidance_scale, uncond_kwargs)
        names = frozenset(
            k
            for kw in (cond, uncond_kwargs or {})
            for k, v in kw.items()
            if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == num
        )
        for kw in (cond, uncond_kwargs or {}):  # per-sample rows are read on the CPU, shard by shard
            for k in names & kw.keys():
                kw[k] = kw[k].detach().cpu()
        return cls(cond, w, uncond_kwargs, names, num)

    @property
    def empty(self) -> bool:
        """Whether the run is unconditioned (no keyword arguments, no guidance)."""
        return not self.model_kwargs and self.guidance_scale is None

    def record(self) -> dict[str, Any]:
        """The manifest's ``conditioning``: hashes of the keyword arguments and the guidance weight."""
        out: dict[str, Any] = {"model_kwargs_sha256": _kwargs_sha256(self.model_kwargs)}
        if self.guidance_scale is not None:
            out["guidance_scale"] = self.guidance_scale
            out["uncond_kwargs_sha256"] = _kwargs_sha256(self.uncond_kwargs or {})
        return out

    def solve_kwargs(self, starts: Sequence[int], size: int, device: torch.device) -> dict[str, Any]:
        """The conditioning arguments of :func:`ddim_ode.decode` / :func:`ddim_ode.encode` for the shards
        of ``size`` rows that begin at ``starts`` (integrated together, in this order)."""
        if self.empty:
            return {}
        index = torch.cat([torch.arange(s, s + size) for s in starts]).clamp_(max=self.num - 1)

        def rows(kw: dict[str, Any]) -> dict[str, Any]:
            return {k: v[index].to(device) if k in self.per_sample else v for k, v in kw.items()}

        out: dict[str, Any] = {"model_kwargs": rows(self.model_kwargs)}
        if self.guidance_scale is not None:
            out["guidance_scale"] = self.guidance_scale
            out["uncond_kwargs"] = rows(self.uncond_kwargs or {})
        return out

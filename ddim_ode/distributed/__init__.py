"""Sampling and encoding into a folder of shards, on one process or on many (``torch.distributed``).

The indices ``0 .. num−1`` are cut into shards of ``shard_size`` consecutive indices; the shards
still to do are dealt round-robin to the ranks of the process group (one process without a group:
world size 1). Every rank writes each finished shard atomically (temporary name, then
``os.replace``) as ``shard-<start>-<stop>.npz`` next to a ``manifest.json`` that records every
argument the numbers depend on. A re-run with the same arguments keeps the valid shards, computes
the missing ones, and refuses to continue when the arguments differ. Finally rank 0, after all
ranks are done, checks that every index is present exactly once and writes ``samples.npy``
(``latents.npy`` and ``latents.npz`` for encoding) atomically, plus ``samples.png`` (the first 64
images) when the samples are images.

What is deterministic (bit for bit, for a given device type, library build and thread setting):

* The initial noise of sample ``i`` depends only on ``(seed, i)`` (:func:`index_noise`, the same
  numbers as ``ddim-ode sample``); it is drawn on the CPU in float32, whatever the device.
* The network is always evaluated on whole shards of exactly ``shard_size`` rows (the last shard
  is padded with the following indices, which are dropped), because batched matrix products can
  round differently at another batch size. Sample ``i`` therefore depends on
  ``(seed, i, shard_size)`` and the model/solver arguments, and *not* on ``num``, the number of
  processes, the rank a shard lands on, ``batch_size``, or how often the run was interrupted.
* ``shard_size`` itself (and the device type, the torch build, CPU thread counts, cuDNN/cuBLAS
  algorithm choices) can change the last bits; it is part of the manifest.

The parts: :mod:`.groups` (the process group), :mod:`.noise` (per-index noise),
:mod:`.fingerprints` (hashes of models, data and arguments), :mod:`.layout` (the file names of a
run folder and which of them the package owns), :mod:`.manifest` (writing and checking it),
:mod:`.shards` (one shard file), :mod:`.merge` (the merged outputs), :mod:`.decode_input` (an
encoding run's ``latents.npz``), :mod:`.plan` (checked arguments) and :mod:`.driver` (the run itself).

Launch with e.g. ``torchrun --nproc-per-node 4 -m ddim_ode sample ...`` (NCCL on GPUs, gloo on
the CPU); see ``docs/scaling.md``.
"""

from .driver import ShardedRun, encode_to_dir, sample_to_dir
from .groups import DistInfo, dist_info, process_group
from .layout import MANIFEST
from .manifest import ResumeError
from .merge import merge_dir
from .noise import index_noise
from .shards import shard_ranges

__all__ = [
    "ShardedRun",
    "ResumeError",
    "DistInfo",
    "sample_to_dir",
    "encode_to_dir",
    "merge_dir",
    "index_noise",
    "shard_ranges",
    "dist_info",
    "process_group",
    "MANIFEST",
]

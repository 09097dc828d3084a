"""CPU threads of the ``ddim-ode`` command: chosen for the work, never over a user's own setting.

Two settings decide how a CPU run behaves on a machine it shares with other processes:

* OpenMP's wait policy. PyTorch's CPU kernels run on OpenMP threads that, by default, spin while
  waiting for the next parallel region; beside another busy process the spinning threads take
  the cores the working ones need and a run can take several times longer. ``OMP_WAIT_POLICY=PASSIVE``
  makes idle threads sleep. The OpenMP runtime reads it once, when it is loaded by ``import
  torch``, so :func:`set_wait_policy` must run first: this module imports nothing heavy, and the
  entry point (``ddim_ode.__main__``) calls it before importing the command line.
* The number of threads. PyTorch starts one per physical core whatever the size of the work;
  :func:`threads_for` asks for no more threads than the work can keep busy and no more than there
  are idle cores (see its docstring).

A user's own ``OMP_WAIT_POLICY``, ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` is always left alone.
The library itself never changes either setting; only the command-line entry point does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

__all__ = [
    "WAIT_POLICY",
    "THREAD_VARIABLES",
    "ELEMENTS_PER_THREAD",
    "set_wait_policy",
    "user_set_threads",
    "usable_cores",
    "threads_for",
    "set_threads_for",
]

#: the wait policy the command uses unless the user set one
WAIT_POLICY = "PASSIVE"
#: environment variables by which a user fixes the number of threads
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: sample elements (batch x C x H x W) per thread: with ~32 channels in the first stage of a UNet
#: they make 32,768 activations, PyTorch's grain size for splitting an element-wise kernel
ELEMENTS_PER_THREAD = 1024


def set_wait_policy(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it (effective only before ``import torch``)."""
    environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)


def user_set_threads(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the user fixed the thread count through ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS``."""
    return any(environ.get(name, "").strip() for name in THREAD_VARIABLES)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), and of those the ones not already busy.

    Busy cores are estimated by the one-minute load average of the machine (Unix), rounded.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows, or no load average
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def threads_for(elements: int, cores: int | None = None) -> int:
    """Threads for a network batch of ``elements`` sample elements (batch × C × H × W).

    One thread per :data:`ELEMENTS_PER_THREAD` elements, at least one and at most ``cores``
    (default :func:`usable_cores`): a small batch gains nothing from more threads, which only
    add synchronisation, and threads beyond the idle cores compete with the processes already
    running there.
    """
    cap = usable_cores() if cores is None else cores
    return max(1, min(cap, elements // ELEMENTS_PER_THREAD))


def set_threads_for(elements: int, environ: Mapping[str, str] = os.environ) -> int | None:
    """``torch.set_num_threads(threads_for(elements))`` unless the user set the thread count.

    Returns the number set, or ``None`` when the user's setting was kept.
    """
    if user_set_threads(environ):
        return None
    import torch

    n = threads_for(elements)
    torch.set_num_threads(n)
    return n

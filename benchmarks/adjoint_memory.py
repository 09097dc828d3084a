"""Peak memory of gradients through decode: plain autograd against the discrete adjoint, versus n.

Every configuration (method, n) runs in a fresh Python process, which measures, around one
``decode`` + ``backward`` with respect to x_T and every parameter of the network:

* ``peak_rss_mib``: the peak resident set size above the level just before the call, sampled every
  millisecond from ``/proc/self/statm`` by a helper thread (torch releases the GIL inside ops) and
  checked against ``getrusage``; on CUDA, ``torch.cuda.max_memory_allocated`` above the level
  before the call instead. On CPU this is what the operating system had to provide, allocator
  caching included: meaningful for differences of tens of MiB, not for single tensors.
* ``saved_mib``: the bytes of the distinct storages autograd saved for the backward pass while the
  forward ran (``torch.autograd.graph.saved_tensors_hooks``; the parameters themselves, which are
  saved by reference, excluded): exact and allocator-independent, but blind to the step graphs
  the adjoint builds transiently during its backward pass.
* ``nfe_forward`` / ``nfe_total`` (network calls before / after the backward pass), wall time,
  and the largest relative difference of the adjoint's gradients from plain autograd's.

The network is the package's UNet (the built-in model's architecture, random weights: memory
and cost do not depend on the weights), float32, batch 16 of 1×8×8, Euler (= DDIM), one thread.

    python benchmarks/adjoint_memory.py --out docs/results/likelihood_adjoint_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from record import collect, save_record

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("plain", "adjoint-c0", "adjoint-sqrt")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _rss_bytes()
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.001)


def worker(method: str, n: int, batch: int, solver: str, seed: int) -> dict[str, object]:
    import torch

    import ddim_ode
    from ddim_ode.unet import UNet, UNetConfig

    torch.set_num_threads(1)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    net = UNet(UNetConfig()).to(dev).eval()
    calls = [0]

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return net(x_t, t)

    params = list(net.parameters())
    schedule = ddim_ode.DiscreteSchedule.linear()
    g = torch.Generator(device=dev).manual_seed(seed + 1)
    x_T = torch.randn(batch, 1, 8, 8, generator=g, device=dev)
    w = torch.randn(batch, 1, 8, 8, generator=g, device=dev)
    sigmas = ddim_ode.make_grid(schedule, "karras", n)
    checkpoints = {"adjoint-c0": 0, "adjoint-sqrt": max(0, round(n**0.5) - 1)}.get(method, 0)

    def run(x: torch.Tensor) -> torch.Tensor:
        kw = dict(model=model, schedule=schedule, sigmas=sigmas)
        if method == "plain":
            return ddim_ode.decode(x, solver, n, **kw)
        return ddim_ode.decode(x, solver, n, adjoint=True, params=params, checkpoints=checkpoints, **kw)

    # warm-up (lazy initialisation, allocator pools), then the measured call
    small = ddim_ode.decode(x_T[:2].clone().requires_grad_(True), solver, 2, model=model, schedule=schedule)
    small.sum().backward()
    del small
    net.zero_grad(set_to_none=True)
    saved = [0]
    seen = {p.data_ptr() for p in params} | {x_T.data_ptr()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in seen:  # distinct storage, the parameters themselves excluded
            seen.add(t.data_ptr())
            saved[0] += t.untyped_storage().nbytes()
        return t

    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = _rss_bytes()
    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sampler = _PeakSampler()
    sampler.start()
    calls[0] = 0
    t0 = time.perf_counter()
    x = x_T.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run(x)
    nfe_forward = calls[0]
    got = torch.autograd.grad((out * w).sum(), [x, *params])
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    sampler.stop = True
    sampler.join()
    maxrss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = max(sampler.peak, maxrss1 if maxrss1 > maxrss0 else 0)
    result: dict[str, object] = {
        "method": method,
        "n": n,
        "checkpoints": checkpoints if method != "plain" else None,
        "batch": batch,
        "solver": solver,
        "device": str(dev),
        "peak_rss_mib": (peak - rss0) / 2**20,
        "saved_mib": saved[0] / 2**20,
        "nfe_forward": nfe_forward,
        "nfe_total": calls[0],
        "seconds": seconds,
    }
    if dev.type == "cuda":
        result["peak_cuda_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    if method != "plain":
        ref = _plain_grads(x_T, w, model, schedule, sigmas, solver, n, params)
        result["max_rel_grad_diff"] = max(
            float((a - b).abs().max() / b.abs().max().clamp(min=1e-30)) for a, b in zip(got, ref)
        )
    return result


def _plain_grads(x_T, w, model, schedule, sigmas, solver, n, params):  # type: ignore[no-untyped-def]
    import torch

    import ddim_ode

    x = x_T.clone().requires_grad_(True)
    out = ddim_ode.decode(x, solver, n, model=model, schedule=schedule, sigmas=sigmas)
    return list(torch.autograd.grad((out * w).sum(), [x, *params]))


def _run_workers(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """One fresh process per (n, method); each prints its row as JSON."""
    for n in args.ns:
        for method in args.methods:
            cmd = [sys.executable, __file__, "--worker", method, str(n), "--batch", str(args.batch)]
            cmd += ["--solver", args.solver, "--seed", str(args.seed)]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
            yield json.loads(proc.stdout.strip().splitlines()[-1])


def _line(row: dict[str, Any]) -> str:
    return (
        f"n={row['n']:4d} {row['method']:13s} peak_rss={row['peak_rss_mib']:8.1f} MiB  "
        f"saved={row['saved_mib']:8.1f} MiB  "
        f"nfe={row['nfe_forward']}/{row['nfe_total']}  {row['seconds']:.1f}s"
        + (f"  grad_rel_diff={row['max_rel_grad_diff']:.1e}" if "max_rel_grad_diff" in row else "")
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", type=int, nargs="+", default=[10, 20, 40, 80])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--solver", default="euler")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.batch, args.solver, args.seed)))
        return 0
    rows = collect(_run_workers(args), _line)
    save_record(args.out, __file__, argv, rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

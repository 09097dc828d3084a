"""Page faults and time per NFE of ``decode`` at one batch size, in a fresh process (CPU).

    python benchmarks/page_faults.py [--batch 128] [--steps 50] [--repeats 5] [SOLVER ...]

The ε-model costs next to nothing (ε = 0.1 x_t), as in ``benchmarks/overhead.py``, but here each
solver runs in a process that has done nothing else first, which is what a script that decodes
one large batch sees. With glibc's default allocator, state-sized CPU tensors (1.5 MB at batch 128
of 3×32×32 float32) are returned to the system when freed and page-faulted in afresh when
allocated again; the minor page faults per NFE show it. Run it once as is and once with
``MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=4000000000`` (or with jemalloc/tcmalloc
preloaded) to see the allocator's share of the time.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from torch import Tensor

from ddim_ode import DiscreteSchedule, decode


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("solvers", nargs="*", default=["euler", "dpm-solver++2m", "unipc"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    schedule = DiscreteSchedule.linear()

    def model(x_t: Tensor, t: Tensor) -> Tensor:
        return x_t * 0.1

    x = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    print("| solver | minor page faults / NFE | µs / NFE |\n|---|---|---|")
    with torch.inference_mode():
        for name in args.solvers:
            decode(x, name, args.steps, model=model, schedule=schedule)  # warm-up
            faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            nfe = 0
            for _ in range(args.repeats):
                nfe += decode(x, name, args.steps, model=model, schedule=schedule, return_solution=True).nfe  # type: ignore[union-attr]
            seconds = time.perf_counter() - t0
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
            print(f"| {name} | {faults / nfe:.0f} | {1e6 * seconds / nfe:.0f} |")


if __name__ == "__main__":
    main()

"""What the main job costs as a whole process: start-up, and running beside another PyTorch process.

    python benchmarks/startup.py [--repeats 5] [--num 64] [--steps 20] [--matmul-size 512]
                                 [--keep-env] [--out results.json]

Three commands are timed as whole processes (wall clock, from start to exit):

* ``torch`` — ``python -c "import torch"``: the floor of any PyTorch command;
* ``sample`` — ``python -m ddim_ode sample --num 64 -n 20 --out TMP/s.png -q``: the main job;
* ``sample+busy`` — the same command while a second Python process runs ``torch.mm`` in a loop
  with PyTorch's default threads (one per core, default OpenMP wait policy), as another user's
  job on a shared machine would. It is started before the command and stopped after it.

Every repeat runs the three in turn (interleaved), so a change in the machine's load affects all
of them alike; the report gives, over the repeats, the median of the per-repeat ratios
``sample / torch`` (target ≤ 1.5) and ``sample+busy / sample`` (target ≤ 2), with the medians of
the times. The commands run without the thread variables ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``
and ``OMP_WAIT_POLICY`` (as a user's default shell has them), unless ``--keep-env``.

Time the idle machine: the ratios mean nothing when other work competes for the cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ddim_ode._files import write_json

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
TARGETS = {"sample / torch": 1.5, "sample+busy / sample": 2.0}

#: the competing process: a matmul loop with default threads; prints "ready" once it runs
BUSY = """
import sys, torch
a = torch.randn({n}, {n}); b = torch.randn({n}, {n})
torch.mm(a, b)
print("ready", flush=True)
while True:
    torch.mm(a, b)
"""


def _env(keep: bool) -> dict[str, str]:
    return dict(os.environ) if keep else {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}


def _timed(cmd: list[str], env: dict[str, str], cwd: str) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
    return wall


def _beside_busy(cmd: list[str], env: dict[str, str], cwd: str, size: int) -> float:
    busy = subprocess.Popen(
        [sys.executable, "-c", BUSY.format(n=size)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert busy.stdout is not None
        if busy.stdout.readline().strip() != "ready":
            raise SystemExit("the competing matmul process did not start")
        return _timed(cmd, env, cwd)
    finally:
        busy.kill()
        busy.wait()


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats (default 5)")
    p.add_argument("--num", type=int, default=64, help="samples (default 64)")
    p.add_argument("--steps", type=int, default=20, help="steps (default 20)")
    p.add_argument("--matmul-size", type=int, default=512, help="matrix size of the competing loop (default 512)")
    p.add_argument("--keep-env", action="store_true", help="keep the caller's thread variables")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.num < 1 or args.steps < 1 or args.matmul_size < 1:
        p.error("--repeats, --num, --steps and --matmul-size must be >= 1")

    env = _env(args.keep_env)
    times: dict[str, list[float]] = {"torch": [], "sample": [], "sample+busy": []}
    with tempfile.TemporaryDirectory() as tmp:
        torch_cmd = [sys.executable, "-c", "import torch"]
        sample_cmd = [sys.executable, "-m", "ddim_ode", "sample", "--num", str(args.num), "-n", str(args.steps)]
        sample_cmd += ["--out", str(Path(tmp) / "s.png"), "-q"]
        _timed(torch_cmd, env, tmp)  # warm the file cache once, untimed
        for i in range(args.repeats):
            times["torch"].append(_timed(torch_cmd, env, tmp))
            times["sample"].append(_timed(sample_cmd, env, tmp))
            times["sample+busy"].append(_beside_busy(sample_cmd, env, tmp, args.matmul_size))
            print(f"repeat {i + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))

    ratios = {
        "sample / torch": statistics.median(s / t for s, t in zip(times["sample"], times["torch"])),
        "sample+busy / sample": statistics.median(b / s for b, s in zip(times["sample+busy"], times["sample"])),
    }
    print(f"\n{'ratio':<22} {'median':>7} {'target':>7}")
    for name, value in ratios.items():
        verdict = "ok" if value <= TARGETS[name] else "ABOVE TARGET"
        print(f"{name:<22} {value:>7.2f} {TARGETS[name]:>7.1f}  {verdict}")
    print("median times: " + ", ".join(f"{k} {statistics.median(v):.2f}s" for k, v in times.items()))
    result: dict[str, object] = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "settings": vars(args),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "times_s": times,
        "ratios": ratios,
        "targets": TARGETS,
    }
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()

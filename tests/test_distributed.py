"""Sharded, resumable sampling/encoding: identical output for any number of processes, any batch
size and any interruption; resume refused when the arguments differ."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fixed_grid_solvers

from ddim_ode import DiscreteSchedule, decode, encode
from ddim_ode._files import TMP_MARK
from ddim_ode.analytic import GaussianMixture
from ddim_ode.distributed import (
    MANIFEST,
    ResumeError,
    encode_to_dir,
    index_noise,
    merge_dir,
    sample_to_dir,
    shard_ranges,
)
from ddim_ode.solvers import get_solver
from ddim_ode.unet import UNet, UNetConfig

NUM, SHARD, STEPS = 40, 8, 4  # 5 shards, the last one full; 20 network calls with euler
SCHEDULE = DiscreteSchedule.linear()


def tiny_unet(seed: int = 0) -> UNet:
    """A small UNet with all weights perturbed (a fresh DDPM init outputs zeros)."""
    g = torch.Generator().manual_seed(seed)
    model = UNet(UNetConfig(base_channels=8, num_res_blocks=1, resolution=8, attention=False), generator=g)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


class MLP(torch.nn.Module):
    """A cheap ε-model on 6-D events."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(8, 32, generator=g) * 0.4)
        self.w2 = torch.nn.Parameter(torch.randn(32, 6, generator=g) * 0.4)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = t.to(x_t.dtype)[:, None] / 1000.0
        return torch.tanh(torch.cat([x_t, torch.sin(tt), torch.cos(tt)], 1) @ self.w1) @ self.w2


def _run(out: Path, **kw) -> np.ndarray:
    num = kw.pop("num", NUM)
    args = dict(model=tiny_unet(), schedule=SCHEDULE, n=STEPS, shard_size=SHARD, seed=3, device="cpu") | kw
    res = sample_to_dir(out, num, **args)
    assert res.merged is not None
    return np.load(res.merged)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Bits on the CPU depend on the thread count; the spawned workers use one thread too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(one_thread, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """One process, one shard per solver call."""
    return _run(tmp_path_factory.mktemp("ref") / "run")


# ---------------------------------------------------------------------------------------------
# workers started in fresh processes (module level, so that "spawn" can import them)


def _gloo_worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        _run(Path(out), batch_size=2 * SHARD)
    finally:
        torch.distributed.destroy_process_group()


def _killed_worker(out: str, at: int) -> None:
    """Runs the reference job and kills itself with SIGKILL (no clean-up runs) on network call ``at``."""
    torch.set_num_threads(1)
    forward, calls = UNet.forward, [0]

    def dying_forward(self: UNet, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return forward(self, x, t)

    UNet.forward = dying_forward  # only in this process: the model itself (and its fingerprint) is unchanged
    _run(Path(out))


# ---------------------------------------------------------------------------------------------


def test_noise_depends_only_on_seed_and_index():
    from ddim_ode.cli_common import seeded_noise

    full = index_noise(7, 0, 12, (1, 8, 8))
    assert torch.equal(index_noise(7, 5, 12, (1, 8, 8)), full[5:])
    assert torch.equal(seeded_noise(12, (1, 8, 8), 7, torch.device("cpu")), full)  # the numbers of `ddim-ode sample`
    assert not torch.equal(index_noise(8, 0, 12, (1, 8, 8)), full)
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]


def test_single_process_output_is_independent_of_batch_size_and_num(reference, tmp_path):
    assert reference.shape == (NUM, 1, 8, 8) and reference.dtype == np.float32
    assert np.array_equal(_run(tmp_path / "grouped", batch_size=3 * SHARD), reference)  # 3 shards per solver call
    assert np.array_equal(_run(tmp_path / "short", num=NUM - 13), reference[: NUM - 13])  # last shard padded
    direct = decode(index_noise(3, SHARD, 2 * SHARD, (1, 8, 8)), "euler", STEPS, model=tiny_unet(), schedule=SCHEDULE)
    assert np.array_equal(direct.detach().numpy(), reference[SHARD : 2 * SHARD])
    assert (tmp_path / "grouped" / "samples.png").is_file()


def test_two_gloo_processes_match_one_process(reference, tmp_path):
    out = tmp_path / "two"
    torch.multiprocessing.spawn(_gloo_worker, args=(2, str(tmp_path / "pg"), str(out)), nprocs=2, join=True)
    assert np.array_equal(np.load(out / "samples.npy"), reference)
    assert len(list(out.glob("shard-*.npz"))) == NUM // SHARD


def test_killed_run_resumes_to_the_uninterrupted_output(reference, tmp_path):
    out = tmp_path / "killed"
    proc = multiprocessing.get_context("spawn").Process(target=_killed_worker, args=(str(out), 2 * STEPS + 2))
    proc.start()
    proc.join(timeout=120)
    assert proc.exitcode == -signal.SIGKILL
    done = sorted(p.name for p in out.glob("shard-*.npz"))
    assert done == ["shard-00000000-00000008.npz", "shard-00000008-00000016.npz"]  # killed inside the third
    assert not (out / "samples.npy").exists()
    stale = out / f".shard-00000016-00000024.npz{TMP_MARK}x1y2z3.tmp.npz"  # what a kill during a write leaves
    stale.write_bytes(b"half")
    calls: list[tuple[int, int]] = []
    res = sample_to_dir(
        out,
        NUM,
        model=tiny_unet(),
        schedule=SCHEDULE,
        n=STEPS,
        shard_size=SHARD,
        seed=3,
        device="cpu",
        batch_size=2 * SHARD,
        progress=lambda k, total: calls.append((k, total)),
    )
    assert (res.shards_skipped, res.shards_computed, res.nfe) == (2, 3, 2 * STEPS)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert np.array_equal(np.load(out / "samples.npy"), reference)
    assert not stale.exists()


def test_resume_with_other_arguments_is_refused(tmp_path):
    ring = GaussianMixture.ring()
    kw = dict(model=ring, schedule=SCHEDULE, n=3, shard_size=4, seed=1, device="cpu")
    first = sample_to_dir(tmp_path, 10, **kw)
    assert first.shards_computed == 3
    for change, name in (
        ({"n": 4}, "n:"),
        ({"seed": 2}, "seed:"),
        ({"shard_size": 5}, "shard_size:"),
        ({"model": GaussianMixture.ring(k=6)}, "model:"),
        ({"solver": "heun"}, "solver:"),
    ):
        with pytest.raises(ResumeError, match=f"refusing to resume.*{name}"):
            sample_to_dir(tmp_path, 10, **(kw | change))
    with pytest.raises(ResumeError, match="num:"):
        sample_to_dir(tmp_path, 11, **kw)
    again = sample_to_dir(tmp_path, 10, **(kw | {"batch_size": 8}))  # batch size is not an argument of the result
    assert (again.shards_skipped, again.shards_computed) == (3, 0)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "shard-00000000-00000004.npz").write_bytes(b"")
    with pytest.raises(ResumeError, match="no manifest.json"):
        sample_to_dir(foreign, 10, **kw)


def test_corrupt_shard_is_recomputed_and_missing_indices_are_named(tmp_path):
    kw = dict(model=MLP(), schedule=SCHEDULE, n=3, shard_size=4, shape=(6,), device="cpu")
    ref = np.load(sample_to_dir(tmp_path, 10, **kw).merged)
    shard = tmp_path / "shard-00000004-00000008.npz"
    shard.write_bytes(shard.read_bytes()[:-20])  # a truncated file (e.g. a disk error)
    res = sample_to_dir(tmp_path, 10, **kw)
    assert (res.shards_skipped, res.shards_computed) == (2, 1)
    assert np.array_equal(np.load(res.merged), ref)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="misses indices 4-7"):
        merge_dir(tmp_path)
    (tmp_path / MANIFEST).unlink()
    with pytest.raises(ResumeError):
        merge_dir(tmp_path)


FIXED_GRID = fixed_grid_solvers()


@pytest.mark.parametrize("solver", FIXED_GRID)
def test_every_fixed_grid_solver_is_independent_of_batch_size(solver, tmp_path):
    kw = dict(model=MLP(), schedule=SCHEDULE, n=4, shard_size=3, shape=(6,), solver=solver, device="cpu")
    one = np.load(sample_to_dir(tmp_path / "a", 10, **kw).merged)
    grouped = np.load(sample_to_dir(tmp_path / "b", 10, batch_size=9, **kw).merged)
    assert np.isfinite(one).all()
    assert np.array_equal(one, grouped)


def test_encode_to_dir_matches_encode_per_shard(tmp_path):
    mix = GaussianMixture.random(k=3, dim=6, seed=0)
    data = mix.sample(11, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    kw = dict(model=mix, schedule=SCHEDULE, n=5, shard_size=4, device="cpu")
    lat = np.load(encode_to_dir(data, tmp_path / "a", **kw).merged)
    assert np.array_equal(np.load(encode_to_dir(data, tmp_path / "b", batch_size=12, **kw).merged), lat)
    first = encode(data[:4], "euler", 5, model=mix, schedule=SCHEDULE)
    assert np.array_equal(first.numpy(), lat[:4])
    with pytest.raises(ResumeError, match="data_sha256"):
        encode_to_dir(data + 1, tmp_path / "a", **kw)


def test_encode_to_dir_keeps_a_reversible_solver_state(tmp_path):
    mix = GaussianMixture.random(k=3, dim=6, seed=0)
    data = mix.sample(8, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    encode_to_dir(data, tmp_path, model=mix, schedule=SCHEDULE, n=5, shard_size=4, solver="belm", device="cpu")
    sol = encode(data[:4], "belm", 5, model=mix, schedule=SCHEDULE, return_solution=True)
    rows = {f.name: getattr(sol.state, f.name) for f in dataclasses.fields(sol.state)}
    tensors = {k: v for k, v in rows.items() if isinstance(v, torch.Tensor)}
    assert tensors
    for name, value in tensors.items():
        assert np.array_equal(np.load(tmp_path / f"aux_{name}.npy")[:4], value.numpy())


def test_stochastic_solver_noise_is_seeded_per_shard(tmp_path):
    kw = dict(model=MLP(), schedule=SCHEDULE, n=4, shard_size=3, shape=(6,), solver="ddpm", device="cpu")
    a = np.load(sample_to_dir(tmp_path / "a", 9, **kw).merged)
    b = np.load(sample_to_dir(tmp_path / "b", 9, batch_size=9, **kw).merged)
    c = np.load(sample_to_dir(tmp_path / "c", 9, **(kw | {"solver": "euler"})).merged)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(ValueError, match="generator"):
        sample_to_dir(tmp_path / "d", 9, solver_options={"generator": torch.Generator()}, **kw)
    with pytest.raises(ValueError, match="by name"):
        sample_to_dir(tmp_path / "d", 9, **(kw | {"solver": get_solver("ddpm")}))


def test_bad_arguments_name_the_problem(tmp_path):
    kw = dict(model=MLP(), schedule=SCHEDULE, n=3, shape=(6,), device="cpu")
    with pytest.raises(ValueError, match="shard_size must be >= 1"):
        sample_to_dir(tmp_path, 4, shard_size=0, **kw)
    with pytest.raises(ValueError, match="float32 or torch.float64"):
        sample_to_dir(tmp_path, 4, dtype=torch.float16, **kw)
    with pytest.raises(ValueError, match="unknown grid 'cubic'; allowed"):
        sample_to_dir(tmp_path, 4, grid="cubic", **kw)
    with pytest.raises(ValueError, match="unknown solver"):
        sample_to_dir(tmp_path, 4, solver="nope", **kw)
    with pytest.raises(ValueError, match="pass shape="):
        sample_to_dir(tmp_path, 4, model=MLP(), schedule=SCHEDULE, device="cpu")
    with pytest.raises(TypeError, match="num must be an int"):
        sample_to_dir(tmp_path, 4.0, **kw)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())  # nothing written for bad arguments


SIGMAS = [9.0, 2.5, 0.6, 0.1, 0.0]  # an explicit decoding grid of 4 steps


def test_an_explicit_grid_is_integrated_recorded_and_resumed_only_unchanged(tmp_path):
    out = tmp_path / "run"
    merged = _run(out, sigmas=SIGMAS)
    first = decode(index_noise(3, 0, SHARD, (1, 8, 8)), "euler", model=tiny_unet(), schedule=SCHEDULE, sigmas=SIGMAS)
    assert np.array_equal(first.detach().numpy(), merged[:SHARD])  # the shard's rows, integrated along SIGMAS
    assert not np.array_equal(merged, _run(tmp_path / "named", n=4))
    args = json.loads((out / MANIFEST).read_text())["arguments"]
    assert (args["grid"], args["n"], args["sigmas"]) == ("sigmas", 4, SIGMAS)
    kw = dict(model=tiny_unet(), schedule=SCHEDULE, shard_size=SHARD, seed=3, device="cpu")
    again = sample_to_dir(out, NUM, sigmas=np.array(SIGMAS), **kw)  # the same grid, as an array
    assert (again.shards_skipped, again.shards_computed) == (NUM // SHARD, 0)
    with pytest.raises(
        ResumeError, match=r"refusing to resume.*sigmas: \[9\.0, 2\.5, 0\.6, 0\.1, 0\.0\] on disk"
    ) as err:
        sample_to_dir(out, NUM, sigmas=[9.0, 2.5, 0.5, 0.1, 0.0], **kw)
    assert "\n" not in str(err.value)
    with pytest.raises(ResumeError, match="grid: 'sigmas' on disk vs 'uniform' now"):
        _run(out, n=4)


def test_a_grid_from_infinity_needs_a_flow_path(tmp_path):
    from ddim_ode.schedules import FlowSchedule

    flow = FlowSchedule()
    kw = dict(model=MLP(), shape=(6,), shard_size=4, device="cpu", prediction="flow", sigmas=[math.inf, 3.0, 1.0, 0.0])
    merged = np.load(sample_to_dir(tmp_path / "flow", 8, schedule=flow, **kw).merged)
    noise = index_noise(0, 0, 4, (6,))
    direct = decode(noise, "euler", model=MLP(), schedule=flow, prediction="flow", sigmas=kw["sigmas"])
    assert np.isfinite(merged).all() and np.array_equal(direct.detach().numpy(), merged[:4])
    assert json.loads((tmp_path / "flow" / MANIFEST).read_text())["arguments"]["sigmas"][0] == "inf"
    with pytest.raises(ValueError, match="starts at sigma = inf .* only a schedule that reaches it"):
        sample_to_dir(tmp_path / "vp", 8, schedule=SCHEDULE, **kw)
    with pytest.raises(ValueError, match="must end at sigma = 0"):
        sample_to_dir(tmp_path / "vp", 8, schedule=SCHEDULE, **(kw | {"sigmas": [3.0, 1.0]}))
    assert not (tmp_path / "vp").exists()


def test_the_merge_writes_the_decoding_settings_it_was_given_every_time(tmp_path):
    mix = GaussianMixture.random(k=3, dim=6, seed=0)
    data = mix.sample(6, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    kw = dict(model=mix, schedule=SCHEDULE, shard_size=4, device="cpu", sigmas=SIGMAS, solver="dpm-solver++2m")
    encode_to_dir(data, tmp_path / "plain", solver_options={"warmup": "singlestep"}, **kw)
    with np.load(tmp_path / "plain" / "latents.npz") as z:
        assert (str(z["kind"]), str(z["grid"]), int(z["steps"])) == ("encoded", "sigmas", 4)
        assert json.loads(str(z["solver_options"])) == {"warmup": "singlestep"}
        assert z["sigmas"].tolist() == SIGMAS and z["latents"].shape == (6, 6)
    settings = {"model": np.array("mine"), "grid": np.array("timesteps"), "labels": np.arange(6)}
    out = tmp_path / "given"
    encode_to_dir(data, out, decode_settings=settings, **kw)
    with np.load(out / "latents.npz") as z:
        first = {k: z[k] for k in z.files}
    assert str(first["model"]) == "mine" and str(first["grid"]) == "timesteps"  # the caller's replace the merge's
    assert first["labels"].tolist() == list(range(6)) and first["sigmas"].tolist() == SIGMAS
    merge_dir(out)  # a later merge of the folder writes the same file
    with np.load(out / "latents.npz") as z:
        assert z.files == list(first) and all(np.array_equal(z[k], v) for k, v in first.items())
    with pytest.raises(ValueError, match="decode_settings may not set 'latents'"):
        encode_to_dir(data, tmp_path / "bad", decode_settings={"latents": np.zeros(6)}, **kw)
    with pytest.raises(ValueError, match="bad name 'a b'"):
        encode_to_dir(data, tmp_path / "bad", decode_settings={"a b": np.zeros(6)}, **kw)
    assert not (tmp_path / "bad").exists()
    (tmp_path / "plain" / "decode-settings.npz").write_bytes((out / "decode-settings.npz").read_bytes())
    with pytest.raises(ValueError, match="decode-settings.npz belongs to another run"):
        merge_dir(tmp_path / "plain")


def _mlp_run(out: Path, num: int = 10, **kw) -> np.ndarray:
    args = dict(model=MLP(), schedule=SCHEDULE, n=3, shard_size=4, shape=(6,), device="cpu") | kw
    return np.load(sample_to_dir(out, num, **args).merged)


def test_only_the_packages_own_leftovers_are_removed(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    foreign = {
        ".notes.tmp": b"the user's notes",
        "notes.txt": b"more notes",
        ".samples.npy.x1y2.tmp.npy": b"a temporary name without the package's mark",
        f".draft{TMP_MARK}abc123.tmp": b"the mark, but not a file a run writes",
        "shard-4-8.npz": b"not a name the runs write",
    }
    for name, body in foreign.items():
        (out / name).write_bytes(body)
    (out / f".index.json{TMP_MARK}abc123.tmp.json").mkdir()  # a folder, even under one of our names
    ref = _mlp_run(out)
    own = [out / f".shard-00000004-00000008.npz{TMP_MARK}k9m8n7.tmp.npz", out / f".samples.npy{TMP_MARK}q1w2e3.tmp.npy"]
    for path in own:
        path.write_bytes(b"left by a killed writer")
    assert np.array_equal(_mlp_run(out), ref)  # resume: every shard is kept, then the merge tidies up
    assert not any(p.exists() for p in own)
    own[0].write_bytes(b"again")
    merge_dir(out)
    assert not own[0].exists()
    for name, body in foreign.items():
        assert (out / name).read_bytes() == body, name
    assert (out / f".index.json{TMP_MARK}abc123.tmp.json").is_dir()


@pytest.fixture
def no_hang():
    """Turns a blocking call (e.g. opening a FIFO nobody writes) into a test failure after 30 s."""

    def expire(signum, frame):
        raise TimeoutError("blocked for 30 s")

    before = signal.signal(signal.SIGALRM, expire)
    signal.alarm(30)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


@pytest.mark.parametrize("what", ["FIFO", "folder"])
def test_a_fifo_or_folder_under_a_shard_name_is_refused_not_opened(what, tmp_path, no_hang, capsys):
    from ddim_ode.cli import main

    _mlp_run(tmp_path)
    shard = tmp_path / "shard-00000004-00000008.npz"
    shard.unlink()
    os.mkfifo(shard) if what == "FIFO" else shard.mkdir()
    with pytest.raises(ResumeError, match=f"{shard} is a {what}, not a regular file") as err:
        _mlp_run(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=f"{shard} is a {what}"):
        merge_dir(tmp_path)
    assert main(["merge", str(tmp_path)]) == 2
    msg = capsys.readouterr().err
    assert msg.count("\n") == 1 and f"{shard} is a {what}" in msg
    assert shard.is_fifo() if what == "FIFO" else shard.is_dir()  # left where it was


def test_a_fifo_as_manifest_is_refused_not_opened(tmp_path, no_hang):
    os.mkfifo(tmp_path / MANIFEST)
    with pytest.raises(ResumeError, match="is a FIFO, not a regular file"):
        _mlp_run(tmp_path)
    with pytest.raises(ValueError, match="is a FIFO, not a regular file"):
        merge_dir(tmp_path)
    assert (tmp_path / MANIFEST).is_fifo()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"arguments.num": 1e12}, r"arguments\.num must be an int in \[1, 1000000000\], got 1000000000000\.0"),
        ({"arguments.num": 10**12}, r"arguments\.num must be <= 1000000000"),
        ({"arguments.num": "10"}, r"arguments\.num must be an int"),
        ({"arguments.num": True}, r"arguments\.num must be an int"),
        ({"arguments.shape": [0]}, r"arguments\.shape must be the shape of one sample"),
        ({"arguments.shape": [6, 2**15, 2**15]}, r"arguments\.shape \(6, 32768, 32768\) has 6442450944 numbers"),
        ({"arguments.shard_size": 0}, r"arguments\.shard_size must be >= 1"),
        ({"arguments.shard_size": 1, "arguments.num": 10**9}, r"shard_size 1 cuts num=1000000000 into more than"),
        ({"arguments.kind": "train"}, r"unknown arguments\.kind 'train'; allowed: sample, encode"),
        ({"arguments.dtype": "float16"}, r"unknown arguments\.dtype 'float16'; allowed: float32, float64"),
        ({"arguments.grid": 3}, r"unknown arguments\.grid 3; allowed: uniform, .*, sigmas"),
        ({"arguments.seed": None}, r"arguments\.seed must be an int"),
        ({"arguments.model": {"class": "x"}}, r"arguments\.model lacks the field 'sha256'"),
        ({"arguments.extra": 1}, r"arguments has unknown field\(s\) 'extra'"),
        ({"environment.threads": -1}, r"environment\.threads must be >= 1"),
        ({"format_version": 2}, r"format_version must be 1"),
        ({"run_id": "not hex"}, r"run_id must be 16 lowercase hex digits"),
        ({"arguments.grid": "sigmas"}, r"arguments lacks the field 'sigmas'"),
        ({"arguments.sigmas": [1.0, 0.0]}, r"arguments has 'sigmas' although its grid is 'uniform'"),
        ({"arguments.sigmas": [1.0, "inf", 0.0]}, r"arguments\.sigmas must be a list of 2 to 100001 numbers >= 0"),
        ({"arguments.n": 4}, r"run_id does not match the arguments"),
    ],
)
def test_a_damaged_manifest_is_refused_naming_the_field(edit, message, tmp_path):
    _mlp_run(tmp_path)
    path = tmp_path / MANIFEST
    doc = json.loads(path.read_text())
    for field, value in edit.items():
        *parents, leaf = field.split(".")
        node = doc
        for name in parents:
            node = node[name]
        node[leaf] = value
    path.write_text(json.dumps(doc))
    with pytest.raises(ResumeError, match=message) as err:
        merge_dir(tmp_path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    with pytest.raises(ResumeError, match=message):
        _mlp_run(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ResumeError, match="is not valid JSON"):
        merge_dir(tmp_path)


def test_num_and_shape_beyond_the_bounds_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="num must be <= 1000000000"):
        _mlp_run(tmp_path, num=10**9 + 1)
    with pytest.raises(ValueError, match="more than 1000000 shards"):
        _mlp_run(tmp_path, num=10**9, shard_size=10)
    with pytest.raises(ValueError, match="numbers per sample"):
        _mlp_run(tmp_path, shape=(2**15, 2**14))
    assert not any(tmp_path.iterdir())


def test_sharded_latents_decode_exactly_with_the_command_line(tmp_path):
    from ddim_ode.cli import main
    from ddim_ode.data import load_digits

    images = load_digits("heldout")[:6]
    encode_to_dir(images, tmp_path / "run", solver="belm", n=4, shard_size=4, device="cpu")
    with np.load(tmp_path / "run" / "latents.npz") as z:
        assert (str(z["solver"]), int(z["steps"]), str(z["grid"]), str(z["aux_type"])) == (
            "belm",
            4,
            "uniform",
            "BELMState",
        )
        assert np.array_equal(z["latents"], np.load(tmp_path / "run" / "latents.npy"))
        assert np.array_equal(z["aux_xbar"], np.load(tmp_path / "run" / "aux_xbar.npy"))
    argv = ["decode", "--input", str(tmp_path / "run" / "latents.npz"), "--solver", "belm", "-n", "4"]
    assert main([*argv, "--device", "cpu", "-q", "--out", str(tmp_path / "decoded.png")]) == 0
    decoded = np.load(tmp_path / "decoded.npz")["samples"]
    assert np.abs(decoded - images.numpy()).max() < 1e-4  # the solver state came along: an exact inverse

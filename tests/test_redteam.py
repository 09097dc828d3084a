"""Hostile input to the ``ddim-ode`` command line and to ``ReversibleLatent``.

Every refused case must exit with status 2, print one line on stderr that names the problem, show
no traceback, and leave the disk as it was (nothing written, nothing removed). Most cases run
in-process through ``ddim_ode.cli.main`` (the same code as the console script, without paying
``import torch`` per case); a few run as subprocesses to check the real exit status and output.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch

import ddim_ode
from ddim_ode import cli, threads
from ddim_ode.io import DEFAULT_MODEL_DIR
from ddim_ode.solvers import ReversibleLatent, get_solver, latent_state

ROOT = Path(__file__).resolve().parents[1]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``ddim-ode ARGV`` in-process: (exit status, stdout, stderr)."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as stop:  # argparse usage errors
        code = int(stop.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``roots`` with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in roots for p in root.rglob("*") if p.is_file()}


def assert_refused(code: int, err: str, *needles: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Input files for the cases: broken, ambiguous, wrong and valid ones."""
    from safetensors.torch import load_file, save_file

    from ddim_ode.data import load_digits

    d = tmp_path_factory.mktemp("inputs")
    (d / "folder.png").mkdir()
    (d / "afile").write_text("not a folder")
    (d / "notes.txt").write_text("not images")
    (d / "empty").mkdir()
    digits = load_digits("heldout")[:6].numpy()
    np.save(d / "imgs.npy", digits)
    np.savez(d / "images.npz", images=digits)
    whole = (d / "images.npz").read_bytes()
    (d / "truncated.npz").write_bytes(whole[: len(whole) // 2])
    np.savez(d / "two.npz", a=digits, b=digits)
    np.save(d / "wrong_shape.npy", np.zeros((2, 1, 16, 16), np.float32))
    np.save(d / "nan.npy", np.full((2, 1, 8, 8), np.nan, np.float32))
    np.save(d / "ints.npy", np.zeros((2, 1, 8, 8), np.int32))
    np.save(d / "out_of_range.npy", np.full((2, 1, 8, 8), 3.0, np.float32))
    np.savez(d / "lat_int.npz", latents=np.zeros((2, 1, 8, 8), np.int32))
    np.savez(d / "lat_nan.npz", latents=np.full((2, 1, 8, 8), np.nan, np.float32))
    np.savez(d / "lat_shape.npz", latents=np.zeros((2, 1, 4, 4), np.float32))
    np.savez(d / "lat_one.npz", latents=np.zeros((1, 1, 8, 8), np.float32))
    pngs = d / "pngs"
    pngs.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(pngs / "a.png")
    (pngs / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)  # a PNG signature and garbage
    mixed = d / "mixed_sizes"
    mixed.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(mixed / "b.png")
    for name in ("nan_model", "huge_model", "copy_model"):
        shutil.copytree(DEFAULT_MODEL_DIR, d / name)
    weights = load_file(d / "nan_model" / "model.safetensors")
    weights["conv_in.bias"] = torch.full_like(weights["conv_in.bias"], float("nan"))
    save_file(weights, d / "nan_model" / "model.safetensors")
    weights = load_file(d / "huge_model" / "model.safetensors")
    weights = {k: v * 1e38 if k.startswith("conv_out") else v for k, v in weights.items()}  # finite, overflows
    save_file(weights, d / "huge_model" / "model.safetensors")
    return d


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, inputs: Path) -> Path:
    """What the commands write: samples (euler, n = 5) and their BELM latents (n = 10)."""
    d = tmp_path_factory.mktemp("made")
    assert cli.main(["sample", "--num", "4", "-n", "5", "--out", str(d / "s.png"), "-q", "--device", "cpu"]) == 0
    assert (
        cli.main(
            ["encode", "--input", str(d / "s.npz"), "--solver", "belm", "-n", "10", "--out", str(d / "z.npz"), "-q"]
        )
        == 0
    )
    return d


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any integration fail loudly: a refused case must be refused before the work starts."""

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the work started although the input was bad")

    import ddim_ode.likelihood

    monkeypatch.setattr(cli, "decode", boom)
    monkeypatch.setattr(cli, "encode", boom)
    monkeypatch.setattr(ddim_ode.likelihood, "log_likelihood", boom)


# (case id, arguments with {in} / {made} for the input folders, what the message must contain)
REFUSED = [
    # outputs that cannot be written, found before any work
    ("out-is-folder", ["sample", "--out", "{in}/folder.png"], "is a folder"),
    ("out-trailing-slash", ["sample", "--out", "newdir/"], "is a folder"),
    ("out-parent-is-file", ["sample", "--out", "{in}/afile/x.png"], "afile is a file, not a folder"),
    (
        "out-deep-parent-is-file",
        ["encode", "--input", "{in}/imgs.npy", "--out", "{in}/afile/a/b/z.npz"],
        "not a folder",
    ),
    ("out-unwritable-fs", ["sample", "--out", "/sys/ddim_ode_x.png"], "cannot create files in /sys"),
    ("out-other-format", ["sample", "--out", "x.jpg"], "writes .png and .npz"),
    ("out-empty", ["sample", "--out", ""], "--out is empty"),
    ("decode-out-is-folder", ["decode", "--input", "{made}/z.npz", "--out", "{in}/folder.png"], "is a folder"),
    ("roundtrip-out-parent-file", ["roundtrip", "--out", "{in}/afile/r.png"], "not a folder"),
    ("interpolate-out-folder", ["interpolate", "--out", "{in}/folder.png"], "is a folder"),
    ("likelihood-out-folder", ["likelihood", "--out", "{in}/folder.png"], "is a folder"),
    ("likelihood-out-unwritable", ["likelihood", "--out", "/sys/l.json"], "cannot create files"),
    ("demo-out-dir-is-file", ["demo", "--out-dir", "{in}/afile"], "is a file; give a folder"),
    ("shards-out-dir-is-file", ["sample", "--out-dir", "{in}/afile", "--num", "2"], "is a file; give a folder"),
    # unreadable or ambiguous inputs
    ("encode-missing", ["encode", "--input", "missing.npy"], "no such file or folder"),
    ("encode-truncated-npz", ["encode", "--input", "{in}/truncated.npz"], "truncated or corrupted"),
    ("encode-two-arrays", ["encode", "--input", "{in}/two.npz"], "several arrays ['a', 'b']"),
    ("encode-corrupt-png", ["encode", "--input", "{in}/pngs"], "cannot read images from"),
    ("encode-mixed-png-sizes", ["encode", "--input", "{in}/mixed_sizes"], "same size"),
    ("encode-empty-folder", ["encode", "--input", "{in}/empty"], "no .png images"),
    ("encode-text-file", ["encode", "--input", "{in}/notes.txt"], "unsupported input; allowed"),
    ("encode-wrong-shape", ["encode", "--input", "{in}/wrong_shape.npy"], "the model needs (1, 8, 8)"),
    ("encode-nan", ["encode", "--input", "{in}/nan.npy"], "NaN"),
    ("encode-int-dtype", ["encode", "--input", "{in}/ints.npy"], "unsupported dtype int32; allowed"),
    ("encode-out-of-range", ["encode", "--input", "{in}/out_of_range.npy"], "[-1, 1]"),
    ("encode-latents", ["encode", "--input", "{made}/z.npz"], "holds latents, not images"),
    ("decode-missing", ["decode", "--input", "missing.npz"], "no such file"),
    ("decode-folder", ["decode", "--input", "{in}/empty"], "is a folder"),
    ("decode-truncated", ["decode", "--input", "{in}/truncated.npz"], "truncated or corrupted"),
    ("decode-images", ["decode", "--input", "{in}/images.npz"], "no 'latents' array"),
    ("decode-int-latents", ["decode", "--input", "{in}/lat_int.npz"], "must be floating point"),
    ("decode-nan-latents", ["decode", "--input", "{in}/lat_nan.npz"], "NaN"),
    ("decode-wrong-shape", ["decode", "--input", "{in}/lat_shape.npz"], "the model needs (1, 8, 8)"),
    ("interpolate-one-latent", ["interpolate", "--input", "{in}/lat_one.npz"], "needs two"),
    ("interpolate-missing", ["interpolate", "--input", "missing.npz"], "no such file"),
    ("roundtrip-missing", ["roundtrip", "--input", "missing.npz"], "no such file or folder"),
    ("likelihood-missing", ["likelihood", "--input", "missing.npz"], "no such file or folder"),
    ("merge-missing", ["merge", "missing_dir"], "no such folder"),
    ("merge-not-a-run", ["merge", "{in}/empty"], "manifest.json"),
    # models and devices
    ("model-missing", ["sample", "--model", "missing_dir"], "no such model"),
    ("model-is-a-file", ["sample", "--model", "{in}/afile"], "not a model this package can load"),
    ("model-nan-weights", ["sample", "--model", "{in}/nan_model"], "holds NaN or infinite values"),
    ("device-meta", ["sample", "--device", "meta"], "unsupported --device 'meta'; allowed"),
    ("device-mps", ["sample", "--device", "mps"], "MPS"),
    ("device-garbage", ["sample", "--device", "gpu0"], "bad --device 'gpu0'; allowed"),
    ("likelihood-device-meta", ["likelihood", "--device", "meta"], "unsupported --device"),
    # models, predictions, schedules and class conditioning (the built-in model is unconditional)
    ("models-extra-argument", ["models", "extra"], "unrecognized arguments: extra"),
    ("prediction-unknown", ["sample", "--prediction", "score"], "invalid choice: 'score'"),
    ("prediction-contradicts-builtin", ["sample", "--prediction", "v"], "contradicts the built-in model"),
    ("schedule-of-builtin", ["sample", "--schedule", "vp-cosine"], "brings its own schedule"),
    ("schedule-unknown", ["sample", "--schedule", "cubic"], "unknown --schedule kind 'cubic'; allowed:"),
    ("schedule-not-a-number", ["encode", "--input", "{in}/imgs.npy", "--schedule", "ve:a"], "must be a number"),
    ("schedule-directory-flow", ["sample", "--model", "{in}/copy_model", "--prediction", "flow"], "rectified-flow"),
    ("class-unconditional", ["sample", "--class", "3"], "--class needs a class-conditional model"),
    ("guidance-unconditional", ["sample", "--guidance", "2"], "--guidance needs a class-conditional model"),
    ("class-encode-unconditional", ["encode", "--input", "{in}/imgs.npy", "--class", "1"], "class-conditional"),
    ("class-decode-unconditional", ["decode", "--input", "{made}/z.npz", "--class", "1"], "class-conditional"),
    ("class-roundtrip-unconditional", ["roundtrip", "--class", "0-9"], "class-conditional"),
    ("class-out-dir-unconditional", ["sample", "--class", "1", "--out-dir", "sh"], "class-conditional"),
    ("class-not-a-label", ["sample", "--class", "three"], "bad --class 'three': 'three' is not a label"),
    ("class-negative", ["sample", "--class", "-1"], "is not a label or a range"),
    ("class-empty", ["sample", "--class", ""], "bad --class ''"),
    ("class-empty-item", ["sample", "--class", "1,,2"], "'' is not a label"),
    ("class-reversed-range", ["sample", "--class", "9-0"], "the range 9-0 is empty"),
    ("class-open-range", ["sample", "--class", "3-"], "is not a label or a range"),
    ("class-float", ["sample", "--class", "1.5"], "'1.5' is not a label"),
    ("guidance-negative", ["sample", "--guidance", "-0.5"], "--guidance must be a number >= 0"),
    ("guidance-nan", ["sample", "--guidance", "nan"], "--guidance must be a number >= 0"),
    ("guidance-inf", ["decode", "--input", "{made}/z.npz", "--guidance", "inf"], "--guidance must be a number >= 0"),
    ("guidance-not-a-number", ["sample", "--guidance", "strong"], "invalid float value: 'strong'"),
    ("interpolate-takes-no-class", ["interpolate", "--class", "1"], "unrecognized arguments: --class 1"),
    ("likelihood-schedule-of-builtin", ["likelihood", "--schedule", "ve"], "brings its own schedule"),
    ("bench-model-missing", ["bench", "roundtrip", "--quick", "--model", "missing_dir"], "no such model"),
    ("bench-model-not-taken", ["bench", "orders", "--model", "default"], "--model does not apply to the orders"),
    # counts and names
    ("num-zero", ["sample", "--num", "0"], "--num must be >= 1"),
    ("num-negative", ["sample", "--num", "-3"], "--num must be >= 1"),
    ("steps-zero", ["sample", "-n", "0"], "--steps must be >= 1"),
    ("steps-too-many", ["sample", "-n", "5000"], "at most n=1000"),
    ("batch-size-zero", ["encode", "--input", "{in}/imgs.npy", "--batch-size", "0"], "--batch-size must be >= 1"),
    ("frames-zero", ["interpolate", "--frames", "0"], "--frames must be >= 1"),
    ("consistency-zero", ["interpolate", "--consistency-steps", "3", "0"], "--consistency-steps values must be >= 1"),
    ("shard-size-zero", ["sample", "--out-dir", "shards", "--shard-size", "0"], "--shard-size must be >= 1"),
    ("roundtrip-num-zero", ["roundtrip", "--num", "0"], "--num must be >= 1"),
    ("seed-overflow", ["sample", "--seed", str(2**80)], "--seed must fit in 64 bits"),
    ("num-not-int", ["sample", "--num", "many"], "invalid int value: 'many'"),
    ("unknown-solver", ["sample", "--solver", "nope"], "unknown solver 'nope'; available:"),
    ("unknown-grid", ["sample", "--grid", "cubic"], "unknown grid 'cubic'; allowed:"),
    ("solver-cannot-encode", ["encode", "--input", "{in}/imgs.npy", "--solver", "ddpm"], "cannot encode"),
    ("roundtrip-cannot-encode", ["roundtrip", "--solver", "ddim", "--solver-option", "eta=0.5"], "cannot encode"),
    (
        "shards-cannot-encode",
        ["encode", "--input", "{in}/imgs.npy", "--solver", "ddpm", "--out-dir", "sh"],
        "cannot encode",
    ),
    ("unknown-command", ["nope"], "invalid choice: 'nope'"),
    ("no-command", [], "required: command"),
    ("solvers-extra-argument", ["solvers", "extra"], "unrecognized arguments: extra"),
    ("bench-unknown-study", ["bench", "nope"], "invalid choice: 'nope'"),
    # --sigmas / --timesteps
    ("sigmas-not-numbers", ["sample", "--sigmas", "5,a,0"], "bad --sigmas value 'a'"),
    ("sigmas-increasing", ["sample", "--sigmas", "1,2,0"], "strictly decreasing"),
    ("sigmas-no-zero", ["sample", "--sigmas", "5,1"], "must end at sigma = 0"),
    ("sigmas-negative", ["sample", "--sigmas", "5,-1,0"], ">= 0"),
    ("sigmas-above-max", ["sample", "--sigmas", "1e9,0"], "above the schedule's sigma_max"),
    ("sigmas-nan", ["sample", "--sigmas", "nan,0"], "must be finite"),
    ("sigmas-empty", ["sample", "--sigmas", ","], "--sigmas is empty"),
    ("sigmas-one-value", ["sample", "--sigmas", "0"], "at least one step"),
    ("sigmas-with-steps", ["sample", "--sigmas", "5,1,0", "-n", "4"], "do not combine it with -n"),
    ("sigmas-with-timesteps", ["sample", "--sigmas", "5,0", "--timesteps", "999"], "do not combine"),
    (
        "sigmas-inf-out-dir",
        ["sample", "--sigmas", "inf,5,0", "--out-dir", "sh"],
        "--sigmas starts at sigma = inf (pure noise), which only a schedule that reaches it (a flow path) allows",
    ),
    ("sigmas-inf-inside", ["sample", "--sigmas", "5,inf,0"], "sigma = inf only as the first value"),
    ("timesteps-out-of-range", ["sample", "--timesteps", "1500,10"], "must lie in the model's range [0, 999]"),
    ("timesteps-increasing", ["sample", "--timesteps", "10,500"], "strictly decreasing"),
    (
        "timesteps-not-numbers",
        ["decode", "--input", "{made}/s.npz", "--timesteps", "999,x"],
        "bad --timesteps value 'x'",
    ),
    # solver options: typed by the solver's constructor
    (
        "option-bool-word",
        ["sample", "--solver", "unipc", "--solver-option", "corrector=maybe"],
        "true/false, yes/no or 1/0",
    ),
    ("option-bool-number", ["sample", "--solver", "unipc", "--solver-option", "corrector=2"], "a boolean option"),
    ("option-int", ["sample", "--solver", "unipc", "--solver-option", "order=two"], "expected an integer"),
    ("option-int-float", ["sample", "--solver", "plms", "--solver-option", "order=2.5"], "expected an integer"),
    ("option-float", ["sample", "--solver", "dopri5", "--solver-option", "rtol=tight"], "expected a number"),
    ("option-float-inf", ["sample", "--solver", "dopri5", "--solver-option", "rtol=inf"], "finite number"),
    (
        "option-choice",
        ["sample", "--solver", "dpm-solver++2m", "--solver-option", "warmup=rk"],
        "allowed: lower-order, singlestep",
    ),
    (
        "option-choice-or-none",
        ["sample", "--solver", "dopri5", "--solver-option", "variable=t"],
        "one of log, sigma or none",
    ),
    ("option-json", ["sample", "--solver", "dopri5", "--solver-option", "options=[1]"], "a JSON object"),
    (
        "option-unknown",
        ["sample", "--solver", "unipc", "--solver-option", "foo=1"],
        "allowed: order, variant, prediction, corrector",
    ),
    ("option-none-taken", ["sample", "--solver", "euler", "--solver-option", "eta=1"], "takes no options"),
    (
        "option-not-settable",
        ["sample", "--solver", "ddim", "--solver-option", "generator=1"],
        "cannot be set from the command line",
    ),
    ("option-no-equals", ["sample", "--solver", "unipc", "--solver-option", "corrector"], "use KEY=VALUE"),
    (
        "option-twice",
        ["sample", "--solver", "unipc", "--solver-option", "order=2", "--solver-option", "order=3"],
        "given twice",
    ),
    ("option-value-range", ["sample", "--solver", "ddim", "--solver-option", "eta=2"], "eta must be"),
    (
        "option-value-order",
        ["sample", "--solver", "unipc", "--solver-option", "order=7"],
        "unknown UniPC order 7; allowed: 1, 2, 3",
    ),
    # likelihood numbers
    ("likelihood-num-zero", ["likelihood", "--num", "0"], "--num must be >= 1"),
    ("likelihood-probes-zero", ["likelihood", "--probes", "0"], "--probes must be >= 1"),
    ("likelihood-rtol-negative", ["likelihood", "--rtol", "-1"], "--rtol must be a positive number"),
    ("likelihood-atol-nan", ["likelihood", "--atol", "nan"], "--atol must be a positive number"),
    ("likelihood-bin-width-zero", ["likelihood", "--bin-width", "0"], "--bin-width must be a positive number"),
    ("likelihood-sigma-min-negative", ["likelihood", "--sigma-min", "-1"], "--sigma-min must be a number >= 0"),
    ("likelihood-bad-choice", ["likelihood", "--divergence", "fast"], "invalid choice: 'fast'"),
    ("likelihood-batch-size-zero", ["likelihood", "--batch-size", "0"], "--batch-size must be >= 1"),
    # training goes through the same policy
    ("train-missing-data", ["train", "--data", "missing_dir", "--out-dir", "t", "--steps", "1"], "unknown data source"),
    ("train-negative-steps", ["train", "--steps", "-1", "--out-dir", "t"], "steps must be an integer >= 1"),
    ("train-out-dir-is-file", ["train", "--out-dir", "{in}/afile", "--steps", "1"], "afile"),
]


@pytest.mark.parametrize("argv, needle", [pytest.param(a, n, id=i) for i, a, n in REFUSED])
def test_refused_with_one_line_before_any_work(argv, needle, inputs, made, tmp_path, monkeypatch, capsys, no_work):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(**{"in": inputs, "made": made}) for a in argv]
    before = snapshot(tmp_path, inputs, made)
    code, _, err = run_cli([*argv, "-q"] if argv and argv[0] in ("sample", "encode", "decode") else argv, capsys)
    assert_refused(code, err, needle)
    assert snapshot(tmp_path, inputs, made) == before
    assert not any(tmp_path.iterdir())  # not even an empty folder


def test_a_run_that_diverges_is_one_line_and_writes_nothing(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["sample", "--model", inputs / "huge_model", "--num", "2", "-n", "3", "-q"], capsys)
    assert_refused(code, err, "NaN/Inf appeared at step")
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="file permissions do not bind root")
def test_read_only_output_folder_is_refused_before_the_work(tmp_path, monkeypatch, capsys, no_work):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = run_cli(["sample", "--out", ro / "s.png", "-q"], capsys)
        assert_refused(code, err, "cannot create files in", str(ro))
        assert not any(ro.iterdir())
    finally:
        ro.chmod(0o755)


def test_debug_variable_shows_the_traceback_and_bugs_stay_visible(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(cli.DEBUG_VARIABLE, "1")
    with pytest.raises(ValueError, match="several arrays"):
        cli.main(["encode", "--input", str(inputs / "two.npz"), "-q"])
    monkeypatch.delenv(cli.DEBUG_VARIABLE)

    def bug(args: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_solvers", bug)  # the parser binds the command when main() builds it
    with pytest.raises(KeyError, match="a bug"):  # not a user error: it propagates as a traceback
        cli.main(["solvers"])


def test_help_documents_the_error_policy(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "exit status" in out and cli.DEBUG_VARIABLE in out and "OMP_WAIT_POLICY" in out


# ---------------------------------------------------------------------------------------------
# every command reads what the others write


def test_each_command_reads_the_others_outputs(made, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with np.load(made / "s.npz") as f:
        samples, noise = f["samples"], f["latents"]
        assert str(f["kind"]) == "noise" and str(f["solver"]) == "euler" and int(f["steps"]) == 5
    with np.load(made / "z.npz") as f:
        assert str(f["kind"]) == "encoded" and str(f["solver"]) == "belm" and len(f["sigmas"]) == 11
        assert str(f["model"]) == "default" and "aux_xbar" in f.files
    # decode with the settings recorded in the file: BELM latents give the samples back exactly
    assert run_cli(["decode", "--input", made / "z.npz", "--out", "d.png", "-q"], capsys)[0] == 0
    decoded = np.load(tmp_path / "d.npz")["samples"]
    assert np.abs(decoded - samples).max() < 1e-3
    # the noise that `sample` stored decodes to its samples with the recorded settings
    assert run_cli(["decode", "--input", made / "s.npz", "--out", "d2.png", "-q"], capsys)[0] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "d2.npz")["samples"], samples)
    # decode's output is images for encode, roundtrip and likelihood
    assert run_cli(["encode", "--input", "d.npz", "-n", "4", "--out", "z2.npz", "-q"], capsys)[0] == 0
    assert run_cli(["roundtrip", "--input", "d.npz", "--num", "2", "-n", "3", "--out", "rt.png"], capsys)[0] == 0
    code, out, err = run_cli(["interpolate", "--input", made / "z.npz", "--frames", "3", "--out", "i.png"], capsys)
    assert code == 0 and "no consistency strip" in out and "reversible belm" in err
    code, _, _ = run_cli(
        ["interpolate", "--input", made / "s.npz", "--frames", "3", "--consistency-steps", "2", "--out", "j.png"],
        capsys,
    )
    assert code == 0 and (tmp_path / "j_consistency.png").is_file()
    # a bare array of latents (as `merge` writes) decodes with the given settings
    np.save(tmp_path / "bare.npy", noise)
    assert run_cli(["decode", "--input", "bare.npy", "-n", "5", "--out", "b.png", "-q"], capsys)[0] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "b.npz")["samples"], samples)
    assert {p.name for p in tmp_path.iterdir()} == {
        "d.png", "d.npz", "d2.png", "d2.npz", "z2.npz", "rt.png", "i.png", "j.png", "j_consistency.png", "bare.npy",
        "b.png", "b.npz",
    }  # fmt: skip


def test_latents_of_an_earlier_version_still_decode(made, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with np.load(made / "z.npz") as f:  # that version stored latents, solver, steps and the state
        np.savez(
            tmp_path / "old.npz", **{k: f[k] for k in f.files if k in ("latents", "solver", "steps") or "aux" in k}
        )
    assert run_cli(["decode", "--input", "old.npz", "--out", "d.png", "-q"], capsys)[0] == 0
    assert np.abs(np.load("d.npz")["samples"] - np.load(made / "s.npz")["samples"]).max() < 1e-3


# ---------------------------------------------------------------------------------------------
# a latent file carries what decodes it; a mismatch is refused unless overridden


@pytest.mark.parametrize(
    "extra, difference",
    [
        (["--solver", "euler"], "solver belm -> euler"),
        (["--solver", "euler", "-n", "10"], "solver belm -> euler"),
        (["-n", "20"], "n 10 -> 20"),
        (["--grid", "karras"], "grid uniform -> karras"),
        (["--sigmas", "20,5,1,0"], "n 10 -> 3"),
        (["--model", "{in}/copy_model"], "model default ->"),
    ],
)
def test_decoding_with_other_settings_is_refused(
    extra, difference, inputs, made, tmp_path, monkeypatch, capsys, no_work
):
    monkeypatch.chdir(tmp_path)
    extra = [a.format(**{"in": inputs}) for a in extra]
    code, _, err = run_cli(["decode", "--input", made / "z.npz", *extra, "-q"], capsys)
    assert_refused(code, err, "was encoded with solver=belm, n=10, grid=uniform", difference, "--allow-mismatch")
    assert not any(tmp_path.iterdir())


def test_allow_mismatch_decodes_with_a_warning(made, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["decode", "--input", made / "z.npz", "--solver", "euler", "--allow-mismatch", "-q"], capsys)
    assert code == 0 and "warning:" in err and "solver belm -> euler" in err and "not reconstruct" in err
    # DDIM from BELM latents is far from the images: the reason a mismatch is refused by default
    assert np.abs(np.load("decoded.npz")["samples"] - np.load(made / "s.npz")["samples"]).max() > 10


def test_encoded_latents_without_their_state_decode_with_a_warning(made, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with np.load(made / "z.npz") as f:
        np.savez(tmp_path / "stateless.npz", **{k: f[k] for k in f.files if not k.startswith("aux_")})
    code, _, err = run_cli(["decode", "--input", "stateless.npz", "-q"], capsys)
    assert code == 0 and "stores no auxiliary state" in err and "not exactly" in err


def test_noise_decodes_with_any_settings(made, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["decode", "--input", made / "s.npz", "--solver", "heun", "-n", "3", "-q"], capsys)
    assert code == 0 and err == ""


# ---------------------------------------------------------------------------------------------
# ReversibleLatent: batch indexing keeps the state, anything else is detectable


@pytest.fixture(scope="module")
def belm_latent() -> tuple[torch.Tensor, ReversibleLatent]:
    from ddim_ode.data import load_digits

    x0 = load_digits("heldout")[:6]
    return x0, ddim_ode.encode(x0, "belm", 8)  # type: ignore[return-value]


@pytest.mark.parametrize(
    "index, rows",
    [
        (slice(0, 2), [0, 1]),
        (slice(None, None, 2), [0, 2, 4]),
        ([4, 1], [4, 1]),
        (torch.tensor([5, 0]), [5, 0]),
        (np.array([3, 2]), [3, 2]),
        (torch.tensor([True, False, False, True, False, True]), [0, 3, 5]),
        ((slice(1, 3), slice(None)), [1, 2]),
        ((slice(2, 4), Ellipsis), [2, 3]),
        (-1, None),
    ],
)
def test_indexing_along_the_batch_keeps_the_state(index, rows, belm_latent):
    x0, z = belm_latent
    part = z[index]
    assert isinstance(part, ReversibleLatent) and part.state is not None
    if rows is None:  # an int drops the batch dimension: put it back by slicing instead
        part, rows = z[-1:], [5]
    back = ddim_ode.decode(part, "belm", 8)
    assert float((back - x0[rows]).abs().max()) < 1e-4  # exact up to float32 rounding
    plain = ddim_ode.decode(part.as_subclass(torch.Tensor), "belm", 8)  # without the state: far off
    assert float((plain - x0[rows]).abs().max()) > 1e-1


@pytest.mark.parametrize(
    "op",
    [
        lambda z: z * 1.0,
        lambda z: z.clone(),
        lambda z: z + 0,
        lambda z: z.to(torch.float64),
        lambda z: z.flip(0),
        lambda z: torch.where(z > 0, z, 0.0),
        lambda z: z[:, 0:1],
        lambda z: z[..., :8],
    ],
    ids=["mul", "clone", "add", "to-float64", "flip", "where", "channel-index", "last-dim-index"],
)
def test_other_operations_drop_the_state_detectably(op, belm_latent):
    _, z = belm_latent
    out = op(z)
    assert type(out) is torch.Tensor and not hasattr(out, "state")
    belm = get_solver("belm")
    with pytest.warns(UserWarning, match="without its auxiliary state.*not exact"):
        assert latent_state(out, belm) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latent_state(out, get_solver("euler")) is None  # nothing to warn about for other solvers
        assert latent_state(torch.zeros(6, 1, 8, 8), belm) is None  # nor for a tensor never made from a latent


def test_in_place_changes_drop_the_state_and_the_state_belongs_to_its_solver(belm_latent):
    x0, z = belm_latent
    for change in (lambda t: t.add_(1.0), lambda t: t.__setitem__(0, 0.0), lambda t: torch.add(t, 1.0, out=t)):
        w = copy.deepcopy(z)  # a deep copy keeps the state
        assert isinstance(w, ReversibleLatent) and w.state is not None and w.state.xbar is not z.state.xbar
        change(w)
        assert w.state is None
        with pytest.warns(UserWarning, match="modified it in place"):
            latent_state(w, get_solver("belm"))
    assert latent_state(z, get_solver("belm")) is z.state
    assert z.to(z.dtype) is z and z.contiguous() is z  # what returns the latent itself keeps it whole
    with pytest.raises(ValueError, match="state of 'belm', not of 'reversible-heun'"):
        latent_state(z, get_solver("reversible-heun"))
    assert latent_state(z, get_solver("dpm-solver++2m")) is None  # other solvers start afresh, state unused


# ---------------------------------------------------------------------------------------------
# typed solver options


@pytest.mark.parametrize("word, value", [("False", False), ("no", False), ("0", False), ("TRUE", True), ("Yes", True)])
def test_boolean_solver_options_are_parsed_as_words(word, value, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["sample", "--solver", "unipc", "--solver-option", f"corrector={word}", "--num", "2", "-n", "3", "-q"]
    assert run_cli(argv, capsys)[0] == 0
    assert json.loads(str(np.load("samples.npz")["solver_options"])) == {"corrector": value}


# ---------------------------------------------------------------------------------------------
# threads on a shared machine


def test_thread_policy_never_overrides_the_user(monkeypatch):
    env: dict[str, str] = {}
    threads.set_wait_policy(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    threads.set_wait_policy(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}
    assert threads.user_set_threads({"MKL_NUM_THREADS": "3"}) and not threads.user_set_threads({})
    assert threads.threads_for(64 * 64, cores=16) == 4  # a batch of 64 digits keeps four threads busy
    assert threads.threads_for(2 * 64, cores=16) == 1 and threads.threads_for(10**9, cores=3) == 3
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert threads.set_threads_for(10**6, {"OMP_NUM_THREADS": "2"}) is None and calls == []
    n = threads.set_threads_for(10**6, {})
    assert calls == [n] and 1 <= n <= threads.usable_cores()


def test_console_script_is_the_entry_that_sets_the_policy():
    with open(ROOT / "pyproject.toml", "rb") as f:
        target = tomllib.load(f)["project"]["scripts"]["ddim-ode"]
    assert target == "ddim_ode.__main__:main"


# ---------------------------------------------------------------------------------------------
# a few real processes: exit status, stderr, and the thread policy before `import torch`


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ddim_ode", *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def test_processes_exit_2_with_one_line_and_1_with_a_traceback_for_debugging(inputs, tmp_path):
    r = _run("sample", "--out", str(inputs / "folder.png"), "-q", cwd=tmp_path)
    assert_refused(r.returncode, r.stderr, "is a folder")
    r = _run("encode", "--input", str(inputs / "truncated.npz"), "-q", cwd=tmp_path)
    assert_refused(r.returncode, r.stderr, "truncated or corrupted")
    r = _run("decode", "--input", str(inputs / "images.npz"), cwd=tmp_path, env={**os.environ, cli.DEBUG_VARIABLE: "1"})
    assert r.returncode == 1 and "Traceback" in r.stderr and "no 'latents' array" in r.stderr
    assert not any(tmp_path.iterdir())


def test_wait_policy_is_set_before_torch_loads(tmp_path):
    code = (
        "import sys; import ddim_ode.__main__ as entry; assert 'torch' not in sys.modules, 'torch imported early'; "
        "sys.exit(entry.main(['solvers']))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "OMP_DISPLAY_ENV": "verbose"},
    )
    assert r.returncode == 0, r.stderr
    if "GOMP_SPINCOUNT" not in r.stderr:
        pytest.skip("this PyTorch's OpenMP runtime is not GNU libgomp, which displays its spin count")
    assert "GOMP_SPINCOUNT = '0'" in r.stderr, r.stderr  # PASSIVE: idle threads do not spin

"""Training (DDPM and rectified flow, label dropout, checkpoints, resume, reproducibility, outputs) and the
training-data loaders."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ddim_ode import train as train_module
from ddim_ode.data import DIGITS_HELDOUT, load_array, load_dataset, load_digits, load_png_folder
from ddim_ode.io import load_model
from ddim_ode.schedules import ContinuousSchedule, DiscreteSchedule, FlowSchedule
from ddim_ode.train import CHECKPOINT_FILE, LOSS_PLOT_FILE, PRESETS, drop_labels, main, train
from ddim_ode.unet import UNet, UNetConfig

TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, norm_groups=4)
SHORT = DiscreteSchedule.linear(1e-4, 0.02, 100)


def _data(n: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _fit(**kw):
    args = {"config": TINY, "schedule": SHORT, "steps": 6, "batch_size": 8, "warmup_steps": 2, "progress": False}
    args.update(kw)
    return train(args.pop("data", _data()), **args)


# ----------------------------------------------------------------------------------------------
# training


def test_train_returns_ema_model_and_losses():
    result = _fit(steps=8)
    assert result.steps == 8 and len(result.losses) == 8
    assert all(np.isfinite(result.losses)) and np.isfinite(result.final_loss)
    assert result.final_loss == pytest.approx(np.mean(result.losses))
    assert result.out_dir is None
    assert not result.model.training
    ema, raw = dict(result.model.named_parameters()), dict(result.raw_model.named_parameters())
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)  # the EMA lags behind the raw weights
    out = result.model(_data(2), torch.tensor([3.0, 50.5]))
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


def test_loss_decreases_on_a_simple_data_set():
    x = torch.where(torch.arange(64).reshape(1, 1, 8, 8) % 2 == 0, 1.0, -1.0).expand(16, 1, 8, 8)
    result = _fit(data=x, steps=60, lr=2e-3, batch_size=16, warmup_steps=5)
    assert np.mean(result.losses[-10:]) < 0.6 * np.mean(result.losses[:10])


def test_reproducible_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = _fit(seed=3, config=UNetConfig(**{**TINY.to_dict(), "dropout": 0.1}))
    assert torch.equal(torch.get_rng_state(), state)
    b = _fit(seed=3, config=UNetConfig(**{**TINY.to_dict(), "dropout": 0.1}))
    c = _fit(seed=4)
    assert a.losses == b.losses and a.losses != c.losses


def test_outputs_and_resume_match_an_uninterrupted_run(tmp_path):
    cfg = UNetConfig(**{**TINY.to_dict(), "dropout": 0.1})  # dropout uses the (forked) global RNG: resumed too
    first = _fit(out_dir=tmp_path, steps=4, checkpoint_every=2, config=cfg)
    assert first.out_dir == tmp_path
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([CHECKPOINT_FILE, LOSS_PLOT_FILE, "config.json", "model.safetensors"])  # no temp files left
    assert (tmp_path / LOSS_PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert ckpt["step"] == 4 and len(ckpt["losses"]) == 4

    resumed = _fit(out_dir=tmp_path, steps=7, checkpoint_every=2, config=cfg)
    straight = _fit(steps=7, config=cfg)
    assert resumed.steps == 7 and resumed.losses == straight.losses
    for (name, p), q in zip(resumed.model.named_parameters(), straight.model.parameters()):
        assert torch.equal(p, q), name

    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["training"]["steps"] == 7 and doc["training"]["seed"] == 0
    assert doc["training"]["final_loss"] == pytest.approx(resumed.final_loss, rel=1e-5)
    assert doc["data"]["shape"] == [1, 8, 8]
    model, schedule, _ = load_model(tmp_path)
    assert torch.equal(schedule.alphas_cumprod, SHORT.alphas_cumprod)
    x, t = _data(2), torch.tensor([1.0, 60.0])
    assert torch.allclose(model(x, t), resumed.model(x, t))


def test_resume_refuses_another_architecture(tmp_path):
    _fit(out_dir=tmp_path, steps=2)
    with pytest.raises(ValueError, match="config"):
        _fit(out_dir=tmp_path, steps=3, config=UNetConfig(**{**TINY.to_dict(), "base_channels": 4}))
    with pytest.raises(ValueError, match="schedule"):
        _fit(out_dir=tmp_path, steps=3, schedule=DiscreteSchedule.cosine(100))
    assert _fit(out_dir=tmp_path, steps=3, resume=False).steps == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"data": torch.zeros(4, 3, 8, 8)}, ValueError, "channels"),
        ({"data": torch.zeros(4, 1, 16, 16)}, ValueError, "resolution"),
        ({"data": torch.zeros(4, 8, 8)}, ValueError, r"\(N, C, H, W\)"),
        (
            {"data": torch.full((4, 1, 8, 8), float("nan"))},
            ValueError,
            "in-memory data: the images contain NaN or infinite values",
        ),
        ({"data": torch.zeros(0, 1, 8, 8)}, ValueError, r"in-memory data: .*every size >= 1, got \(0, 1, 8, 8\)"),
        ({"data": torch.full((4, 1, 8, 8), 3.0)}, ValueError, r"scaled to \[-1, 1\], found values in \[3, 3\]"),
        ({"schedule": ContinuousSchedule.linear()}, TypeError, "DiscreteSchedule"),
        ({"config": TINY.to_dict()}, TypeError, "config must be a UNetConfig or None, got dict"),
        ({"steps": 0}, ValueError, "steps"),
        ({"ema_decay": 1.0}, ValueError, "ema_decay"),
        ({"lr": 0.0}, ValueError, "lr"),
    ],
)
def test_train_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        _fit(**kwargs)


#: arguments of train() that are refused before anything is created, loaded or built
BAD_ARGUMENTS = {
    "objective": ({"objective": "v"}, r"^unknown objective 'v'; allowed: eps, flow$"),
    "label-dropout": ({"label_dropout": -0.1}, r"^label_dropout must be a finite number in \[0, 1\], got -0\.1$"),
    "labels-a-list": ({"labels": [0, 1]}, r"^labels must be None, 'digits' or an integer array, got list$"),
    "labels-float": ({"labels": np.zeros(32)}, r"^labels must be integers >= 0, got dtype torch\.float64$"),
    "labels-named": ({"labels": "mnist"}, r"^labels 'mnist': the only named labels are 'digits', with data='digits'"),
    "steps-negative": ({"steps": -5}, r"^steps must be an integer >= 1, got -5$"),
    "steps-float": ({"steps": 2.5}, r"^steps must be an integer >= 1, got 2\.5$"),
    "steps-bool": ({"steps": True}, r"^steps must be an integer >= 1, got True$"),
    "batch-size-zero": ({"batch_size": 0}, r"^batch_size must be an integer in \[1, 65536\], got 0$"),
    "batch-size-huge": ({"batch_size": 10**9}, r"^batch_size must be an integer in \[1, 65536\]"),
    "lr-nan": ({"lr": float("nan")}, r"^lr must be a finite number > 0, got nan$"),
    "lr-inf": ({"lr": float("inf")}, r"^lr must be a finite number > 0, got inf$"),
    "lr-string": ({"lr": "1e-3"}, r"^lr must be a finite number > 0, got '1e-3'$"),
    "weight-decay": ({"weight_decay": -0.1}, r"^weight_decay must be a finite number >= 0, got -0\.1$"),
    "warmup-steps": ({"warmup_steps": -1}, r"^warmup_steps must be an integer >= 0, got -1$"),
    "ema-decay-nan": ({"ema_decay": float("nan")}, r"^ema_decay must be a finite number in \[0, 1\), got nan$"),
    "grad-clip-nan": ({"grad_clip": float("nan")}, r"^grad_clip must be a finite number >= 0, got nan$"),
    "seed-negative": ({"seed": -1}, r"^seed must be an integer in \[0, 9223372036854775807\], got -1$"),
    "checkpoint-every": ({"checkpoint_every": -1}, r"^checkpoint_every must be an integer >= 0, got -1$"),
    "resume": ({"resume": "yes"}, r"^resume must be true or false, got 'yes'$"),
    "progress": ({"progress": 1}, r"^progress must be true or false, got 1$"),
    "command": ({"command": 5}, r"^command must be a string or None, got 5$"),
    "metadata-nan": ({"metadata": {"x": float("nan")}}, r"^extra_metadata must be strict JSON"),
    "metadata-reserved": ({"metadata": {"unet": 1}}, r"^extra_metadata may not set the reserved keys \['unet'\]$"),
    "device-unknown": ({"device": "tpu:9"}, r"^device 'tpu:9' is not usable here: "),
    "device-meta": ({"device": "meta"}, r"^device 'meta' holds no data"),
    "out-dir-type": ({"out_dir": 5}, r"^out_dir must be a directory path or None, got 5$"),
}


def _no_work(monkeypatch):
    """Make loading data or building a network fail the test."""
    monkeypatch.setattr(train_module, "load_dataset", lambda *args: pytest.fail("the data were loaded"))
    monkeypatch.setattr(train_module, "UNet", lambda *args, **kw: pytest.fail("a network was built"))


@pytest.mark.parametrize(("kwargs", "match"), BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_every_argument_is_checked_before_any_work(tmp_path, monkeypatch, kwargs, match):
    _no_work(monkeypatch)
    with pytest.raises(ValueError, match=match):
        _fit(**{"out_dir": tmp_path / "run", **kwargs})
    assert not (tmp_path / "run").exists()


def test_an_unwritable_out_dir_is_refused_before_any_work(tmp_path, monkeypatch):
    _no_work(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match=r"^out_dir '.*a-file' is a file, not a directory$"):
        _fit(out_dir=blocker)
    with pytest.raises(NotADirectoryError, match=r"^out_dir '.*a-file/run' is not a writable directory: "):
        _fit(out_dir=blocker / "run")

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(train_module.tempfile, "mkstemp", read_only)  # a read-only folder, even for root
    with pytest.raises(PermissionError, match=r"^out_dir '.*ro' is not a writable directory: Permission denied$"):
        _fit(out_dir=tmp_path / "ro")
    with pytest.raises(NotADirectoryError, match=r"^out_dir '.*a-file/cli' is not a writable directory: "):
        main(["--out-dir", str(blocker / "cli"), "--base-channels", "8"])  # before the data are read to size the net
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "ro"]


def test_resume_refuses_a_damaged_checkpoint(tmp_path):
    _fit(out_dir=tmp_path, steps=2)
    ckpt = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    del ckpt["optimizer"]
    torch.save(ckpt, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ValueError, match=r"checkpoint\.pt is an incomplete or damaged training checkpoint \(KeyError"):
        _fit(out_dir=tmp_path, steps=3)
    torch.save([1, 2], tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ValueError, match=r"checkpoint\.pt is not a training checkpoint"):
        _fit(out_dir=tmp_path, steps=3)


# ----------------------------------------------------------------------------------------------
# class labels and the flow objective

TINY_COND = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, norm_groups=4, num_classes=3)


def _labels(n: int = 32) -> torch.Tensor:
    return torch.arange(n) % 3


def _recording_forward(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Record the (x, t, y) of every network call during training."""
    calls = []
    forward = UNet.forward

    def recording(self, x, t, y=None):
        calls.append((x.detach().clone(), torch.as_tensor(t).clone(), None if y is None else y.clone()))
        return forward(self, x, t, y)

    monkeypatch.setattr(UNet, "forward", recording)
    return calls


def test_drop_labels_at_the_configured_rate():
    y = torch.arange(100_000) % 10
    for p in (0.1, 0.35):
        dropped = drop_labels(y, p, 10, torch.Generator().manual_seed(0))
        kept = dropped != 10
        assert abs(float((~kept).float().mean()) - p) < 0.005
        assert torch.equal(dropped[kept], y[kept])  # a label is kept or replaced by the null class, never changed
        assert torch.equal(dropped, drop_labels(y, p, 10, torch.Generator().manual_seed(0)))  # seeded
    assert torch.equal(drop_labels(y, 0.0, 10, torch.Generator()), y)
    assert bool((drop_labels(y, 1.0, 10, torch.Generator()) == 10).all())


def test_training_with_labels_drops_them_to_the_null_class(monkeypatch):
    calls = _recording_forward(monkeypatch)
    labels, x = _labels(), _data()
    result = _fit(data=x, config=TINY_COND, labels=labels, label_dropout=0.3, steps=12, batch_size=64)
    assert result.steps == 12 and len(calls) == 12
    ys = torch.cat([y for _, _, y in calls])
    assert abs(float((ys == 3).float().mean()) - 0.3) < 0.06 and set(ys.tolist()) == {0, 1, 2, 3}
    # the first step by hand: the run's generator draws the initialisation, images, timesteps, noise, then the dropout
    gen = torch.Generator().manual_seed(0)
    UNet(TINY_COND, generator=gen)
    idx = torch.randint(32, (64,), generator=gen)
    t = torch.randint(100, (64,), generator=gen)
    eps = torch.randn((64, 1, 8, 8), generator=gen)
    sqrt_ab, sqrt_1m_ab = SHORT.alphas_cumprod.sqrt().float(), (1 - SHORT.alphas_cumprod).sqrt().float()
    assert torch.equal(calls[0][1], t.to(torch.float32))
    x_t = sqrt_ab[t].view(-1, 1, 1, 1) * x[idx] + sqrt_1m_ab[t].view(-1, 1, 1, 1) * eps
    assert torch.equal(calls[0][0], x_t)
    assert torch.equal(calls[0][2], drop_labels(labels[idx], 0.3, 3, gen))
    calls.clear()
    again = _fit(data=x, config=TINY_COND, labels=labels, label_dropout=0.3, steps=12, batch_size=64)
    assert torch.equal(torch.cat([y for _, _, y in calls]), ys) and again.losses == result.losses


def test_a_conditional_model_is_saved_and_loaded_with_its_null_class(tmp_path):
    _fit(out_dir=tmp_path, config=TINY_COND, labels=_labels(), steps=3)
    model, _, meta = load_model(tmp_path)
    assert model.config.num_classes == 3 and meta["unet"]["num_classes"] == 3
    assert meta["training"]["conditioning"] == {"num_classes": 3, "null_class": 3, "label_dropout": 0.1}
    assert torch.equal(model.null_kwargs({"y": torch.tensor([0, 2])})["y"], torch.tensor([3, 3]))
    with pytest.raises(ValueError, match=r"another conditioning"):
        _fit(out_dir=tmp_path, config=TINY_COND, labels=_labels(), label_dropout=0.2, steps=4)


@pytest.mark.parametrize("timestep_scale", [None, 1.0])
def test_flow_objective_regresses_eps_minus_x0_at_the_sampled_tau(monkeypatch, tmp_path, timestep_scale):
    calls = _recording_forward(monkeypatch)
    x = _data()
    schedule = FlowSchedule(timestep_scale=timestep_scale)
    result = _fit(data=x, schedule=schedule, objective="flow", steps=1, batch_size=16, out_dir=tmp_path, lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    net = UNet(TINY, generator=gen)
    idx = torch.randint(32, (16,), generator=gen)
    tau = torch.rand((16,), generator=gen)
    eps = torch.randn((16, 1, 8, 8), generator=gen)
    x_tau = (1 - tau.view(-1, 1, 1, 1)) * x[idx] + tau.view(-1, 1, 1, 1) * eps
    x_in, t_in, y_in = calls[0]
    assert torch.allclose(x_in, x_tau, atol=1e-6) and y_in is None
    assert torch.allclose(t_in, tau * schedule.timestep_scale)
    with torch.no_grad():
        out = net(x_tau, tau * schedule.timestep_scale)
    assert result.losses[0] == pytest.approx(float(((out - (eps - x[idx])) ** 2).mean()), rel=1e-6)
    # the DDPM target would give another loss: the check above could not pass by accident
    assert result.losses[0] != pytest.approx(float(((out - eps) ** 2).mean()), rel=1e-3)
    model, loaded_schedule, meta = load_model(tmp_path)
    assert meta["prediction"] == "flow" and repr(loaded_schedule) == repr(schedule)
    assert "rectified-flow" in meta["training"]["objective"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"objective": "score"}, ValueError, r"^unknown objective 'score'; allowed: eps, flow$"),
        ({"objective": "flow"}, TypeError, r"^the flow objective trains on a FlowSchedule, got DiscreteSchedule$"),
        ({"schedule": FlowSchedule()}, TypeError, r"^the eps objective trains on a DiscreteSchedule"),
        ({"labels": _labels()}, ValueError, r"labels given for an unconditional config \(num_classes=0\)"),
        ({"config": TINY_COND}, ValueError, r"config\.num_classes=3 needs labels"),
        ({"config": TINY_COND, "labels": _labels() + 1}, ValueError, r"labels must lie in \[0, 2\] .*maximum of 3$"),
        ({"config": TINY_COND, "labels": _labels(31)}, ValueError, r"labels must have shape \(32,\)"),
        ({"config": TINY_COND, "labels": _labels().float()}, ValueError, r"labels must be integers >= 0"),
        ({"config": TINY_COND, "labels": "digits"}, ValueError, r"the only named labels are 'digits', with data="),
        ({"label_dropout": 1.5}, ValueError, r"^label_dropout must be a finite number in \[0, 1\], got 1\.5$"),
    ],
)
def test_objective_and_label_arguments_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        _fit(**kwargs)


def test_presets_of_the_built_in_models(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(train_module, "train", lambda **kw: seen.update(kw) or pytest.skip("captured"))
    for preset, objective in (("digits-cond", None), ("digits-flow", "flow")):
        seen.clear()
        with pytest.raises(pytest.skip.Exception):
            main(["--preset", preset, "--out-dir", str(tmp_path / preset)])
        assert seen.get("objective") == objective and seen["config"].base_channels == 32
        assert seen["steps"] == PRESETS[preset]["steps"] == 2000
    assert isinstance(seen["schedule"], FlowSchedule) and seen["schedule"].shift == 1.0
    seen.clear()
    with pytest.raises(pytest.skip.Exception):
        main(["--preset", "digits-cond", "--out-dir", str(tmp_path / "c"), "--label-dropout", "0.2"])
    assert seen["labels"] == "digits" and seen["label_dropout"] == 0.2 and seen["config"].num_classes == 10
    assert isinstance(seen["schedule"], DiscreteSchedule) and seen["schedule"].num_timesteps == 1000
    seen.clear()
    with pytest.raises(pytest.skip.Exception):
        main(["--out-dir", str(tmp_path / "f"), "--schedule", "flow", "--shift", "3"])
    assert seen["objective"] == "flow" and seen["schedule"].shift == 3.0
    with pytest.raises(ValueError, match="--shift sets the flow schedule"):
        main(["--preset", "digits", "--out-dir", str(tmp_path / "d"), "--shift", "3"])


def test_command_line_with_overrides(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "--out-dir",
        str(out),
        "--data",
        str(_save_npy(tmp_path)),
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--base-channels",
        "8",
        "--channel-mults",
        "1,2",
        "--num-res-blocks",
        "1",
        "--num-timesteps",
        "50",
        "--no-progress",
    ]
    result = main(argv, prog="ddim-ode train")
    assert result.steps == 3 and "final_loss" in capsys.readouterr().out
    model, schedule, meta = load_model(out)
    assert schedule.num_timesteps == 50
    assert model.config.base_channels == 8 and model.config.num_res_blocks == 1
    assert meta["training"]["command"].startswith("ddim-ode train --out-dir")


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--lr", "nan"], r"^lr must be a finite number > 0, got nan$"),
        (["--steps", "-5"], r"^steps must be an integer >= 1, got -5$"),
        (["--batch-size", "0"], r"^batch_size must be an integer in \[1, 65536\], got 0$"),
        (["--num-timesteps", "0"], r"^schedule\.num_timesteps must be an integer in \[2, 100000\], got 0$"),
        (["--num-timesteps", "1000000000"], r"^schedule\.num_timesteps must be an integer in \[2, 100000\]"),
        (["--beta-start", "2"], r"^schedule\.beta_start must be a finite number in \(0, 1\), got 2\.0$"),
        (["--schedule", "cosine", "--beta-end", "0.1"], r"^--beta-start and --beta-end set the linear schedule"),
        (["--threads", "0"], r"^threads must be an integer in \[1, 1024\], got 0$"),
        (["--base-channels", "8192"], r"^UNetConfig\.base_channels must be an integer in \[1, 1024\], got 8192$"),
        (["--dropout", "nan"], r"^UNetConfig\.dropout must be a finite number in \[0, 1\), got nan$"),
        (["--device", "nonsense"], r"^device 'nonsense' is not usable here"),
    ],
)
def test_command_line_rejects_bad_values_before_any_work(tmp_path, monkeypatch, argv, match):
    _no_work(monkeypatch)
    threads = torch.get_num_threads()
    with pytest.raises(ValueError, match=match):
        main(["--preset", "digits", "--out-dir", str(tmp_path / "run"), "--no-progress", *argv])
    assert torch.get_num_threads() == threads


def test_ddim_ode_train_exits_with_the_message(tmp_path):
    cmd = [sys.executable, "-m", "ddim_ode", "train", "--steps", "-5", "--out-dir", str(tmp_path / "run")]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode != 0 and "steps must be an integer >= 1, got -5" in res.stderr, res.stderr
    assert not (tmp_path / "run").exists()


def _save_npy(tmp_path):
    path = tmp_path / "images.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, size=(10, 8, 8), dtype=np.uint8))
    return path


# ----------------------------------------------------------------------------------------------
# data


def test_digits_split_and_scaling():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits as sk_digits

    train_x, held_x, all_x = load_dataset("digits"), load_digits("heldout"), load_digits("all")
    assert train_x.shape == (1797 - DIGITS_HELDOUT, 1, 8, 8) and held_x.shape == (DIGITS_HELDOUT, 1, 8, 8)
    assert train_x.dtype == torch.float32
    assert torch.equal(torch.cat([train_x, held_x]), all_x)
    raw = torch.from_numpy(sk_digits().images).float()
    assert torch.allclose(all_x[:, 0], raw / 16 * 2 - 1)
    assert all_x.min() == -1 and all_x.max() == 1


def test_digits_error_names_the_extra(monkeypatch):
    import builtins

    from ddim_ode import data

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("no sklearn")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ImportError, match=r"pip install ddim_ode\[digits\]"):
        data.load_digits()
    with pytest.raises(ValueError, match="allowed: train, heldout, all"):
        data.load_digits("test")


def test_array_files(tmp_path):
    u8 = np.array([[[0, 255], [51, 204]]], dtype=np.uint8)
    np.save(tmp_path / "a.npy", u8)
    x = load_array(tmp_path / "a.npy")
    assert x.shape == (1, 1, 2, 2) and torch.allclose(x[0, 0], torch.tensor([[-1.0, 1.0], [-0.6, 0.6]]))
    np.savez(tmp_path / "b.npz", images=np.zeros((2, 3, 4, 4), np.float32), labels=np.arange(2))
    assert load_array(tmp_path / "b.npz").shape == (2, 3, 4, 4)
    np.savez(tmp_path / "c.npz", pics=np.zeros((2, 4, 4), np.float32))  # the only array: any name
    assert load_array(tmp_path / "c.npz").shape == (2, 1, 4, 4)
    np.savez(tmp_path / "d.npz", a=np.zeros((2, 4, 4)), b=np.zeros((2, 4, 4)))
    with pytest.raises(KeyError, match="images"):
        load_array(tmp_path / "d.npz")
    np.save(tmp_path / "e.npy", np.full((2, 4, 4), 3.0))
    with pytest.raises(ValueError, match=r"scaled to \[-1, 1\]"):
        load_array(tmp_path / "e.npy")
    np.save(tmp_path / "f.npy", np.zeros((4, 4)))
    with pytest.raises(ValueError, match="shape"):
        load_array(tmp_path / "f.npy")
    with pytest.raises(FileNotFoundError):
        load_array(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="allowed: 'digits'"):
        load_dataset(tmp_path / "e.txt")


def test_png_folder(tmp_path):
    from PIL import Image

    gray = tmp_path / "gray"
    gray.mkdir()
    Image.fromarray(np.full((6, 4), 255, np.uint8), mode="L").save(gray / "b.png")
    Image.fromarray(np.zeros((6, 4), np.uint8), mode="L").save(gray / "a.png")
    (gray / "notes.txt").write_text("ignored")
    x = load_png_folder(gray)
    assert x.shape == (2, 1, 6, 4) and x[0].max() == -1 and x[1].min() == 1  # sorted by name
    assert torch.equal(load_dataset(gray), x)

    Image.fromarray(np.zeros((6, 4, 3), np.uint8), mode="RGB").save(gray / "c.png")
    assert load_png_folder(gray).shape == (3, 3, 6, 4)  # any colour image turns all into RGB

    Image.fromarray(np.zeros((5, 4), np.uint8), mode="L").save(gray / "d.png")
    with pytest.raises(ValueError, match="same size.*d.png"):
        load_png_folder(gray)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .png"):
        load_png_folder(tmp_path / "empty")
    with pytest.raises(NotADirectoryError):
        load_png_folder(tmp_path / "missing")

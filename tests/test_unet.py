"""The UNet ε-network: the model contract, configuration, initialisation, and the shipped model's samples."""

from __future__ import annotations

import pytest
import torch

from ddim_ode.schedules import DiscreteSchedule
from ddim_ode.unet import (
    MAX_BASE_CHANNELS,
    MAX_CLASSES,
    MAX_RESOLUTION,
    MAX_WIDTH,
    UNet,
    UNetConfig,
    timestep_embedding,
)

TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, norm_groups=4)


def randomised_unet(config: UNetConfig = TINY, seed: int = 0) -> UNet:
    """A UNet whose zero-initialised layers are filled with noise, so outputs depend on inputs (eval mode)."""
    g = torch.Generator().manual_seed(seed)
    model = UNet(config, generator=g)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def ddim_decode(model, schedule: DiscreteSchedule, noise: torch.Tensor, stride: int = 50) -> torch.Tensor:
    """Deterministic DDIM (η = 0) written independently of the package's solvers.

    In x̄ = x_t/√ᾱ, σ = √((1 − ᾱ)/ᾱ): x̄_next = x̄ + (σ_next − σ) ε(x̄/√(1 + σ²), t), over the timesteps
    ``range(0, T, stride)`` from the largest down to 0, then one last step to σ = 0.
    """
    ts = list(range(0, schedule.num_timesteps, stride))[::-1]
    sigmas = [float(schedule.sigmas[t]) for t in ts] + [0.0]
    xbar = noise.double() * (1.0 + sigmas[0] ** 2) ** 0.5
    with torch.no_grad():
        for t, s, s_next in zip(ts, sigmas[:-1], sigmas[1:]):
            x_t = (xbar / (1.0 + s * s) ** 0.5).float()
            eps = model(x_t, torch.full((noise.shape[0],), float(t))).double()
            xbar = xbar + (s_next - s) * eps
    return xbar.float()


# ----------------------------------------------------------------------------------------------
# the model contract


def test_forward_shape_dtype_and_float_timesteps():
    model = randomised_unet(TINY)
    x = torch.randn(3, 1, 8, 8)
    t_int = torch.tensor([0, 500, 999])
    out = model(x, t_int)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # float timesteps of any dtype, fractional values, and a scalar t broadcast over the batch
    assert torch.allclose(model(x, t_int.double()), out, atol=1e-6)
    frac = model(x, torch.tensor([0.5, 500.25, 998.75]))
    assert torch.isfinite(frac).all() and not torch.allclose(frac, out)
    assert torch.allclose(model(x, torch.tensor(7.0)), model(x, torch.full((3,), 7.0)))
    assert torch.allclose(model(x, 7), model(x, torch.full((3,), 7.0)))


def test_output_depends_continuously_on_fractional_t():
    model = randomised_unet(TINY)
    x = torch.randn(2, 1, 8, 8)
    a, b, mid = model(x, torch.full((2,), 100.0)), model(x, torch.full((2,), 101.0)), model(x, torch.full((2,), 100.5))
    assert (mid - a).abs().max() < (b - a).abs().max() + 1e-6


def test_multichannel_non_square_and_float64():
    cfg = UNetConfig(
        in_channels=3,
        out_channels=3,
        base_channels=8,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        norm_groups=4,
        resolution=16,
    )
    model = randomised_unet(cfg)
    x = torch.randn(2, 3, 16, 8)
    assert model(x, torch.tensor([1.0, 2.0])).shape == (2, 3, 16, 8)
    m64 = model.double()
    out = m64(x.double(), torch.tensor([1.0, 2.0]))
    assert out.dtype == torch.float64


def test_batch_independence():
    model = randomised_unet(TINY)
    x = torch.randn(4, 1, 8, 8)
    t = torch.tensor([10.0, 200.0, 300.5, 999.0])
    full = model(x, t)
    single = torch.cat([model(x[i : i + 1], t[i : i + 1]) for i in range(4)])
    assert torch.allclose(full, single, atol=1e-5)


def test_gradient_flows_to_the_input():
    model = randomised_unet(TINY)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    model(x, torch.tensor([3.0, 4.0])).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("x_shape", "t", "match"),
    [
        ((2, 3, 8, 8), torch.zeros(2), "must have shape"),
        ((2, 1, 8), torch.zeros(2), "must have shape"),
        ((2, 1, 7, 8), torch.zeros(2), "divisible"),
        ((2, 1, 8, 8), torch.zeros(3), "match the batch"),
        ((2, 1, 8, 8), torch.zeros(2, 1), "match the batch"),
    ],
)
def test_forward_rejects_bad_inputs(x_shape, t, match):
    with pytest.raises(ValueError, match=match):
        UNet(TINY)(torch.zeros(x_shape), t)


def test_fresh_model_predicts_zero_and_init_is_seeded_without_global_rng():
    state = torch.get_rng_state()
    a = UNet(TINY, generator=torch.Generator().manual_seed(3))
    b = UNet(TINY, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    # DDPM initialisation: the last layer is zero, so a fresh network predicts ε̂ = 0
    assert torch.equal(a(torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0])), torch.zeros(2, 1, 8, 8))


# ----------------------------------------------------------------------------------------------
# configuration


def test_config_round_trip_and_errors():
    cfg = UNetConfig(base_channels=16, channel_mults=[1, 2, 4], resolution=16)  # a list is accepted
    assert cfg.channel_mults == (1, 2, 4) and cfg.widths == (16, 32, 64) and cfg.downsample_factor == 4
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown UNetConfig keys"):
        UNetConfig.from_dict({**cfg.to_dict(), "heads": 4})
    with pytest.raises(ValueError, match="norm_groups"):
        UNetConfig(base_channels=12, norm_groups=8)
    with pytest.raises(ValueError, match="divisible"):
        UNetConfig(channel_mults=(1, 2, 2, 2), resolution=12)
    with pytest.raises(ValueError, match="dropout"):
        UNetConfig(dropout=1.0)
    with pytest.raises(ValueError, match="base_channels"):
        UNetConfig(base_channels=0)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (
            {"base_channels": 8192},
            rf"UNetConfig\.base_channels must be an integer in \[1, {MAX_BASE_CHANNELS}\], got 8192",
        ),
        ({"resolution": 100000}, rf"UNetConfig\.resolution must be an integer in \[1, {MAX_RESOLUTION}\], got 100000"),
        ({"in_channels": 0}, r"UNetConfig\.in_channels must be an integer in \[1, 64\], got 0"),
        ({"num_res_blocks": 2.0}, r"UNetConfig\.num_res_blocks must be an integer in \[1, 16\], got 2\.0"),
        ({"norm_groups": True}, r"UNetConfig\.norm_groups must be an integer"),
        ({"channel_mults": "12"}, r"UNetConfig\.channel_mults must be a list of 1 to 8 positive integers, got '12'"),
        ({"channel_mults": []}, r"UNetConfig\.channel_mults must be a list of 1 to 8"),
        ({"channel_mults": [1] * 9}, r"UNetConfig\.channel_mults must be a list of 1 to 8"),
        ({"channel_mults": [1, 2.5]}, r"UNetConfig\.channel_mults\[1\] must be an integer in \[1, 4096\], got 2\.5"),
        (
            {"base_channels": 1024, "channel_mults": [1, 8]},
            rf"every width .* must be <= {MAX_WIDTH}, got \[1024, 8192\]",
        ),
        ({"dropout": float("nan")}, r"UNetConfig\.dropout must be a finite number in \[0, 1\), got nan"),
        ({"attention": "yes"}, r"UNetConfig\.attention must be true or false, got 'yes'"),
        ({"num_classes": -1}, rf"UNetConfig\.num_classes must be an integer in \[0, {MAX_CLASSES}\], got -1"),
        ({"num_classes": 10**9}, rf"UNetConfig\.num_classes must be an integer in \[0, {MAX_CLASSES}\]"),
        ({"num_classes": 10.0}, r"UNetConfig\.num_classes must be an integer in \[0, 100000\], got 10\.0"),
    ],
)
def test_config_fields_are_checked_for_type_and_range(changes, match):
    with pytest.raises(ValueError, match=match) as err:
        UNetConfig.from_dict({**TINY.to_dict(), **changes})
    assert "\n" not in str(err.value)


def test_config_from_something_else_than_a_mapping():
    with pytest.raises(ValueError, match="mapping of its fields, got list"):
        UNetConfig.from_dict([["base_channels", 8]])


def test_state_dict_shapes_without_building_the_network(monkeypatch):
    devices = []
    reset = UNet.reset_parameters

    def recording_reset(self, generator=None):
        devices.append(self.conv_in.weight.device)
        reset(self, generator)

    monkeypatch.setattr(UNet, "reset_parameters", recording_reset)
    for cfg in (
        TINY,
        UNetConfig(in_channels=3, out_channels=3, base_channels=8, channel_mults=(1, 2, 2), norm_groups=4),
    ):
        shapes = UNet.state_dict_shapes(cfg)
        assert [d.type for d in devices] == ["meta"]  # described without allocating a single weight
        built = {name: tuple(t.shape) for name, t in UNet(cfg).state_dict().items()}
        assert shapes == built and list(shapes) == list(built)  # same names, shapes and order
        devices.clear()


COND = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, norm_groups=4, num_classes=3)


def test_conditional_unet_shapes_and_null_class():
    model = randomised_unet(COND)
    assert model.class_emb.weight.shape == (4, 32)  # K + 1 rows (the last: the null class), time-embedding width
    assert UNet.state_dict_shapes(COND)["class_emb.weight"] == (4, 32)
    assert "class_emb.weight" not in UNet.state_dict_shapes(TINY)
    x, t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([3.0, 50.0, 500.0, 999.0])
    with torch.no_grad():
        by_class = [model(x, t, torch.full((4,), k)) for k in range(4)]
        assert by_class[0].shape == (4, 1, 8, 8) and by_class[0].dtype == torch.float32
        assert not torch.allclose(by_class[0], by_class[1])  # the label matters
        assert torch.equal(model(x, t), by_class[3])  # y=None is the null class K
        assert torch.equal(model(x, t, 2), by_class[2])  # a scalar label applies to the whole batch
        mixed = model(x, t, torch.tensor([0, 1, 2, 3]))
        assert torch.allclose(mixed, torch.stack([by_class[k][k] for k in range(4)]), atol=1e-6)
    y = torch.tensor([0, 2, 1, 0])
    null = model.null_kwargs({"y": y, "other": 5})
    assert (
        torch.equal(null["y"], torch.full((4,), 3))
        and null["other"] == 5
        and torch.equal(y, torch.tensor([0, 2, 1, 0]))
    )
    assert model.null_kwargs({}) == {"y": None}
    from ddim_ode.field import NullConditionModel

    assert isinstance(model, NullConditionModel)


def test_a_fresh_conditional_unet_starts_as_its_unconditional_one():
    g = torch.Generator().manual_seed(0)
    model = UNet(COND, generator=torch.Generator().manual_seed(0))
    assert torch.count_nonzero(model.class_emb.weight) == 0
    plain = UNet(TINY, generator=g)  # the same draws: the embedding table takes none
    cond_state = {k: v for k, v in model.state_dict().items() if k != "class_emb.weight"}
    assert all(torch.equal(cond_state[k], v) for k, v in plain.state_dict().items())


@pytest.mark.parametrize(
    ("y", "match"),
    [
        (torch.tensor([0, 4]), r"^class labels y must lie in \[0, 3\] \(3 = the null class\), got values in \[0, 4\]$"),
        (torch.tensor([-1, 0]), r"^class labels y must lie in \[0, 3\] .*got values in \[-1, 0\]$"),
        (torch.tensor([0.0, 1.0]), r"^class labels y must be integers in \[0, 3\] .*got dtype torch\.float32$"),
        (torch.tensor([0, 1, 2]), r"^y must be a scalar or have shape \(2,\) to match the batch, got \(3,\)$"),
    ],
)
def test_labels_out_of_range_are_refused(y, match):
    model = UNet(COND)
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(2, 1, 8, 8), torch.tensor([1.0, 2.0]), y)


def test_an_unconditional_unet_takes_no_labels():
    model = UNet(TINY)
    with pytest.raises(ValueError, match=r"unconditional \(num_classes=0\): y must be None"):
        model(torch.zeros(2, 1, 8, 8), 1.0, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no class labels and no null class"):
        model.null_kwargs({"y": torch.tensor([0, 1])})
    assert "num_classes" not in TINY.to_dict()  # an unconditional description reads as before
    assert UNetConfig.from_dict(COND.to_dict()) == COND and COND.to_dict()["num_classes"] == 3


def test_attention_switch_changes_architecture():
    with_attn = sum(p.numel() for p in UNet(TINY).parameters())
    without = sum(p.numel() for p in UNet(UNetConfig(**{**TINY.to_dict(), "attention": False})).parameters())
    assert without < with_attn


def test_timestep_embedding():
    t = torch.tensor([0.0, 1.5, 999.0])
    emb = timestep_embedding(t, 9)
    assert emb.shape == (3, 9) and emb.dtype == torch.float32
    assert torch.allclose(emb[0, :4], torch.ones(4)) and torch.allclose(emb[0, 4:], torch.zeros(5))
    assert torch.allclose(emb[:, :4].square() + emb[:, 4:8].square(), torch.ones(3, 4), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = randomised_unet(TINY)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5.0, 600.5])
    out = model.cuda()(x.cuda(), t.cuda())
    assert out.device.type == "cuda"
    assert torch.allclose(out.cpu(), model.cpu()(x, t), atol=1e-4)


# ----------------------------------------------------------------------------------------------
# the shipped model


def test_default_model_samples_look_like_digits():
    """64 samples decoded with 20 DDIM steps are recognised by a classifier fit on real digits."""
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    from ddim_ode.data import load_digits_labels
    from ddim_ode.io import load_default

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, schedule, _ = load_default()
        noise = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        samples = ddim_decode(model, schedule, noise, stride=50)
    finally:
        torch.set_num_threads(threads)
    assert torch.isfinite(samples).all()
    assert samples.min() > -1.5 and samples.max() < 1.5  # the data lie in [-1, 1]

    x_train, y_train = load_digits_labels("train")
    x_held, y_held = load_digits_labels("heldout")
    clf = LogisticRegression(max_iter=2000).fit(x_train.flatten(1).numpy(), y_train.numpy())
    assert (clf.predict(x_held.flatten(1).numpy()) == y_held.numpy()).mean() > 0.9

    flat = samples.clamp(-1, 1).flatten(1)
    proba = clf.predict_proba(flat.numpy())
    confident = (proba.max(axis=1) > 0.8).mean()
    assert confident >= 0.75, f"only {confident:.0%} of the samples are classified with confidence > 0.8"
    assert len(set(proba.argmax(axis=1).tolist())) >= 8  # not collapsed onto a few classes
    # control: the same pixels in a shuffled order (same intensities, no digit shape) are not recognised
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    shuffled = (clf.predict_proba(flat[:, perm].numpy()).max(axis=1) > 0.8).mean()
    assert shuffled < confident - 0.25

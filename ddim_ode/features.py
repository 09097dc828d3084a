"""A fixed feature space for sample quality: a small digit classifier, and the Fréchet distance.

The Fréchet distance between two sets of features with means μ₁, μ₂ and covariances C₁, C₂ is

    FD = ‖μ₁ − μ₂‖² + tr(C₁ + C₂ − 2 (C₁ C₂)^{1/2})           (Heusel et al. 2017, "FID")

Inception features make no sense for 8×8 digits, so the package ships its own feature network:
:class:`DigitClassifier`, a 3-layer CNN trained once on the digits training split (its training
command and accuracy on the held-out split are stored with its weights); its 64-dimensional
penultimate layer is the feature space. :func:`load_classifier` loads it; :func:`train_classifier`
reproduces it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import linalg
from torch import Tensor, nn

from ._files import atomic_write, write_json

__all__ = ["DigitClassifier", "train_classifier", "load_classifier", "features", "frechet_distance", "CLASSIFIER_DIR"]

CLASSIFIER_DIR = Path(__file__).parent / "weights" / "digit_classifier"


class DigitClassifier(nn.Module):
    """A small CNN for 8×8 digits in [−1, 1]: conv(16) → conv(32, stride 2) → fc(64) → fc(10).

    :meth:`features` returns the 64-dimensional penultimate activations.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.SiLU(),
        )
        self.head = nn.Linear(64, 10)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def train_classifier(
    out_dir: str | Path | None = CLASSIFIER_DIR, epochs: int = 60, seed: int = 0, batch_size: int = 64
) -> tuple[DigitClassifier, dict[str, Any]]:
    """Train :class:`DigitClassifier` on the digits training split (Adam, light shift augmentation).

    Writes ``model.safetensors`` and ``config.json`` (with the held-out accuracy) to ``out_dir``.
    """
    from safetensors.torch import save_file

    from .data import load_digits_labels

    g = torch.Generator().manual_seed(seed)
    x, y = load_digits_labels("train")
    xh, yh = load_digits_labels("heldout")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = DigitClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            xb = x[idx]
            shift = torch.randint(-1, 2, (2,), generator=g)
            xb = torch.roll(xb, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            loss = nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(xh).argmax(1) == yh).float().mean())
    meta = {
        "architecture": "DigitClassifier",
        "heldout_accuracy": acc,
        "epochs": epochs,
        "seed": seed,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "command": f"python -c 'from ddim_ode.features import train_classifier; train_classifier(epochs={epochs})'",
    }
    if out_dir is not None:
        out = Path(out_dir)
        state = {k: v.contiguous() for k, v in net.state_dict().items()}
        atomic_write(out / "model.safetensors", lambda tmp: save_file(state, tmp))
        write_json(out / "config.json", meta)
    return net, meta


def load_classifier(device: str | torch.device = "cpu") -> DigitClassifier:
    """The shipped digit classifier (eval mode, frozen)."""
    from safetensors.torch import load_file

    path = CLASSIFIER_DIR / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"the digit classifier weights are missing at {path}")
    net = DigitClassifier()
    net.load_state_dict(load_file(str(path)))
    return net.to(device).eval().requires_grad_(False)


def features(x: Tensor, classifier: DigitClassifier | None = None, batch_size: int = 512) -> np.ndarray:
    """64-dimensional classifier features of images ``(N, 1, 8, 8)`` in [−1, 1], as float64 numpy."""
    net = classifier if classifier is not None else load_classifier(x.device)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(net.features(x[i : i + batch_size].to(torch.float32)).double().cpu())
    return torch.cat(out).numpy()


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples)."""
    if feats_a.ndim != 2 or feats_b.ndim != 2 or feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"feature sets must be (N, d) with equal d, got {feats_a.shape} and {feats_b.shape}")
    if len(feats_a) < 2 or len(feats_b) < 2:
        raise ValueError("each feature set needs at least 2 rows")
    mu1, mu2 = feats_a.mean(0), feats_b.mean(0)
    c1, c2 = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
    covmean = linalg.sqrtm(c1 @ c2)
    if not np.isfinite(covmean).all():  # near-singular product: regularise as in the FID reference code
        off = np.eye(c1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((c1 + off) @ (c2 + off))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean))

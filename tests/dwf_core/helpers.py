"""Small models and data shared by the dwf_core tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn


@dataclass
class TinySplit:
    """A dataset split made of tensors."""

    x: torch.Tensor
    y: torch.Tensor


def mlp(seed: int = 0, d_in: int = 20, hidden: int = 32, classes: int = 4) -> nn.Module:
    """A small MLP with biases, built deterministically."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, classes))


class ResidualNorm(nn.Module):
    """A model nobody wrote for this library: conv stem, residual add, LayerNorm, linear head."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """stem → x + block(x) → global average → LayerNorm → head."""
        h = torch.relu(self.stem(x))
        h = h + self.block(h)
        return self.head(self.norm(h.mean(dim=(2, 3))))


def separable_data(n: int = 256, d_in: int = 20, classes: int = 4, seed: int = 0) -> TinySplit:
    """Linearly separable-ish random data: labels from a fixed random projection."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    proj = torch.randn(d_in, classes, generator=torch.Generator().manual_seed(1234))
    return TinySplit(x, (x @ proj).argmax(dim=1))


def trained_mlp(data: TinySplit, steps: int = 300, seed: int = 0) -> nn.Module:
    """An MLP fitted to ``data`` with Adam (so accuracy actually depends on the weights)."""
    model = mlp(seed, d_in=data.x.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.x), data.y).backward()
        opt.step()
    return model


def write_band_npz(path: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A learnable 10-class 28×28 uint8 dataset as .npz: each class lights up its own band of rows."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 60, (n, 1, 28, 28)).astype(np.uint8)
        for i, label in enumerate(y):
            x[i, 0, 2 * label + 4 : 2 * label + 7, :] = 250
        return x, y.astype(np.int64)

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path

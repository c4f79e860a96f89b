"""The real MNIST folder (gzip IDX, `.idx3-ubyte` spelling) loads fully and quickly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dwf_core.data import detect_format, load_dataset

MNIST = Path(__file__).resolve().parents[4] / "shared" / "data" / "mnist"

pytestmark = pytest.mark.skipif(not MNIST.is_dir(), reason="shared MNIST copy not present")


def test_mnist_idx_full_load() -> None:
    """Full MNIST: sizes, shape, classes, known statistics and load time."""
    assert detect_format(MNIST) == "idx"
    bundle = load_dataset(f"mnist-idx:{MNIST}")
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (54000, 6000, 10000)
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    assert bundle.train.x.shape == (54000, 1, 28, 28) and bundle.train.x.dtype == torch.float32
    assert bundle.val_from_train and bundle.format == "idx"
    # The well-known MNIST statistics and the first test label (a 7).
    assert bundle.normalization is not None
    assert bundle.normalization["mean"][0] == pytest.approx(0.1307, abs=2e-3)
    assert bundle.normalization["std"][0] == pytest.approx(0.3081, abs=2e-3)
    assert int(bundle.test.y[0]) == 7
    assert torch.bincount(bundle.test.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

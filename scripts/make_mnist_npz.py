"""Write MNIST (or a subset) from IDX files into one .npz a user can upload: x_train, y_train, x_test, y_test.

.venv/bin/python scripts/make_mnist_npz.py ../shared/data/mnist mnist.npz [--train 2000 --test 500] [--cifar-shape]

--cifar-shape pads the digits to 32 × 32 and repeats them over 3 channels: real data in the shape of CIFAR-10, for
the zoo's CIFAR models (vgg16, resnet18) where no CIFAR copy exists (this machine has none).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dwf_core.data.common import ByteBudget, DataLimits
from dwf_core.data.idx import read_idx_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("idx_dir")
    parser.add_argument("out")
    parser.add_argument("--train", type=int, default=None, help="keep the first N training samples")
    parser.add_argument("--test", type=int, default=None, help="keep the first N test samples")
    parser.add_argument("--cifar-shape", action="store_true", help="3 x 32 x 32: padded by 2, channels repeated")
    args = parser.parse_args()
    limits = DataLimits()
    raw = read_idx_dir(Path(args.idx_dir), limits, ByteBudget(limits.max_uncompressed_bytes))
    n_train, n_test = args.train, args.test
    shape = _cifar_shape if args.cifar_shape else (lambda x: x)
    np.savez_compressed(
        args.out,
        x_train=shape(raw.x["train"][:n_train]),
        y_train=raw.y["train"][:n_train].astype(np.int64),
        x_test=shape(raw.x["test"][:n_test]),
        y_test=raw.y["test"][:n_test].astype(np.int64),
    )


def _cifar_shape(x: np.ndarray) -> np.ndarray:
    """(N, 28, 28) or (N, 1, 28, 28) digits as (N, 3, 32, 32): zero-padded by 2 pixels, the channel repeated."""
    images = x.reshape(len(x), 1, *x.shape[-2:])
    padded = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return np.repeat(padded, 3, axis=1)


if __name__ == "__main__":
    main()

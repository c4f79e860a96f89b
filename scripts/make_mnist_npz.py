"""Write MNIST (or a subset) from IDX files into one .npz a user can upload: x_train, y_train, x_test, y_test.

.venv/bin/python scripts/make_mnist_npz.py ../shared/data/mnist mnist.npz [--train 2000 --test 500]
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
    args = parser.parse_args()
    limits = DataLimits()
    raw = read_idx_dir(Path(args.idx_dir), limits, ByteBudget(limits.max_uncompressed_bytes))
    n_train, n_test = args.train, args.test
    np.savez_compressed(
        args.out,
        x_train=raw.x["train"][:n_train],
        y_train=raw.y["train"][:n_train].astype(np.int64),
        x_test=raw.x["test"][:n_test],
        y_test=raw.y["test"][:n_test].astype(np.int64),
    )


if __name__ == "__main__":
    main()

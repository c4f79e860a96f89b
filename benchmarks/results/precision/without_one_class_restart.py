"""Experiment (issue 14, precision round): one MNIST table cell with the one-class restart switched off.

    OMP_NUM_THREADS=1 PYTHONPATH=../../.. python without_one_class_restart.py gmp 0 > without-one-class-gmp-seed0.json

(from this folder; ../../.. is the repo root). LeNet-5-Caffe, 20 epochs, target CR 500, LR 0.1 (GMP's default),
gradient norm clipped at 5, bf16 autocast on the CPU: the table's GMP cell, except that
``Trainer._restart_if_one_class`` is patched to never restart (a patch here, not a product option). Prints the test
accuracy and each epoch's validation accuracy and training loss as one JSON line.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.stamp import MNIST_DIR
from dwf_core.config import TrainConfig
from dwf_core.pipeline import RunSpec, run
from dwf_core.train import Trainer


def main(method: str, seed: int) -> None:
    torch.set_num_threads(1)
    Trainer._restart_if_one_class = lambda self, epoch, metrics: None  # type: ignore[method-assign]
    config = TrainConfig(
        method=method, epochs=20, seed=seed, device="cpu", precision="bf16", target_sparsity=0.998,
        max_grad_norm=5.0, lr=0.1,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        m = run(RunSpec("lenet5", f"mnist-idx:{MNIST_DIR}", Path(tmp), train=config, export_onnx=False))
    print(json.dumps({
        "method": method, "seed": seed, "test_accuracy": m["test_accuracy"], "lr": m["lr"],
        "divergence_restarts": m["divergence_restarts"],
        "val_accuracy_by_epoch": [round(h["val_accuracy"], 4) for h in m["history"]],
        "train_loss_by_epoch": [round(h["train_loss"], 3) for h in m["history"]],
    }))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

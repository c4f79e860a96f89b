"""Issue 14 experiment: LeNet-5 at CR 280 (20 dense + 20 DWF epochs, distillation α 0.5), λ × A on conv1.

    OMP_NUM_THREADS=1 python benchmarks/results/lenet5-record-attempts/conv1_lam.py A SEED [OUT]

λ on the first factorized tensor is scaled by A through the optimizer-group patch of
benchmarks/results/lenet300-record-attempts/training_knobs.py (not a product option). Prints one JSON row.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks/results/lenet300-record-attempts")]


def main() -> None:
    import torch
    from training_knobs import _patch_layer_lam

    from benchmarks.stamp import MNIST_DIR
    from dwf_core.config import TrainConfig
    from dwf_core.pipeline import RunSpec, run

    torch.set_num_threads(1)
    first, seed = float(sys.argv[1]), int(sys.argv[2])
    out = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(f"conv1-lam{first:g}-seed{seed}")
    _patch_layer_lam(first, 1.0)
    cfg = TrainConfig(dense_epochs=20, epochs=20, target_sparsity=0.99643, distill=0.5, seed=seed)
    m = run(RunSpec("lenet5", f"mnist-idx:{MNIST_DIR}", out, train=cfg, export_onnx=False))
    row = {"first": first, "seed": seed, "test": m["test_accuracy"], "val": m["val_accuracy"],
           "cr": m["compression_ratio"], "layers": [layer["nnz"] for layer in m["layers"]]}  # fmt: skip
    print(json.dumps(row))


if __name__ == "__main__":
    main()

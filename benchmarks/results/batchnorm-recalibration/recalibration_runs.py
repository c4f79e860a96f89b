"""The runs behind docs/defaults.md "BatchNorm statistics after the cut": a DWF job with ``cut: final`` from a
trained BatchNorm model, with the code of one tree (``--root``: this checkout, or a worktree of an older commit).

    OMP_NUM_THREADS=1 python benchmarks/results/batchnorm-recalibration/recalibration_runs.py \\
        --root . --model resnet-timm --sparsity 0.99 --work WORK --out OUT

WORK holds the model suite's data and trained starts as `benchmarks.suite_lam_scale --trained-start` leaves them
(``data/mnist-5000-2000.npz``; ``resnet-timm-dense-seed0-10ep/model.safetensors``); ``--model mobilenetv3`` trains
timm's mobilenetv3_small_050 densely for 10 epochs into WORK first. Prints one JSON row: test and validation
accuracy, the recalibration record (None before it existed) and the fine-tuning's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True, help="the tree whose dwf_core runs")
    parser.add_argument("--model", choices=("resnet-timm", "mobilenetv3"), required=True)
    parser.add_argument("--sparsity", type=float, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(args.root.resolve()))
    import torch

    from dwf_core.config import TrainConfig
    from dwf_core.pipeline import RunSpec, run

    torch.set_num_threads(1)
    data = str(args.work / "data/mnist-5000-2000.npz")
    if args.model == "resnet-timm":
        from benchmarks.suite_models import PAIR_BY_NAME, model_for

        model: object = model_for(PAIR_BY_NAME["resnet-timm"], 0, args.work)
        weights = args.work / "resnet-timm-dense-seed0-10ep/model.safetensors"
    else:
        model = "timm:mobilenetv3_small_050"
        dense = args.work / "mobilenetv3-dense-seed100-10ep"
        if not (dense / "model.safetensors").exists():
            run(RunSpec(model, data, dense, train=TrainConfig(method="dense", epochs=10, seed=100), export_onnx=False))
        weights = dense / "model.safetensors"
    cfg = TrainConfig(epochs=10, seed=0, target_sparsity=args.sparsity, cut="final")
    m = run(RunSpec(model, data, args.out, weights=str(weights), train=cfg, export_onnx=False))  # type: ignore[arg-type]
    finetune = m["finetune"]
    keys = ("epochs", "val_accuracy_before", "val_accuracy_after", "kept")
    row = {
        "model": args.model, "sparsity": args.sparsity, "test": m["test_accuracy"], "val": m["val_accuracy"],
        "factorized_test": m["factorized_test_accuracy"], "recalibration": m.get("batchnorm_recalibration"),
        "finetune": finetune and {k: finetune.get(k) for k in keys},
    }  # fmt: skip
    print(json.dumps(row))


if __name__ == "__main__":
    main()

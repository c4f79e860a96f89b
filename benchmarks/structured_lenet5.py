"""Structured DWF (D-Gating) on LeNet-5-Caffe / MNIST: one ``pipeline.run`` per JSON settings argument.

    OMP_NUM_THREADS=1 python -m benchmarks.structured_lenet5 OUT_DIR \
        '{"structure": "units", "target_macs": 0.1, "epochs": 20}' ...

Each argument is a TrainConfig as JSON (``model`` picks another zoo model); each run writes OUT_DIR/NAME.json with
test accuracy (collapsed, cut to the MAC budget), factorized accuracy, the kept MAC fraction, units per layer, the
MAC frontier, the per-epoch history and, where the pipeline builds them, the compact model's summary and both models'
measured inference cost. Runs already in OUT_DIR are skipped.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.stamp import MNIST_DIR
from dwf_core.config import TrainConfig
from dwf_core.pipeline import RunSpec, run

HISTORY_KEYS = ("epoch", "lam", "mac_fraction", "scheduled_macs", "val_accuracy", "train_loss", "epoch_seconds")


def run_name(settings: dict[str, Any]) -> str:
    """A file name from the settings, e.g. ``structureunits_target_macs0.1_epochs20``."""
    return "_".join(f"{k}{v}" for k, v in settings.items())


def summary(settings_text: str, m: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The numbers the README table needs from one run's metrics."""
    s = m["structured"] or {}
    return {
        "spec": settings_text,
        "test": m["test_accuracy"],
        "factorized_test": m["factorized_test_accuracy"],
        "val": m["val_accuracy"],
        "mac_fraction": s.get("mac_fraction"),
        "kept_macs": s.get("kept_macs"),
        "dense_macs": s.get("dense_macs"),
        "natural_mac_fraction": s.get("natural_mac_fraction"),
        "target_met": s.get("target_met"),
        "units": {layer["name"]: [layer["units"], layer["units_total"]] for layer in s.get("layers", [])},
        "mac_frontier": s.get("mac_frontier"),
        "finetune": m["finetune"],
        "lam": m["lam"],
        "lr": m["lr"],
        "compression_ratio": m["compression_ratio"],
        "train_seconds": m["train_seconds"],
        "total_seconds": seconds,
        "history": [{k: h.get(k) for k in HISTORY_KEYS} for h in m["history"]],
        # The compact model built from these zeros (dwf_core.compact) and both models' measured cost
        # (dwf_core.inference), when this checkout has them.
        "compact": m.get("compact"),
        "inference": m.get("inference"),
    }


def main() -> None:
    """Run each settings argument that has no result yet."""
    torch.set_num_threads(1)
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    for text in sys.argv[2:]:
        settings = json.loads(text)
        path = out_dir / (run_name(settings) + ".json")
        if path.exists():
            continue
        model = settings.pop("model", "lenet5")
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            spec = RunSpec(
                model=model,
                data=f"mnist-idx:{MNIST_DIR}",
                out_dir=Path(tmp),
                train=TrainConfig(device="cpu", **settings),
                export_onnx=True,  # for the compact model and the onnxruntime latency (metrics "inference")
            )
            metrics = run(spec)
        row = summary(text, metrics, time.monotonic() - started)
        path.write_text(json.dumps(row, indent=1) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k not in ("history", "mac_frontier")}), flush=True)


if __name__ == "__main__":
    main()

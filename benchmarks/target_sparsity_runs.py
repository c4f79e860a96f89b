"""The runs behind benchmarks/results/target-sparsity/: one ``pipeline.run`` per JSON settings argument.

    python -m benchmarks.target_sparsity_runs OUT_DIR '{"depth": 3, "epochs": 40, "target_sparsity": 0.99}' ...

Each argument is a TrainConfig as JSON (``extra.controller`` reaches the λ controller's knobs); each run writes
OUT_DIR/NAME.json with test accuracy, factorized accuracy, CR, final λ and the per-epoch λ/sparsity history.
Runs already in OUT_DIR are skipped.
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

HISTORY_KEYS = ("epoch", "lam", "sparsity", "val_accuracy", "scheduled_sparsity")


def run_name(settings: dict[str, Any]) -> str:
    """A file name from the settings, e.g. ``depth3_epochs40_target_sparsity0.99_ramp0.5``."""
    parts = [f"{k}{v}" for k, v in settings.items() if k != "extra"]
    parts += [f"{k}{v}" for k, v in settings.get("extra", {}).get("controller", {}).items()]
    return "_".join(parts)


def main() -> None:
    torch.set_num_threads(1)
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    for text in sys.argv[2:]:
        settings = json.loads(text)
        path = out_dir / (run_name(settings) + ".json")
        if path.exists():
            continue
        model = settings.pop("model", "lenet_300_100")
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            spec = RunSpec(
                model=model,
                data=f"mnist-idx:{MNIST_DIR}",
                out_dir=Path(tmp),
                train=TrainConfig(device="cpu", **settings),
                export_onnx=False,
            )
            m = run(spec)
        row = {
            "spec": text,
            "test": m["test_accuracy"],
            "fact_test": m["factorized_test_accuracy"],
            "val": m["val_accuracy"],
            "cr": m["compression_ratio"],
            "lam": m["lam"],
            "secs": time.monotonic() - started,
            "hist": [{k: e.get(k) for k in HISTORY_KEYS} for e in m["history"]],
            "frontier": m.get("frontier"),
        }
        path.write_text(json.dumps(row))
        print(f"{path.stem}: {100 * m['test_accuracy']:.2f}% CR {m['compression_ratio']:.1f}", flush=True)


if __name__ == "__main__":
    main()

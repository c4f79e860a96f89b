"""Experiment (issue 14, fourth round): the default DWF job with one training setting changed, on MNIST.

    cd benchmarks/results/lenet300-record-attempts
    OMP_NUM_THREADS=1 PYTHONPATH=../../.. python training_knobs.py training-knobs.cells.json training-knobs.jsonl 2

Arguments: a JSON list of cells ({"name", "cr", "seed", optional "model" (lenet300 | lenet5) and "kwargs"}), the
JSON-lines file the rows are appended to (cells already there are skipped), worker processes. A cell is one
`dwf_core.pipeline.run` of 30 epochs, D = 3, `target_sparsity = 1 − 1/cr`, everything else at its default, with
the cell's TrainConfig keyword arguments on top; "lam_scale" multiplies the λ the target's map gives
(`dwf_core.defaults.lam_for_target`, patched in the worker: not a product option).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from benchmarks.stamp import MNIST_DIR

MODELS = {"lenet300": "lenet_300_100", "lenet5": "lenet5"}


def run_one(cell: dict[str, Any], out: str) -> dict[str, Any]:
    import torch

    from dwf_core import defaults
    from dwf_core.config import TrainConfig
    from dwf_core.pipeline import RunSpec, run

    torch.set_num_threads(1)
    model = cell.get("model", "lenet300")
    kwargs = dict(cell.get("kwargs", {}))
    scale = kwargs.pop("lam_scale", None)
    mapped = getattr(defaults, "_unscaled_lam_for_target", defaults.lam_for_target)
    defaults._unscaled_lam_for_target = mapped  # type: ignore[attr-defined]
    defaults.lam_for_target = mapped if scale is None else (lambda *a, **k: scale * mapped(*a, **k))
    settings: dict[str, Any] = {"epochs": 30, "seed": cell["seed"], "method": "dwf", "depth": 3}
    settings["target_sparsity"] = 1 - 1 / cell["cr"]
    if model == "lenet5":
        settings["max_grad_norm"] = 5.0
    settings.update(kwargs)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        data = f"mnist-idx:{MNIST_DIR}"
        metrics = run(RunSpec(MODELS[model], data, Path(tmp), train=TrainConfig(**settings), export_onnx=False))
    row = {
        "name": cell["name"], "model": model, "cr": cell["cr"], "seed": cell["seed"], "kwargs": cell.get("kwargs", {}),
        "test_accuracy": metrics["test_accuracy"], "factorized_test_accuracy": metrics["factorized_test_accuracy"],
        "compression_ratio": metrics["compression_ratio"], "lam": metrics["lam"],
        "seconds": time.monotonic() - started,
    }  # fmt: skip
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(row, flush=True)
    return row


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["name"], row.get("model", "lenet300"), row["cr"], row["seed"])


def main() -> None:
    cells = json.loads(Path(sys.argv[1]).read_text())
    out = sys.argv[2]
    jobs = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    done = {_key(json.loads(line)) for line in Path(out).read_text().splitlines()} if Path(out).exists() else set()
    todo = [c for c in cells if _key(c) not in done]
    with get_context("spawn").Pool(jobs) as pool:
        pool.starmap(run_one, [(c, out) for c in todo])


if __name__ == "__main__":
    main()

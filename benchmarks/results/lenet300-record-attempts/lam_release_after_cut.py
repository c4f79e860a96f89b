"""Experiment (issue 14, third round): λ × RELEASE once the gradual cut's window has ended (the last 25% of steps).

    cd benchmarks/results/lenet300-record-attempts
    RELEASE=0 OMP_NUM_THREADS=1 PYTHONPATH=../../.. python lam_release_after_cut.py lenet_300_100 \
        10,50,100,200,500 0,1,2 30 2

Arguments: model, compression ratios, seeds, epochs, worker processes. Prints one JSON row per run. The trainer is
patched in each worker process (not a product option: the result did not justify one).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

FACTOR = float(os.environ.get("RELEASE", "0"))
_PATCHED: list[int] = []


def patch() -> None:
    """Scale every factor group's decay by FACTOR from the step the cut's window ends (again after each λ update)."""
    if _PATCHED:
        return
    _PATCHED.append(1)
    t = importlib.import_module("dwf_core.train")
    orig_step, orig_control, orig_restart = t.Trainer._step, t.Trainer._control, t.Trainer._restart

    def _step(self: Any, xb: Any, yb: Any, lr: float) -> Any:
        out = orig_step(self, xb, yb, lr)
        done = self.cut is not None and self.global_step + 1 >= self.cut.window[1]
        if done and not getattr(self, "_released", False):
            self._released = True
            t.set_lam(self.optimizer, self.lam * FACTOR)
        return out

    def _control(self: Any, epoch: int, metrics: dict[str, Any]) -> None:
        orig_control(self, epoch, metrics)
        if getattr(self, "_released", False):
            t.set_lam(self.optimizer, self.lam * FACTOR)

    def _restart(self: Any) -> None:
        self._released = False
        orig_restart(self)

    t.Trainer._step, t.Trainer._control, t.Trainer._restart = _step, _control, _restart


def cell(args: tuple[str, float, int, int]) -> dict[str, Any]:
    """One default DWF job at ``cr`` with the patch."""
    import torch

    from benchmarks.stamp import MNIST_DIR
    from dwf_core.config import TrainConfig
    from dwf_core.pipeline import RunSpec, run

    model, cr, seed, epochs = args
    torch.set_num_threads(1)
    patch()
    extra = {"max_grad_norm": 5.0} if model == "lenet5" else {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(method="dwf", epochs=epochs, seed=seed, target_sparsity=1 - 1 / cr, device="cpu", **extra)
        m = run(RunSpec(model, f"mnist-idx:{MNIST_DIR}", Path(tmp), train=cfg, export_onnx=False))
    return {
        "model": model,
        "cr": cr,
        "seed": seed,
        "release": FACTOR,
        "test": m["test_accuracy"],
        "achieved_cr": m["compression_ratio"],
        "depth": m["config"]["depth"],
        "s": round(time.monotonic() - started),
    }


def main() -> None:
    model, crs, seeds, epochs, jobs = sys.argv[1:6]
    todo = [(model, float(cr), int(s), int(epochs)) for s in seeds.split(",") for cr in crs.split(",")]
    with ProcessPoolExecutor(int(jobs), mp_context=get_context("spawn")) as pool:
        for row in pool.map(cell, todo):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

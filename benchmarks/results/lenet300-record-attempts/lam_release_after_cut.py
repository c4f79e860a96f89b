"""Experiment: λ scaled by FACTOR once the gradual cut's window has ended (the last 25% of steps)."""
import json, os, sys, tempfile, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

FACTOR = float(os.environ.get("RELEASE", "0"))


_PATCHED = []


def patch() -> None:
    if _PATCHED:
        return
    _PATCHED.append(1)
    import importlib

    T = importlib.import_module("dwf_core.train")
    orig_step, orig_control = T.Trainer._step, T.Trainer._control

    def released(self) -> bool:
        return self.cut is not None and self.global_step + 1 >= self.cut.window[1]

    def _step(self, xb, yb, lr):
        out = orig_step(self, xb, yb, lr)
        if released(self) and not getattr(self, "_released", False):
            self._released = True
            T.set_lam(self.optimizer, self.lam * FACTOR)
        return out

    def _control(self, epoch, metrics):
        orig_control(self, epoch, metrics)
        if getattr(self, "_released", False):
            T.set_lam(self.optimizer, self.lam * FACTOR)

    orig_restart = T.Trainer._restart

    def _restart(self):
        self._released = False
        orig_restart(self)

    T.Trainer._step, T.Trainer._control, T.Trainer._restart = _step, _control, _restart


def cell(args):
    model, cr, seed, epochs = args
    import torch
    torch.set_num_threads(1)
    patch()
    from dwf_core.config import TrainConfig
    from dwf_core.pipeline import RunSpec, run
    extra = {"max_grad_norm": 5.0} if model == "lenet5" else {}
    t = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(method="dwf", epochs=epochs, seed=seed, target_sparsity=1 - 1 / cr, device="cpu", **extra)
        m = run(RunSpec(model, "mnist-idx:/work/shared/data/mnist", Path(tmp), train=cfg, export_onnx=False))
    return {"model": model, "cr": cr, "seed": seed, "release": FACTOR, "test": m["test_accuracy"],
            "achieved_cr": m["compression_ratio"], "depth": m["config"]["depth"], "s": round(time.monotonic() - t)}


if __name__ == "__main__":
    model = sys.argv[1]; crs = [float(c) for c in sys.argv[2].split(",")]; seeds = [int(s) for s in sys.argv[3].split(",")]
    epochs = int(sys.argv[4]); jobs = int(sys.argv[5])
    todo = [(model, cr, s, epochs) for s in seeds for cr in crs]
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        for row in pool.map(cell, todo):
            print(json.dumps(row), flush=True)

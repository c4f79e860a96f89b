"""Experiment (issue 14, fourth round): the default DWF job with one training setting changed, on MNIST.

    cd benchmarks/results/lenet300-record-attempts
    OMP_NUM_THREADS=1 PYTHONPATH=../../.. python training_knobs.py training-knobs.cells.json training-knobs.jsonl 2

Arguments: a JSON list of cells ({"name", "cr", "seed", optional "model" (lenet300 | lenet5) and "kwargs"}), the
JSON-lines file the rows are appended to (cells already there are skipped), worker processes. A cell is one
`dwf_core.pipeline.run` of 30 epochs, D = 3, `target_sparsity = 1 − 1/cr`, everything else at its default, with
the cell's TrainConfig keyword arguments on top; "lam_scale" multiplies the λ the target's map gives
(`dwf_core.defaults.lam_for_target`, patched in the worker: not a product option).

Fifth round (also patches in the worker, not product options):
- "layer_lam": {"first": a, "last": b} multiplies λ on the first / last factorized tensor (the order of
  `dwf_core.factorize.factorized_tensors`) by a / b; the other layers keep the schedule's λ.
- "distill": {"alpha": α, "temperature": T} trains on (1 − α)·CE + α·T²·KL(teacher_T ‖ student_T), the teacher a
  frozen copy of the model as DWF's training starts (with "dense_epochs" the trained dense model: DWF's init keeps
  its function), as knowledge distillation does (Hinton et al. 2015); the dense phase trains on CE alone.
A row also holds each layer's nnz ("layers").

Seventh round (a patch in the worker, not a product option):
- "w_l2": μ adds μ·Σ‖w‖² over the factorized tensors' products w to DWF's objective: the L2 penalty the dense and
  GMP baselines train with (weight decay 2λ on w, λ = 5e-4), on top of DWF's penalty on the factors.
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


def _patch_layer_lam(first: float, last: float) -> None:
    """Optimizer groups of their own, with a λ scale, for the first and last factorized tensors' factors."""
    from dwf_core import train
    from dwf_core.factorize import factorized_tensors
    from dwf_core.penalty import param_groups

    def groups(model: Any, lam: float, **kw: Any) -> list[dict[str, Any]]:
        tensors = list(factorized_tensors(model))
        scale = {id(f): first for f in tensors[0].factors()} | {id(f): last for f in tensors[-1].factors()}
        out = []
        for group in param_groups(model, lam, **kw):
            if group["dwf"] != "factors":
                out.append(group)
                continue
            rest = [p for p in group["params"] if id(p) not in scale]
            if rest:
                out.append({**group, "params": rest})
            for value in sorted({scale[id(p)] for p in group["params"] if id(p) in scale}):
                params = [p for p in group["params"] if scale.get(id(p)) == value]
                out.append({**group, "params": params, "lam_scale": value,
                            "weight_decay": group["weight_decay"] * value})  # fmt: skip
        return out

    def set_lam(optimizer: Any, lam: float) -> None:
        for group in optimizer.param_groups:
            if group.get("dwf") == "factors":
                scale = group.get("lam_scale", 1.0)
                group["weight_decay"] = train.factor_weight_decay(lam, int(group["depth"])) * scale

    train.param_groups = groups  # type: ignore[assignment]
    train.set_lam = set_lam


def _patch_distill(alpha: float, temperature: float) -> None:
    """The trainer's loss becomes (1 − α)·CE + α·T²·KL against a frozen copy of the model at its first step."""
    import copy

    import torch
    from torch import nn

    from dwf_core import train
    from dwf_core.distributed import Comm

    teacher_logits: list[torch.Tensor] = []
    original_step = train.Trainer._step

    def step(self: Any, xb: torch.Tensor, yb: torch.Tensor, lr: float) -> torch.Tensor:
        if self.config.method != "dwf":  # the dense phase of dense_epochs trains as it does without distillation
            teacher_logits.clear()
            return original_step(self, xb, yb, lr)
        if not hasattr(self, "_kd_teacher"):
            self._kd_teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        with torch.no_grad():
            teacher_logits[:] = [self._kd_teacher(xb).float()]
        return original_step(self, xb, yb, lr)

    def loss(self: Any, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ce = nn.functional.cross_entropy(logits, y)
        if not teacher_logits:
            return ce, ce.detach().float() * y.shape[0]
        soft = nn.functional.kl_div(
            nn.functional.log_softmax(logits / temperature, dim=1),
            nn.functional.log_softmax(teacher_logits[0] / temperature, dim=1),
            reduction="batchmean", log_target=True,
        )  # fmt: skip
        mixed = (1 - alpha) * ce + alpha * temperature**2 * soft
        return mixed, ce.detach().float() * y.shape[0]

    train.Trainer._step = step  # type: ignore[method-assign]
    Comm.loss = loss  # type: ignore[method-assign]


def _patch_w_l2(mu: float) -> None:
    """DWF's objective gains μ·Σ‖w‖² over the products w of its factorized tensors (the baselines' L2 on w)."""
    import torch

    from dwf_core import train
    from dwf_core.distributed import Comm
    from dwf_core.factorize import factorized_tensors

    current: list[Any] = []
    original_step = train.Trainer._step
    original_loss = Comm.loss

    def step(self: Any, xb: torch.Tensor, yb: torch.Tensor, lr: float) -> torch.Tensor:
        current[:] = [self.model] if self.config.method == "dwf" else []
        return original_step(self, xb, yb, lr)

    def loss(self: Any, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        objective, summed = original_loss(self, logits, y)
        if current:
            objective = objective + mu * sum(t.weight().pow(2).sum() for t in factorized_tensors(current[0]))
        return objective, summed

    train.Trainer._step = step  # type: ignore[method-assign]
    Comm.loss = loss  # type: ignore[method-assign]


def run_one(cell: dict[str, Any], out: str) -> dict[str, Any]:
    import torch

    from dwf_core import defaults
    from dwf_core.config import TrainConfig
    from dwf_core.pipeline import RunSpec, run

    torch.set_num_threads(1)
    model = cell.get("model", "lenet300")
    kwargs = dict(cell.get("kwargs", {}))
    scale = kwargs.pop("lam_scale", None)
    if "layer_lam" in kwargs:
        layer = kwargs.pop("layer_lam")
        _patch_layer_lam(float(layer.get("first", 1.0)), float(layer.get("last", 1.0)))
    if "distill" in kwargs:
        kd = kwargs.pop("distill")
        _patch_distill(float(kd["alpha"]), float(kd["temperature"]))
    if "w_l2" in kwargs:
        _patch_w_l2(float(kwargs.pop("w_l2")))
    mapped = getattr(defaults, "_unscaled_lam_for_target", defaults.lam_for_target)
    defaults._unscaled_lam_for_target = mapped  # type: ignore[attr-defined]
    defaults.lam_for_target = mapped if scale is None else (lambda *a, **k: scale * mapped(*a, **k))
    settings: dict[str, Any] = {"epochs": 30, "seed": cell["seed"], "method": "dwf", "depth": 3}
    # The rows of the rounds before TrainConfig.distill existed: its default (on for a trained start) stays off here;
    # "distill" below is this script's own patch, the same objective.
    settings["distill"] = 0.0 if cell.get("kwargs", {}).get("method", "dwf") == "dwf" else None
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
        "layers": [layer["nnz"] for layer in metrics["layers"]],
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
    # A process per cell (one cell per task): the patches above stay in the process that applied them.
    with get_context("spawn").Pool(jobs, maxtasksperchild=1) as pool:
        pool.starmap(run_one, [(c, out) for c in todo], chunksize=1)


if __name__ == "__main__":
    main()

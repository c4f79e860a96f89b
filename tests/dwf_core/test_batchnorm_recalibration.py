"""BatchNorm statistics estimated again after a cut that cost accuracy (dwf_core.batchnorm_recalibration)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dwf_core.batchnorm_recalibration import batchnorm_layers, recalibrate_after_cut, recalibrate_batchnorm
from dwf_core.collapse import CollapseResult
from dwf_core.config import TrainConfig
from dwf_core.evaluate import accuracy_of, predict_logits
from dwf_core.report import sparsity_report

from .helpers import separable_data, write_band_npz

DATA = separable_data(256)
VAL = separable_data(128, seed=1)


def _bn_mlp() -> nn.Sequential:
    """Linear → BatchNorm → ReLU → Linear, fitted to DATA in train mode so the running statistics settle."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(DATA.x), DATA.y).backward()
        opt.step()
    with torch.no_grad():  # running statistics of the final weights, as after a long training
        model[1].reset_running_stats()
        model[1].momentum = None
        model(DATA.x)
        model[1].momentum = 0.1
    return model.eval()


def _accuracy(model: nn.Module) -> float:
    return accuracy_of(predict_logits(model, VAL.x), VAL.y)


def _cut(model: nn.Module, reference: float) -> CollapseResult:
    names = ["0.weight", "3.weight"]
    return CollapseResult(model, 0.0, names, sparsity_report(model, names=names), reference, _accuracy(model))


def test_statistics_are_the_average_over_the_batches_and_nothing_else_changes() -> None:
    model = _bn_mlp()
    model[1].running_mean.fill_(5.0)
    model[1].running_var.fill_(9.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = recalibrate_batchnorm(model, DATA.x, batches=2, batch_size=128)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the input model is untouched
    with torch.no_grad():
        pre = model[0](DATA.x)  # the BatchNorm's input: 2 batches of 128 cover all 256 examples
    assert torch.allclose(fresh[1].running_mean, pre.mean(0), atol=1e-5)
    assert torch.allclose(fresh[1].running_var, pre.var(0), rtol=0.02)
    assert fresh[1].momentum == 0.1 and not fresh.training and not fresh[1].training
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "3.weight"):
        assert torch.equal(fresh.state_dict()[key], model.state_dict()[key])


def test_a_cut_that_shrank_a_layers_outputs_is_repaired_and_kept() -> None:
    model = _bn_mlp()
    reference = _accuracy(model)
    cut = _bn_mlp()
    with torch.no_grad():  # what a cut does to the BatchNorm's input: its scale and mean move
        cut[0].weight.mul_(0.1)
        cut[0].bias.mul_(0.1)
    stale = _cut(cut, reference)
    assert stale.collapsed_accuracy is not None and stale.collapsed_accuracy < reference - 0.1
    repaired, info = recalibrate_after_cut(stale, model, DATA, VAL, batch_size=64)
    assert info is not None and info["kept"] is True and info["layers"] == 1
    assert info["val_accuracy_before"] == stale.collapsed_accuracy
    # BatchNorm undoes the tenfold shrink once it measures it: the uncut model's answers come back.
    assert repaired.collapsed_accuracy == info["val_accuracy_after"] >= reference - 0.02
    assert repaired.model is not cut and repaired.max_abs_logit_diff is not None
    assert torch.equal(repaired.model[0].weight, cut[0].weight)  # weights, and so the zeros, stay
    assert repaired.names == stale.names and repaired.threshold == stale.threshold


def test_nothing_is_done_without_a_cost_or_without_batchnorm() -> None:
    model = _bn_mlp()
    reference = _accuracy(model)
    free = _cut(model, reference)
    assert recalibrate_after_cut(free, model, DATA, VAL) == (free, None)
    assert recalibrate_after_cut(free, model, DATA, None) == (free, None)
    plain = nn.Sequential(nn.Linear(20, 4))
    no_bn = CollapseResult(plain, 0.0, ["0.weight"], sparsity_report(plain, names=["0.weight"]), 0.9, 0.5)
    assert not batchnorm_layers(plain) and recalibrate_after_cut(no_bn, plain, DATA, VAL) == (no_bn, None)


def test_statistics_that_do_not_help_are_not_kept() -> None:
    model = _bn_mlp()
    reference = _accuracy(model)
    # A cost that the statistics did not cause: the fresh ones score the same, so the collapse stays as it was.
    stale = _cut(model, min(1.0, reference + 0.05))
    kept, info = recalibrate_after_cut(stale, model, DATA, VAL)
    assert info is not None and info["kept"] is (info["val_accuracy_after"] > info["val_accuracy_before"])
    assert info["kept"] is False and kept is stale


class _ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten()
        )
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_a_dwf_job_with_a_costly_final_cut_records_the_recalibration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dwf_core.pipeline import RunSpec, run

    data = str(write_band_npz(tmp_path / "small.npz", 400, 200))
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=2, seed=0, device="cpu", lr=0.05, target_sparsity=0.99, cut="final", finetune_epochs=0)
    metrics = run(RunSpec(model=_ConvBN(), data=data, out_dir=tmp_path / "out", train=cfg, export_onnx=False))
    info = metrics["batchnorm_recalibration"]
    # Two short epochs cannot prune 99% gently: the final cut costs accuracy, and the statistics are measured again.
    assert metrics["factorized_val_accuracy"] > info["val_accuracy_before"]
    assert info["batches"] > 0 and info["layers"] == 1 and isinstance(info["kept"], bool)
    assert metrics["val_accuracy"] == info["val_accuracy_after" if info["kept"] else "val_accuracy_before"]
    assert metrics["sparsity"] >= 0.99 and metrics["finetune"] is None
    # The CLI's summary has a row for it.
    from rich.console import Console

    from dwf_core import cli

    recorder = Console(record=True, width=250)
    monkeypatch.setattr(cli, "out_console", recorder)
    cli._print_summary(metrics, tmp_path / "out")
    before, after = 100 * info["val_accuracy_before"], 100 * info["val_accuracy_after"]
    line = f"measured again after the cut ({info['batches']} batches): val {before:.2f}% → {after:.2f}%"
    assert line + ("" if info["kept"] else ", not kept") in recorder.export_text()


def test_frontier_cuts_of_a_batchnorm_model_get_fresh_statistics_where_they_help(tmp_path: Path) -> None:
    from dwf_core.export import load_sparse
    from dwf_core.factorize import factorize
    from dwf_core.frontier import compute_frontier

    factorized = factorize(_bn_mlp(), depth=2, init="balanced")  # the trained function, as factors
    ratios = [2.0, 5.0, 10.0]
    stale = compute_frontier(factorized, ratios, VAL)
    fresh = compute_frontier(factorized, ratios, VAL, out_dir=tmp_path, train=DATA)
    assert [p["batchnorm_recalibrated"] for p in stale] == [False] * 3
    for old, new in zip(stale, fresh, strict=True):
        assert new["nnz"] == old["nnz"]  # the same cut: only statistics may change
        assert new["val_accuracy"] == old["val_accuracy"] or (
            new["batchnorm_recalibrated"] and new["val_accuracy"] > old["val_accuracy"]
        )
    # Cutting 80% of the weights moves the statistics (68.0% → 68.75% validation accuracy on this model and seed).
    assert fresh[1]["batchnorm_recalibrated"] and fresh[1]["val_accuracy"] > stale[1]["val_accuracy"]
    saved = load_sparse(tmp_path / fresh[1]["file"])
    assert not torch.equal(saved["1.running_mean"], factorized[1].running_mean)  # the file has the new statistics
    kept = load_sparse(tmp_path / fresh[0]["file"])
    assert fresh[0]["batchnorm_recalibrated"] or torch.equal(kept["1.running_mean"], factorized[1].running_mean)

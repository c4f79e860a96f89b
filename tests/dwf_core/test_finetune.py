"""DWF with ``finetune_epochs``: masked fine-tuning after the collapse keeps the zeros and the classes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from dwf_core.baselines.run import FINETUNE_KEEP_MARGIN, finetune_collapsed, finetuning_kept
from dwf_core.collapse import collapse_and_verify
from dwf_core.config import TrainConfig
from dwf_core.train import train

from .helpers import TinySplit, mlp, separable_data, write_band_npz

DATA = separable_data(256)
VAL = separable_data(64, seed=1)


def test_finetune_keeps_the_sparsity_pattern_and_moves_the_survivors() -> None:
    cfg = TrainConfig(depth=3, epochs=2, lr=0.1, target_sparsity=0.8, finetune_epochs=2, device="cpu").resolved()
    trained = train(mlp(), DATA, VAL, cfg).model
    cut = collapse_and_verify(trained, VAL, "target", target_sparsity=0.8)
    before = {n: cut.model.get_parameter(n).detach().clone() for n in cut.names}
    ft, after, info = finetune_collapsed(cut, DATA, VAL, cfg)
    assert info["epochs"] == 2 and info["lr"] > 0 and info["val_accuracy_before"] == cut.collapsed_accuracy
    assert info["val_accuracy_after"] == after.collapsed_accuracy
    assert info["kept"] == "finetuned" and info["val_accuracy_after"] >= info["val_accuracy_before"]
    assert [h["epoch"] for h in ft.history] == [1, 2]
    assert after.names == cut.names and after.report.nnz <= cut.report.nnz
    moved = False
    for name in cut.names:
        new = after.model.get_parameter(name).detach()
        # Every pruned weight is still exactly zero; survivors were trained.
        assert torch.all(new[before[name] == 0] == 0)
        moved |= not torch.equal(new, before[name])
    assert moved
    # The fine-tuned model has the original plain classes and keys.
    assert list(after.model.state_dict()) == list(cut.model.state_dict())
    assert type(after.model[1]) is torch.nn.Linear  # type: ignore[index]


def test_a_finetuning_that_lowers_validation_accuracy_is_not_kept() -> None:
    cfg = TrainConfig(depth=2, epochs=15, lr=0.1, target_sparsity=0.5, finetune_epochs=2, device="cpu").resolved()
    trained = train(mlp(), DATA, VAL, cfg).model
    cut = collapse_and_verify(trained, VAL, "target", target_sparsity=0.5)
    assert cut.collapsed_accuracy is not None and cut.collapsed_accuracy > 0.5
    # Fine-tuning on shifted labels teaches the model the wrong classes: validation accuracy must fall.
    wrong = TinySplit(DATA.x, (DATA.y + 1) % 4)
    ft, kept, info = finetune_collapsed(cut, wrong, VAL, replace(cfg, finetune_epochs=10), lr=0.5)
    assert info["val_accuracy_after"] < info["val_accuracy_before"] - FINETUNE_KEEP_MARGIN
    assert info["val_accuracy_before"] == cut.collapsed_accuracy
    assert info["kept"] == "before" and kept is cut and len(ft.history) == 10
    # A drop within the margin (noise on a small validation split), a tie and no validation keep the fine-tuning.
    assert finetuning_kept(0.9, 0.9) and finetuning_kept(0.9, 0.9 - FINETUNE_KEEP_MARGIN) and finetuning_kept(None, 0.5)
    assert not finetuning_kept(0.9, 0.9 - 1.01 * FINETUNE_KEEP_MARGIN) and 0 < FINETUNE_KEEP_MARGIN < 0.01


def test_pipeline_fine_tunes_automatically_only_when_the_target_cut_hurts(tmp_path: Path) -> None:
    from dwf_core.pipeline import RunSpec, run

    data = str(write_band_npz(tmp_path / "small.npz", 400, 200))

    def metrics(name: str, **kw: object) -> dict[str, Any]:
        cfg = TrainConfig(epochs=2, seed=0, device="cpu", lr=0.05, **kw)  # type: ignore[arg-type]
        return run(RunSpec(model="lenet_300_100", data=data, out_dir=tmp_path / name, train=cfg, export_onnx=False))

    # Two short epochs cannot prune 99% gently: the final cut hurts, so "auto" fine-tunes 1 epoch (10% of 2, ≥ 1).
    auto = metrics("auto", target_sparsity=0.99, cut="final")
    assert auto["finetune"] is not None and auto["finetune"]["reason"].startswith("auto")
    assert auto["finetune"]["epochs"] == 1
    assert [h["phase"] for h in auto["history"]] == ["train", "train", "finetune"]
    kept = auto["finetune"]["kept"]
    assert (
        auto["finetune"][{"finetuned": "val_accuracy_after", "before": "val_accuracy_before"}[kept]]
        == auto["val_accuracy"]
    )
    assert auto["sparsity"] >= 0.99
    # factorized_val_accuracy is DWF's factorized model's (its last training epoch's validation accuracy), as
    # factorized_test_accuracy is, not the fine-tuned depth-1 model's; so is the logit difference.
    assert auto["factorized_val_accuracy"] == [h for h in auto["history"] if h["phase"] == "train"][-1]["val_accuracy"]
    assert auto["factorized_val_accuracy"] - auto["finetune"]["val_accuracy_before"] > 0.005  # what set it off
    assert auto["max_abs_logit_diff_val"] > 0
    # 0 means never; without a target the auto threshold already bounds the cost, so nothing is fine-tuned.
    never = metrics("never", target_sparsity=0.99, finetune_epochs=0, cut="final")
    assert never["finetune"] is None and never["sparsity"] == auto["sparsity"]
    assert metrics("lam", lam=1e-4)["finetune"] is None
    # The default gradual cut reaches the target during training: the collapse cuts nothing the model still uses.
    gradual = metrics("gradual", target_sparsity=0.99)
    assert gradual["cut"]["mode"] == "gradual" and gradual["finetune"] is None and gradual["sparsity"] >= 0.99
    assert gradual["factorized_val_accuracy"] == gradual["val_accuracy"]

"""The masked fine-tuning after a distilled DWF run keeps distilling from the run's teacher (``TrainResult.distiller``
→ ``finetune_collapsed``): the fine-tuned model stays at the teacher under pure distillation and moves without it; a
linear α (at 0 by the end of the DWF run) and a run without distillation fine-tune on the labels; the pipeline passes
it on and metrics.json says which."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from dwf_core.baselines.run import finetune_collapsed
from dwf_core.collapse import CollapseResult, collapse_and_verify
from dwf_core.config import TrainConfig
from dwf_core.distill import Distillation, Distiller, make_teacher
from dwf_core.factorize import factorize
from dwf_core.pipeline import RunSpec, run
from dwf_core.train import train

from .helpers import separable_data, trained_mlp, write_band_npz

DATA = separable_data(256)
VAL = separable_data(64, seed=1)
FT = TrainConfig(depth=3, target_sparsity=0.5, finetune_epochs=2, lr=0.1, seed=0, device="cpu", batch_size=32)


def _collapsed_half_sparse_mlp() -> CollapseResult:
    """A model trained a little (the labels still move it), half its weights cut: what a fine-tuning starts from."""
    model = trained_mlp(DATA, steps=30)
    factorize(model, 3, "balanced")  # the function kept: the collapse gives the trained weights back
    return collapse_and_verify(model, VAL, "target", target_sparsity=0.5)


def test_pure_distillation_holds_the_finetuning_at_the_teacher_and_the_labels_move_it() -> None:
    collapsed = _collapsed_half_sparse_mlp()
    teacher = make_teacher(collapsed.model)  # the cut model itself: under α = 1 its function has zero gradient
    x = VAL.x
    reference = teacher(x).detach()
    kept_run, kept, info = finetune_collapsed(
        collapsed, DATA, VAL, replace(FT, lam=0.0), distiller=Distiller(Distillation(1.0, 4.0), teacher)
    )
    moved_run, moved, info_off = finetune_collapsed(collapsed, DATA, VAL, replace(FT, lam=0.0))
    with torch.no_grad():
        assert float((kept.model(x) - reference).abs().max()) < 1e-3
        assert float((moved.model(x) - reference).abs().max()) > 1e-2
    assert info["distill"] == 1.0 and info_off["distill"] == 0.0
    assert kept_run.distiller is not None and moved_run.distiller is None
    # The zeros of the cut stay zeros either way.
    for name in collapsed.names:
        zeros = collapsed.model.get_parameter(name) == 0
        assert bool((kept.model.get_parameter(name)[zeros] == 0).all())


def test_a_linear_alpha_finetunes_on_the_labels() -> None:
    collapsed = _collapsed_half_sparse_mlp()
    linear = Distiller(Distillation(1.0, 4.0, "linear"), make_teacher(collapsed.model))
    ft_run, _after, info = finetune_collapsed(collapsed, DATA, VAL, FT, distiller=linear)
    assert info["distill"] == 0.0 and ft_run.distiller is None


def test_a_distilled_run_hands_its_distiller_to_the_result() -> None:
    common = {"epochs": 1, "lam": 1e-4, "lr": 0.1, "init": "balanced", "seed": 0, "device": "cpu", "batch_size": 64}
    distilled = train(trained_mlp(DATA, steps=30), DATA, VAL, TrainConfig(distill=0.5, **common))  # type: ignore[arg-type]
    assert distilled.distiller is not None and distilled.distiller.distillation.alpha == 0.5
    plain = train(trained_mlp(DATA, steps=30), DATA, VAL, TrainConfig(**common))  # type: ignore[arg-type]
    assert plain.distiller is None


def test_the_pipeline_finetunes_with_the_runs_teacher_and_says_so(tmp_path: Path) -> None:
    data = str(write_band_npz(tmp_path / "small.npz", 300, 100))
    common = {
        "seed": 0, "device": "cpu", "batch_size": 64, "epochs": 1, "target_sparsity": 0.9, "dense_epochs": 1,
        "finetune_epochs": 1,
    }  # fmt: skip
    distilled = run(
        RunSpec("lenet_300_100", data, tmp_path / "a", train=TrainConfig(distill=0.5, **common), export_onnx=False)  # type: ignore[arg-type]
    )
    assert distilled["finetune"]["distill"] == 0.5
    off = run(RunSpec("lenet_300_100", data, tmp_path / "b", train=TrainConfig(**common), export_onnx=False))  # type: ignore[arg-type]
    assert off["finetune"]["distill"] == 0.0

"""DWF's gradual cut (dwf_core.gradual_cut): masks grow on the cubic schedule, hold the target at the end, survive a
resume and reset on a restart; config and pipeline name it; GMP's masks reset on a restart too."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dwf_core.baselines.gmp import GMPTrainer
from dwf_core.checkpoint import latest_epoch
from dwf_core.config import TrainConfig
from dwf_core.errors import ConfigError
from dwf_core.factorize import factorize, factorized_tensors
from dwf_core.gradual_cut import GradualCut, collapsed_magnitudes
from dwf_core.masking import cubic_sparsity, mask_sparsity, pruned_count
from dwf_core.report import sparsity_report
from dwf_core.train import Trainer, TrainingCancelled, train

from .helpers import mlp, separable_data

DATA = separable_data(200)
VAL = separable_data(64, seed=1)
CFG = TrainConfig(depth=3, epochs=4, batch_size=32, lr=0.1, target_sparsity=0.9, seed=3, device="cpu")


def test_default_cut_is_gradual_only_where_it_applies() -> None:
    assert CFG.resolved().cut == "gradual"
    assert replace(CFG, cut="final").resolved().cut == "final"
    assert replace(CFG, target_sparsity=None, lam=1e-3).resolved().cut is None
    assert replace(CFG, method="gmp").resolved().cut is None
    for bad in (
        replace(CFG, target_sparsity=None, lam=1e-3, cut="gradual"),
        replace(CFG, method="gmp", cut="gradual"),
        replace(CFG, structure="units", target_sparsity=None, cut="final"),
        replace(CFG, cut="sometimes"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ConfigError) as err:
            bad.resolved()
        assert err.value.param == "cut"


def test_masks_follow_the_cubic_schedule_and_only_grow() -> None:
    model = mlp()
    factorize(model, 3, "varmatch", seed=0)
    cut = GradualCut(model, 0.8, total_steps=100)
    start, end, interval = cut.window
    assert (start, end) == (10, 75)
    previous: dict[str, torch.Tensor] = {}
    for step in range(1, 101):
        with torch.no_grad():  # weights keep moving between pruning steps, as in training
            for t in factorized_tensors(model):
                t.factors()[0].add_(0.01 * torch.randn_like(t.factors()[0]))
        cut.after_step(step)
        if cut.masks:
            assert mask_sparsity(cut.masks) == pytest.approx(cubic_sparsity(min(step, end), 0.8, start, end), abs=0.01)
            for name, mask in previous.items():
                assert not (cut.masks[name] & ~mask).any(), "a pruned weight came back"
            previous = {n: m.clone() for n, m in cut.masks.items()}
        for t in factorized_tensors(model):
            mask = cut.masks.get(t.name)
            if mask is not None:
                assert all(bool((f[~mask] == 0).all()) for f in t.factors())
    assert mask_sparsity(cut.masks) == pytest.approx(0.8, abs=0.005)
    assert cut.events == len([s for s in range(start + 1, end + 1) if (s - start) % interval == 0 or s == end])
    magnitudes = collapsed_magnitudes(model)
    zeros = sum(int((magnitudes[n] == 0).sum()) for n in magnitudes)
    assert zeros == pruned_count(sum(m.numel() for m in magnitudes.values()), 0.8)


def test_a_gradual_run_ends_at_the_target_with_exact_zeros_and_reports_it() -> None:
    result = train(mlp(), DATA, VAL, CFG)
    cut = result.extra["cut"]
    assert cut["mode"] == "gradual" and cut["events"] > 10 and cut["mask_sparsity"] == pytest.approx(0.9, abs=0.005)
    exact = sparsity_report(result.model, threshold=0.0)
    assert exact.sparsity >= 0.9 - 0.005
    final = train(mlp(), DATA, VAL, replace(CFG, cut="final"))
    assert final.extra["cut"] is None
    assert sparsity_report(final.model, threshold=0.0).sparsity < 0.5  # nothing masked during training


def test_resume_masks_exactly_as_the_uninterrupted_run(tmp_path: Path) -> None:
    full = train(mlp(), DATA, VAL, CFG, checkpoint_dir=tmp_path / "full")
    calls = {"n": 0}

    def stop_in_epoch_three() -> bool:
        calls["n"] += 1
        return calls["n"] > 2 * 7 + 3  # 7 steps per epoch; the masks already grew in epochs 1-2

    with pytest.raises(TrainingCancelled):
        train(mlp(), DATA, VAL, CFG, checkpoint_dir=tmp_path / "cut", should_stop=stop_in_epoch_three)
    assert latest_epoch(tmp_path / "cut") == 2
    resumed = train(mlp(seed=99), DATA, VAL, CFG, checkpoint_dir=tmp_path / "cut")
    assert resumed.resumed_from_epoch == 2
    for (name, x), y in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    assert resumed.extra["cut"] == full.extra["cut"]


class _ForcedRestart(Trainer):
    """Restarts once at the end of epoch 2, as a λ or divergence restart would."""

    restarted = False

    def _restart_if_over_pruned(self, epoch: int, metrics: dict[str, object]) -> bool:
        if epoch == 2 and not self.restarted:
            self.restarted = True
            assert self.cut is not None and self.cut.masks
            self._restart()
            return True
        return False


def test_a_restart_starts_without_masks() -> None:
    trainer = _ForcedRestart(mlp(), DATA, VAL, CFG)
    trainer._prepare()
    trainer._keep_initial_state()
    assert trainer.cut is not None
    trainer.cut.after_step(trainer.cut.window[1])  # masks at the target
    trainer._restart()
    assert trainer.cut.masks == {} and trainer.cut.events == 0
    restarted = _ForcedRestart(mlp(), DATA, VAL, CFG).fit()
    uninterrupted = train(mlp(), DATA, VAL, CFG)
    # The restart replays the whole run: same masks, same weights as a run that never restarted.
    assert restarted.extra["cut"] == uninterrupted.extra["cut"]
    for x, y in zip(restarted.model.state_dict().values(), uninterrupted.model.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def test_gmp_restart_starts_from_the_initial_masks() -> None:
    cfg = TrainConfig(method="gmp", epochs=2, batch_size=32, lr=0.1, target_sparsity=0.9, seed=0, device="cpu")
    trainer = GMPTrainer(mlp(), DATA, VAL, cfg.resolved(), final_sparsity=0.9)
    trainer._prepare()
    trainer._keep_initial_state()
    trainer.after_step(trainer.window[1])
    assert mask_sparsity(trainer.masks) == pytest.approx(0.9, abs=0.01) and trainer.schedule
    trainer._restart()
    assert trainer.masks == {} and trainer.schedule == []


def test_cli_cut_option_reaches_metrics(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from dwf_core.cli import app

    from .helpers import write_band_npz

    data = write_band_npz(tmp_path / "small.npz", 300, 100)
    for cut in ("final", "gradual"):
        out = tmp_path / cut
        argv = ["train", "--model", "lenet_300_100", "--data", str(data), "--epochs", "1", "--target-sparsity",
                "0.9", "--cut", cut, "--out", str(out), "--device", "cpu", "--finetune-epochs", "0"]  # fmt: skip
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 0, result.output
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["cut"]["mode"] == metrics["config"]["cut"] == cut
        assert metrics["sparsity"] == pytest.approx(0.9, abs=1e-3)


def test_cli_summary_says_how_the_finetuning_went(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from dwf_core.cli import app

    from .helpers import write_band_npz

    data = write_band_npz(tmp_path / "small.npz", 300, 100)
    argv = ["train", "--model", "lenet_300_100", "--data", str(data), "--epochs", "1", "--target-sparsity", "0.9",
            "--cut", "final", "--out", str(tmp_path / "out"), "--device", "cpu", "--finetune-epochs", "1"]  # fmt: skip
    result = CliRunner().invoke(app, argv, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    finetune = json.loads((tmp_path / "out" / "metrics.json").read_text())["finetune"]
    assert (finetune["epochs"], finetune["optimizer"], finetune["reason"]) == (1, "sgd", "requested")
    before, after = 100 * finetune["val_accuracy_before"], 100 * finetune["val_accuracy_after"]
    line = f"1 epoch(s), sgd LR {finetune['lr']:.3g} (requested): val {before:.2f}% → {after:.2f}%"
    # The summary says when the fine-tuning lowered validation accuracy so far that the model before it was kept.
    line += {"finetuned": "", "before": ", kept the model before it"}[finetune["kept"]]
    assert line in result.output


def test_frontier_of_a_gradual_run_keeps_only_ratios_at_or_above_the_target() -> None:
    from dwf_core.frontier import compute_frontier

    result = train(mlp(), DATA, VAL, CFG)  # target 0.9: CR 10
    points = compute_frontier(result.model, [5.0, 20.0], VAL)
    assert [p["requested_compression_ratio"] for p in points] == [20.0]
    assert points[0]["compression_ratio"] == pytest.approx(20.0, rel=0.02)  # 768 weights: 38 of them kept

"""Baselines (``--method``): each reaches the requested sparsity with exact, persistent zeros and plain keys."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from dwf_core.baselines import METHODS, PRUNING_METHODS
from dwf_core.baselines.at_init import snip_scores, synflow_masks
from dwf_core.baselines.gmp import gmp_sparsity, gmp_window
from dwf_core.baselines.masks import finetune_epochs_for, weights_of
from dwf_core.baselines.run import run_baseline
from dwf_core.cli import app
from dwf_core.config import TrainConfig
from dwf_core.errors import ConfigError
from dwf_core.factorize import factorize
from dwf_core.intake import build_model
from dwf_core.masking import global_topk_mask
from dwf_core.report import sparsity_report

from .helpers import ResidualNorm, TinySplit, mlp, separable_data, write_band_npz

DATA = separable_data(256)
VAL = separable_data(64, seed=1)


def _images(n: int, seed: int) -> TinySplit:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.3
    for i, label in enumerate(y.tolist()):
        x[i, 0, 2 * label : 2 * label + 2, :] += 2.0
    return TinySplit(x, y)


def _cfg(method: str, target: float | None, epochs: int = 2) -> TrainConfig:
    return TrainConfig(
        method=method, epochs=epochs, batch_size=32, lr=0.05, target_sparsity=target, seed=0, device="cpu"
    ).resolved()


def _check_plain(model: nn.Module, reference: nn.Module) -> None:
    state = model.state_dict()
    assert list(state) == list(reference.state_dict())
    assert not any("parametrizations" in k for k in state)
    reference.load_state_dict(state, strict=True)
    for value in state.values():
        zeros = value == 0
        assert not torch.signbit(value[zeros]).any()  # +0.0, as the sparse encoders expect


@pytest.mark.parametrize("target", [0.5, 0.9])
@pytest.mark.parametrize("method", PRUNING_METHODS)
def test_pruning_method_reaches_target_with_persistent_zeros(method: str, target: float) -> None:
    result = run_baseline(mlp(), DATA, VAL, _cfg(method, target))
    report = result.collapsed.report
    assert abs(report.sparsity - target) <= 0.01, report.sparsity
    assert [t.name for t in report.layers] == ["1.weight", "3.weight"]
    _check_plain(result.collapsed.model, mlp())
    if method != "magnitude":
        # The mask's zeros are still exact zeros after the last optimizer step (and nothing else is zero).
        assert report.sparsity == pytest.approx(result.info["mask_sparsity"], abs=1e-12)
        assert result.train.history[-1]["exact_zero_sparsity"] == pytest.approx(report.sparsity, abs=1e-12)
    assert result.collapsed.collapsed_accuracy is not None


@pytest.mark.parametrize("method", ["gmp", "synflow", "snip", "magnitude-ft"])
def test_pruning_a_cnn(method: str) -> None:
    train, val = _images(128, 0), _images(32, 1)
    result = run_baseline(ResidualNorm(), train, val, _cfg(method, 0.9))
    assert abs(result.collapsed.report.sparsity - 0.9) <= 0.01
    _check_plain(result.collapsed.model, ResidualNorm())


def test_dense_ignores_the_target_and_prunes_nothing() -> None:
    result = run_baseline(mlp(), DATA, VAL, replace(_cfg("dense", 0.9, epochs=6), lr=0.1))
    assert result.collapsed.report.sparsity < 0.01
    assert result.info["depth"] == 1 and result.info["l2_lam"] == pytest.approx(5e-4)
    _check_plain(result.collapsed.model, mlp())
    assert result.train.history[-1]["val_accuracy"] > 0.6


def test_magnitude_ft_fine_tunes_after_training() -> None:
    cfg = TrainConfig(method="magnitude-ft", epochs=2, batch_size=32, lr=0.05, target_sparsity=0.9, device="cpu")
    result = run_baseline(mlp(), DATA, VAL, cfg.resolved())
    phases = [h["phase"] for h in result.train.history]
    assert phases == ["train", "train", "finetune"]
    assert result.info["finetune_epochs"] == 1
    assert finetune_epochs_for(40, None) == 4 and finetune_epochs_for(30, None) == 3
    assert finetune_epochs_for(3, None) == 1 and finetune_epochs_for(3, 5) == 5


def test_global_topk_mask_prunes_exactly_and_keeps_the_largest() -> None:
    scores = {"a": torch.arange(10.0), "b": torch.arange(10.0, 20.0).reshape(2, 5)}
    masks = global_topk_mask(scores, 0.25)
    assert int(masks["a"].sum()) + int(masks["b"].sum()) == 15
    assert masks["b"].all() and masks["a"].tolist() == [False] * 5 + [True] * 5


def test_snip_scores_are_sane() -> None:
    model = mlp()
    factorize(model, 1, "varmatch", seed=0)
    scores = snip_scores(model, DATA.x, DATA.y, batch_size=32)
    weights = weights_of(model)
    assert set(scores) == set(weights)
    for name, s in scores.items():
        assert s.shape == weights[name].shape and torch.isfinite(s).all() and (s >= 0).all()
        assert float(s.sum()) > 0
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind
    # One batch holding all the data: exactly |∂L/∂w ⊙ w| of the full-batch loss.
    full = snip_scores(model, DATA.x, DATA.y, batch_size=len(DATA.x), batches=1)
    nn.functional.cross_entropy(model(DATA.x), DATA.y).backward()
    for name, w in weights.items():
        assert w.grad is not None
        torch.testing.assert_close(full[name], (w.grad * w).detach().abs())
    masks = global_topk_mask(scores, 0.9)
    kept = torch.cat([scores[n][masks[n]] for n in scores])
    pruned = torch.cat([scores[n][~masks[n]] for n in scores])
    assert float(kept.min()) >= float(pruned.max())


def test_synflow_avoids_layer_collapse() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(20, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 4)
    )
    factorize(model, 1, "varmatch", seed=0)
    before = {n: w.detach().clone() for n, w in weights_of(model).items()}
    for target in (0.9, 0.99):
        masks = synflow_masks(model, DATA.x[:1], target)
        density = {n: float(m.float().mean()) for n, m in masks.items()}
        assert all(d > 0 for d in density.values()), density
        total = sum(m.numel() for m in masks.values())
        assert sum(int(m.sum()) for m in masks.values()) == total - round(target * total)
    # Data-free and side-effect free: the model's weights are untouched, no gradients left behind.
    assert all(torch.equal(before[n], w) for n, w in weights_of(model).items())
    assert all(p.grad is None for p in model.parameters())


def test_gmp_schedule_is_monotone_and_hits_the_final_sparsity() -> None:
    start, end, interval = gmp_window(1000)
    assert (start, end) == (100, 750) and interval >= 1
    values = [gmp_sparsity(t, 0.9, start, end) for t in range(1001)]
    assert values == sorted(values) and values[start] == 0.0 and values[end] == 0.9 and values[-1] == 0.9
    # Cubic: fast at first — half the remaining sparsity comes in the first ~21% of the window.
    assert gmp_sparsity(start + round(0.2063 * (end - start)), 1.0, start, end) == pytest.approx(0.5, abs=0.01)
    for steps in (1, 2, 8, 16):
        s, e, _ = gmp_window(steps)
        assert 0 <= s < e <= steps


def test_gmp_trainer_prunes_on_schedule() -> None:
    result = run_baseline(mlp(), DATA, VAL, _cfg("gmp", 0.9, epochs=3))
    gmp = result.info["gmp"]
    assert gmp["events"] >= 2 and gmp["end_step"] <= 24
    sparsities = [h["exact_zero_sparsity"] for h in result.train.history]
    assert sparsities == sorted(sparsities) and sparsities[-1] == pytest.approx(0.9, abs=0.01)


def test_config_method_checks() -> None:
    assert TrainConfig().method == "dwf" and set(PRUNING_METHODS) < set(METHODS)
    with pytest.raises(ConfigError) as err:
        TrainConfig(method="obd").validate()
    assert err.value.param == "method"
    for method in PRUNING_METHODS:
        with pytest.raises(ConfigError) as err:
            TrainConfig(method=method).validate()
        assert err.value.param == "target_sparsity" and method in err.value.message
    TrainConfig(method="dense").validate()
    cfg = TrainConfig(method="magnitude", depth=3, lam=1e-4, target_sparsity=0.9).resolved()
    assert cfg.depth == 1 and cfg.lam == 1e-4  # λ is the baseline's L2 strength, not exclusive with a target
    with pytest.raises(ConfigError):
        TrainConfig(method="dwf", lam=1e-4, target_sparsity=0.9).resolved()
    with pytest.raises(ConfigError) as err:
        run_baseline(mlp(), DATA, VAL, TrainConfig())
    assert err.value.param == "method"


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_band_npz(tmp_path_factory.mktemp("data") / "small.npz", 400, 100)


def test_cli_magnitude_writes_metrics_and_plain_artifacts(small_npz: Path, tmp_path: Path) -> None:
    argv = ["train", "--model", "lenet_300_100", "--data", str(small_npz), "--epochs", "1", "--lr", "0.05",
            "--method", "magnitude", "--target-sparsity", "0.9", "--out", str(tmp_path), "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == "magnitude" and metrics["target_sparsity"] == 0.9 and metrics["target_met"] is True
    assert abs(metrics["sparsity"] - 0.9) <= 0.01 and metrics["config"]["depth"] == 1
    assert metrics["baseline"]["threshold_mode"] == metrics["threshold_mode"] == "target"
    for key in ("test_accuracy", "compression_ratio", "nnz", "total", "layers", "history"):
        assert key in metrics, key
    assert {a["name"] for a in metrics["artifacts"]} >= {"model.safetensors", "model.sparse.safetensors"}
    model = build_model("lenet_300_100", num_classes=10)
    model.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)
    assert sparsity_report(model).nnz == metrics["nnz"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--method", "obd", "--target-sparsity", "0.9"], "--method must be one of dwf, dense"),
        (["--method", "snip"], "--method snip needs --target-sparsity"),
    ],
)
def test_cli_method_errors(tmp_path: Path, extra: list[str], expected: str) -> None:
    argv = ["train", "--model", "lenet_300_100", "--data", "/nonexistent.npz", "--out", str(tmp_path), *extra]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert expected in " ".join(result.output.split())
    assert not (tmp_path / "metrics.json").exists()


def test_baselines_default_to_a_dense_friendly_lr() -> None:
    """DWF's LR 0.3 made dense LeNet-300-100 diverge to chance; baselines default to 0.1 (docs/defaults.md)."""
    assert TrainConfig(method="magnitude", target_sparsity=0.9).resolved().lr == 0.1
    assert TrainConfig(method="dense").resolved().lr == 0.1
    assert TrainConfig().resolved().lr == 0.3
    assert TrainConfig(method="gmp", target_sparsity=0.9, lr=0.2).resolved().lr == 0.2

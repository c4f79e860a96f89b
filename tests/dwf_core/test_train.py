"""Trainer: determinism, resume equals uninterrupted, metrics, callbacks, clear failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dwf_core.checkpoint import latest_epoch
from dwf_core.config import TrainConfig
from dwf_core.errors import ConfigError, TrainingError
from dwf_core.train import ProgressEvent, Trainer, TrainingCancelled, train

from .helpers import mlp, separable_data

DATA = separable_data(200)
VAL = separable_data(64, seed=1)
CFG = TrainConfig(depth=3, epochs=3, batch_size=32, lr=0.1, lam=1e-3, warmup_epochs=0.5, seed=3, device="cpu")


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _history_without_times(history: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in history]


def test_same_seed_same_result() -> None:
    a = train(mlp(), DATA, VAL, CFG)
    b = train(mlp(), DATA, VAL, CFG)
    assert all(torch.equal(x, y) for x, y in zip(_params(a.model).values(), _params(b.model).values(), strict=True))


@pytest.mark.parametrize(
    ("optimizer", "target"), [("sgd", None), ("adam", None), ("sgd", 0.9)], ids=["sgd", "adam", "sgd-target"]
)
def test_resume_equals_uninterrupted(tmp_path: Path, optimizer: str, target: float | None) -> None:
    cfg = TrainConfig(
        **{
            **CFG.to_dict(),
            "optimizer": optimizer,
            "lr": 0.1 if optimizer == "sgd" else 1e-2,
            "lam": None if target is not None else CFG.lam,
            "target_sparsity": target,
            # The default holds λ at the map's value; let the feedback move it so its state must be resumed.
            "extra": {"controller": {"hold": 0.25}} if target is not None else {},
        }
    )
    full = train(mlp(), DATA, VAL, cfg, checkpoint_dir=tmp_path / "full")

    calls = {"n": 0}
    steps_per_epoch = 7  # ceil(200 / 32)

    def stop_in_epoch_two() -> bool:
        calls["n"] += 1
        return calls["n"] > steps_per_epoch + 3

    with pytest.raises(TrainingCancelled):
        train(mlp(), DATA, VAL, cfg, checkpoint_dir=tmp_path / "cut", should_stop=stop_in_epoch_two)
    assert latest_epoch(tmp_path / "cut") == 1
    # Whatever torch's global RNG did in between must not matter: the checkpoint restores it.
    torch.rand(1000)
    resumed = train(mlp(seed=99), DATA, VAL, cfg, checkpoint_dir=tmp_path / "cut")
    assert resumed.resumed_from_epoch == 1
    for (name, x), y in zip(_params(full.model).items(), _params(resumed.model).values(), strict=True):
        assert torch.equal(x, y), name
    assert _history_without_times(full.history) == _history_without_times(resumed.history)
    if target is not None:
        # The controller moved λ, and the resumed run continued from the saved λ, not from the default.
        assert len({h["lam"] for h in full.history}) > 1
        assert full.extra["lam"] == resumed.extra["lam"]


def test_resume_with_other_settings_refused(tmp_path: Path) -> None:
    train(mlp(), DATA, VAL, CFG, checkpoint_dir=tmp_path)
    other = TrainConfig(**{**CFG.to_dict(), "lam": 5e-3})
    with pytest.raises(TrainingError) as err:
        train(mlp(), DATA, VAL, other, checkpoint_dir=tmp_path)
    assert err.value.code == "checkpoint_mismatch" and err.value.param == "lam"


def test_a_checkpoint_of_other_tensors_is_refused_with_a_typed_error(tmp_path: Path) -> None:
    """Same settings, another set of factorized tensors (here: a wider first layer) gives checkpoint_mismatch."""
    train(mlp(), DATA, VAL, CFG, checkpoint_dir=tmp_path)
    with pytest.raises(TrainingError) as err:
        train(mlp(hidden=24), DATA, VAL, CFG, checkpoint_dir=tmp_path)
    assert err.value.code == "checkpoint_mismatch" and err.value.param == "model"


def test_a_checkpoint_from_before_a_new_setting_resumes(tmp_path: Path) -> None:
    """A checkpoint whose saved config lacks settings added since (lr_probe, optimizer_probe) resumes with the running
    values, as the uninterrupted run: the job of an older version survives an upgrade."""
    import json

    epochs: list[int] = []

    def record(event: ProgressEvent) -> None:
        if event.kind == "epoch":
            epochs.append(event.epoch)

    with pytest.raises(TrainingCancelled):
        train(mlp(), DATA, VAL, CFG, checkpoint_dir=tmp_path, on_progress=record, should_stop=lambda: bool(epochs))
    [state_path] = tmp_path.glob("ckpt-*.json")
    state = json.loads(state_path.read_text())
    for key in ("lr_probe", "optimizer_probe"):
        del state["config"][key]
    state_path.write_text(json.dumps(state))
    resumed = train(mlp(), DATA, VAL, CFG, checkpoint_dir=tmp_path)
    full = train(mlp(), DATA, VAL, CFG)
    assert resumed.resumed_from_epoch == 1
    assert _history_without_times(full.history) == _history_without_times(resumed.history)


def test_corrupt_checkpoint_refused(tmp_path: Path) -> None:
    train(mlp(), DATA, VAL, CFG, checkpoint_dir=tmp_path)
    tensors = next(tmp_path.glob("ckpt-*.safetensors"))
    raw = bytearray(tensors.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    tensors.write_bytes(bytes(raw))
    with pytest.raises(TrainingError) as err:
        train(mlp(), DATA, VAL, CFG, checkpoint_dir=tmp_path)
    assert err.value.code == "corrupt_checkpoint"


def test_metrics_and_progress_events() -> None:
    events: list[ProgressEvent] = []
    cfg = TrainConfig(**{**CFG.to_dict(), "progress_every": 2})
    result = train(mlp(), DATA, VAL, cfg, on_progress=events.append)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    keys = {
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "sparsity",
        "compression_ratio",
        "misalignment",
        "lr",
        "factor_penalty",
        "exact_zero_sparsity",
        "nnz",
    }
    assert keys <= set(result.history[-1])
    assert result.history[-1]["val_accuracy"] > 0.5
    epochs = [e for e in events if e.kind == "epoch"]
    steps = [e for e in events if e.kind == "step"]
    assert len(epochs) == 3 and len(steps) == 3 * 3
    assert epochs[-1].fraction == 1.0 and epochs[-1].metrics == result.history[-1]
    assert set(result.init_stats) == {"1.weight", "3.weight"}


def test_misalignment_decreases() -> None:
    cfg = TrainConfig(**{**CFG.to_dict(), "epochs": 10, "lam": 5e-2})
    history = train(mlp(), DATA, VAL, cfg).history
    assert history[-1]["misalignment"] < history[0]["misalignment"]


def test_non_finite_loss_stops_with_clear_error() -> None:
    """An inf in the data: every restart (lower LR, clipping) meets it again, and the error says what was tried.

    A diverging LR restarts and trains: tests/dwf_core/test_divergence_restart.py."""
    data = separable_data(64)
    data.x[3, 0] = float("inf")
    with pytest.raises(TrainingError) as err:
        train(mlp(), data, VAL, CFG)
    assert err.value.code == "non_finite_loss" and "lower the learning rate" in err.value.message
    assert "each of 4 attempts" in err.value.message and "extreme values" in err.value.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("depth", 0),
        ("epochs", 0),
        ("epochs", 10**6),
        ("lr", -1.0),
        ("lam", float("nan")),
        ("momentum", 1.0),
        ("batch_size", 0),
        ("optimizer", "rmsprop"),
        ("threshold", -0.5),
        ("device", "tpu"),
        ("seed", -1),
        ("target_sparsity", 1.0),
        ("target_sparsity", 0.0),
        ("threshold", "target"),
    ],
)
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig(**{field: value}).resolved()  # type: ignore[arg-type]
    assert err.value.param == field


def test_unknown_config_key_refused() -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"depht": 3})
    assert err.value.param == "depht"


def test_defaults_are_filled() -> None:
    cfg = TrainConfig(depth=3).resolved()
    assert cfg.lam is not None and cfg.lr is not None and cfg.lr >= 0.1


def test_empty_training_split_refused() -> None:
    empty = separable_data(0)
    with pytest.raises(TrainingError) as err:
        Trainer(mlp(), empty, VAL, CFG).fit()
    assert err.value.code == "empty_dataset"

"""Distillation from the starting model (dwf_core.distill, ``TrainConfig.distill``)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from dwf_core.collapse import collapse_and_verify
from dwf_core.config import TrainConfig
from dwf_core.distill import DEFAULT_TEMPERATURE, TRAINED_WEIGHTS_ALPHA, Distillation, automatic_alpha, make_teacher
from dwf_core.errors import ConfigError
from dwf_core.factorize import factorize
from dwf_core.pipeline import RunSpec, run
from dwf_core.train import train

from .helpers import mlp, separable_data, trained_mlp, write_band_npz

DATA = separable_data(256)
VAL = separable_data(64, seed=1)


def test_it_is_off_unless_asked_for_or_chosen_by_the_pipeline() -> None:
    """Unset, a library config resolves to off; only the pipeline, which knows where the weights came from, turns it
    on (from given trained weights; the suite's under-trained dense starts lost up to 8 pp with it)."""
    assert TrainConfig().distill is None
    assert TrainConfig(target_sparsity=0.9, init="balanced", dense_epochs=2).resolved().distill == 0.0
    assert TrainConfig(target_sparsity=0.9, init="balanced", distill=0.3).resolved().distill == 0.3
    assert TrainConfig().resolved().distill_temperature == DEFAULT_TEMPERATURE


@pytest.mark.parametrize(
    ("settings", "given", "alpha"),
    [
        ({"init": "balanced"}, True, TRAINED_WEIGHTS_ALPHA),  # given weights judged trained (or asked to keep)
        ({"init": "balanced"}, False, 0.0),  # a zoo model's own init: nothing trained to learn from
        ({"init": "varmatch"}, True, 0.0),  # given weights judged untrained: an architecture
        ({"init": "balanced", "dense_epochs": 2}, True, 0.0),  # a dense phase (may be short): an option only
        ({"init": "balanced", "structure": "units"}, True, 0.0),  # not measured with gates
        ({"init": "balanced", "method": "gmp", "target_sparsity": 0.9}, True, 0.0),  # baselines never distill
    ],
)
def test_the_automatic_choice_is_on_only_from_given_trained_weights(
    settings: dict[str, object], given: bool, alpha: float
) -> None:
    assert automatic_alpha(TrainConfig(**settings), from_given_weights=given) == alpha  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("settings", "param"),
    [
        ({"distill": 1.5}, "distill"),
        ({"distill": -0.1}, "distill"),
        ({"distill": math.nan}, "distill"),
        ({"distill": True}, "distill"),
        ({"method": "gmp", "target_sparsity": 0.9, "distill": 0.5}, "distill"),
        ({"distill_temperature": 0.0}, "distill_temperature"),
        ({"distill_temperature": 1e3}, "distill_temperature"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, object], param: str) -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig(**settings).resolved()  # type: ignore[arg-type]
    assert err.value.param == param


def test_the_soft_term_is_t_squared_times_the_kl_of_the_softened_outputs() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 4), torch.randn(5, 4)
    d = Distillation(alpha=0.5, temperature=2.0)
    p, q = torch.softmax(teacher / 2, dim=1), torch.softmax(student / 2, dim=1)
    expected = 4.0 * float((p * (p.log() - q.log())).sum())
    assert float(d.soft_sum(student, teacher)) == pytest.approx(expected, rel=1e-5)
    assert float(d.soft_sum(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)
    assert float(d.mix(torch.tensor(2.0), torch.tensor(4.0))) == pytest.approx(3.0)


def test_the_teacher_is_a_frozen_plain_copy_with_the_same_outputs() -> None:
    model = trained_mlp(DATA)
    x = VAL.x[:16]
    reference = model(x).detach()
    factorize(model, 3, "balanced")
    teacher = make_teacher(model)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert all(len(list(m.parameters(recurse=False))) <= 2 for m in teacher.modules())  # no factor parameters left
    assert torch.allclose(teacher(x), reference, atol=1e-5)
    assert any(p.requires_grad for p in model.parameters())  # the student is untouched


def test_pure_distillation_keeps_the_starting_function_and_the_labels_move_it() -> None:
    """α = 1 without a penalty: the soft term's gradient is zero where the student equals the teacher, so the model
    stays the trained one it started from; with α = 0 the same run trains on the labels and moves away from it."""
    start = trained_mlp(DATA, steps=30)  # trained a little: the labels still have much to teach
    x = VAL.x
    reference = start(x).detach()
    common = {"epochs": 2, "lam": 0.0, "lr": 0.1, "init": "balanced", "seed": 0, "device": "cpu", "batch_size": 32}
    kept = train(trained_mlp(DATA, steps=30), DATA, VAL, TrainConfig(distill=1.0, **common))  # type: ignore[arg-type]
    moved = train(trained_mlp(DATA, steps=30), DATA, VAL, TrainConfig(distill=0.0, **common))  # type: ignore[arg-type]
    with torch.no_grad():
        assert float((kept.model(x) - reference).abs().max()) < 1e-4
        assert float((moved.model(x) - reference).abs().max()) > 1e-2
    # The history's training loss is the cross-entropy in both runs (comparable with runs without distillation).
    assert kept.history[-1]["train_loss"] > 0.05


def test_a_run_from_a_dense_phase_distills_when_asked_and_says_so(tmp_path: Path) -> None:
    data = str(write_band_npz(tmp_path / "small.npz", 300, 100))
    common = {"seed": 0, "device": "cpu", "batch_size": 64, "epochs": 1, "target_sparsity": 0.9, "dense_epochs": 1}
    distilled = run(
        RunSpec("lenet_300_100", data, tmp_path / "a", train=TrainConfig(distill=0.5, **common), export_onnx=False)  # type: ignore[arg-type]
    )
    assert distilled["config"]["distill"] == 0.5
    assert distilled["distill"] == {
        "alpha": 0.5,
        "temperature": DEFAULT_TEMPERATURE,
        "schedule": "constant",
        "automatic": False,
    }
    off = run(RunSpec("lenet_300_100", data, tmp_path / "b", train=TrainConfig(**common), export_onnx=False))  # type: ignore[arg-type]
    assert off["config"]["distill"] == 0.0 and off["distill"] is None
    # Same dense phase (its training does not distill), another DWF objective.
    assert off["dense_start"]["val_accuracy"] == distilled["dense_start"]["val_accuracy"]
    assert off["history"][-1]["train_loss"] != distilled["history"][-1]["train_loss"]


def test_an_unfactorized_model_gives_an_equal_teacher() -> None:
    model: nn.Module = mlp()
    teacher = make_teacher(model)
    assert torch.equal(teacher(VAL.x), model(VAL.x))


def test_dwf_train_takes_the_options_and_its_summary_names_the_distillation(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from dwf_core.cli import app

    data = write_band_npz(tmp_path / "small.npz", 300, 100)
    argv = ["train", "--model", "lenet_300_100", "--data", str(data), "--epochs", "1", "--dense-epochs", "1",
            "--target-sparsity", "0.9", "--distill", "0.3", "--distill-temperature", "2",
            "--distill-schedule", "linear", "--out", str(tmp_path / "out"), "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, argv, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    distill = json.loads((tmp_path / "out" / "metrics.json").read_text())["distill"]
    assert distill == {"alpha": 0.3, "temperature": 2.0, "schedule": "linear", "automatic": False}
    assert "from the starting model, α 0.3, decaying to 0, T 2" in result.output
    bad = CliRunner().invoke(app, [*argv[:-4], "--distill", "2", "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "distill" in bad.output


class _GRUClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def test_a_factorized_gru_gives_a_teacher_and_still_trains() -> None:
    """A factorized RNN keeps its weights' products, with autograd history, in a list deepcopy refuses: so does a
    GRU that comes out of a dense phase (trained at depth 1, then collapsed), as the pipeline's dense_epochs do."""
    torch.manual_seed(0)
    x = torch.randn(6, 5, 4)
    trained = _GRUClassifier()
    weights = ["gru.weight_ih_l0", "gru.weight_hh_l0", "head.weight"]
    factorize(trained, 1, "balanced", include=weights)
    trained(x).sum().backward()
    model = collapse_and_verify(trained, None, 0.0).model
    reference = model(x).detach()
    factorize(model, 3, "balanced", include=weights)
    model.to("cpu")  # as the trainer does: RNNBase._apply rebuilds the list from the factors, with gradients
    teacher = make_teacher(model)
    assert torch.allclose(teacher(x), reference, atol=1e-5)
    out = model(x)
    out.sum().backward()  # the student's forward still builds its weights from the factors, with gradients
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_the_linear_schedule_hands_over_to_the_labels() -> None:
    constant, linear = Distillation(0.5, 4.0), Distillation(0.5, 4.0, "linear")
    assert [constant.alpha_at(f) for f in (0.0, 0.5, 1.0)] == [0.5, 0.5, 0.5]
    assert [linear.alpha_at(f) for f in (0.0, 0.5, 1.0, 1.5)] == [0.5, 0.25, 0.0, 0.0]
    assert float(linear.mix(torch.tensor(2.0), torch.tensor(4.0), 1.0)) == 2.0  # the hard term alone
    with pytest.raises(ConfigError) as err:
        TrainConfig(distill=0.5, distill_schedule="cosine").resolved()  # type: ignore[arg-type]
    assert err.value.param == "distill_schedule"


def test_a_run_from_given_trained_weights_distills_by_default_and_says_so(tmp_path: Path) -> None:
    data = str(write_band_npz(tmp_path / "small.npz", 300, 100))
    common = {"seed": 0, "device": "cpu", "batch_size": 64, "epochs": 2}
    dense = RunSpec("lenet_300_100", data, tmp_path / "dense", train=TrainConfig(method="dense", **common))  # type: ignore[arg-type]
    run(replace(dense, export_onnx=False))
    weights = str(tmp_path / "dense" / "model.safetensors")
    dwf = TrainConfig(depth=3, target_sparsity=0.9, **common)  # type: ignore[arg-type]
    metrics = run(RunSpec("lenet_300_100", data, tmp_path / "auto", weights=weights, train=dwf, export_onnx=False))
    assert metrics["init_decision"]["init"] == "balanced"
    assert metrics["config"]["distill"] == TRAINED_WEIGHTS_ALPHA
    assert metrics["distill"] == {
        "alpha": TRAINED_WEIGHTS_ALPHA,
        "temperature": DEFAULT_TEMPERATURE,
        "schedule": "constant",
        "automatic": True,
    }
    off = run(
        RunSpec(
            "lenet_300_100", data, tmp_path / "off", weights=weights, train=replace(dwf, distill=0.0), export_onnx=False
        )
    )
    assert off["distill"] is None and off["history"][-1]["train_loss"] != metrics["history"][-1]["train_loss"]

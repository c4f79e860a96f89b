"""TrainConfig.precision (dwf_core.precision): which arithmetic a run trains in, on which device, and that a bf16
run on the CPU really computes its layers in bf16 and says so in its results."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from dwf_core.config import TrainConfig
from dwf_core.errors import ConfigError
from dwf_core.pipeline import RunSpec, prepare
from dwf_core.precision import autocast_dtype, precision_name
from dwf_core.train import train

from .helpers import mlp, separable_data, write_band_npz

CPU = torch.device("cpu")


def test_the_dtype_per_setting_and_device() -> None:
    assert autocast_dtype("auto", CPU) is None  # a CPU trains in float32 unless asked
    assert autocast_dtype("fp32", CPU) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16
    assert autocast_dtype("fp32", torch.device("cuda")) is None  # no CUDA call needed to turn it off
    assert [precision_name(d) for d in (None, torch.bfloat16, torch.float16)] == ["fp32", "bf16", "fp16"]


@pytest.mark.parametrize(("precision", "device"), [("fp16", "cpu"), ("bf16", "mps"), ("bf16", "meta")])
def test_what_cannot_run_is_a_config_error_naming_precision(precision: str, device: str) -> None:
    with pytest.raises(ConfigError) as info:
        autocast_dtype(precision, torch.device(device))
    assert info.value.param == "precision"


def test_the_config_refuses_an_unknown_precision() -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(precision="fp16").validate()  # type: ignore[arg-type]
    assert info.value.param == "precision" and "auto, fp32, bf16" in str(info.value)


def _note_training_dtype(seen: set[torch.dtype], _module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
    if torch.is_grad_enabled():  # training steps, not evaluation
        seen.add(out.dtype)


def test_a_cpu_run_computes_its_layers_in_the_asked_precision() -> None:
    finals = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = mlp()
        seen: set[torch.dtype] = set()
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.register_forward_hook(partial(_note_training_dtype, seen))
        cfg = TrainConfig(depth=3, epochs=6, batch_size=32, lr=0.1, seed=0, device="cpu", precision=precision)  # type: ignore[arg-type]
        result = train(model, separable_data(200), separable_data(64, seed=1), cfg)
        assert seen == {dtype}, precision
        assert result.extra["precision"] == precision
        finals[precision] = result.history[-1]
    # Same data order and init: the bf16 run follows the fp32 one closely, its rounding visible in the loss.
    assert finals["bf16"]["train_loss"] != finals["fp32"]["train_loss"]
    assert abs(finals["bf16"]["val_accuracy"] - finals["fp32"]["val_accuracy"]) <= 0.05
    assert finals["fp32"]["val_accuracy"] > 0.55  # both learn (chance: 0.25)


def test_prepare_refuses_bf16_on_a_device_without_it_before_training(tmp_path: Path) -> None:
    data = write_band_npz(tmp_path / "d.npz", 100, 50)
    spec = RunSpec(
        "lenet_300_100", str(data), tmp_path / "out", train=TrainConfig(epochs=1, device="mps", precision="bf16")
    )
    with pytest.raises(ConfigError) as info:
        prepare(spec)
    assert info.value.param == "precision"
    assert not (tmp_path / "out").exists()

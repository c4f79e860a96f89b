"""dwf_core.augment: the setting's grammar, what each transform does to a batch, and the inputs it refuses."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from dwf_core.augment import Augmentation, BatchAugmenter, check_images, parse_augment, random_shift
from dwf_core.cli import app
from dwf_core.config import TrainConfig
from dwf_core.errors import ConfigError
from dwf_core.train import TrainingCancelled, train

from .helpers import TinySplit


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("shift", Augmentation(shift=2)),
        ("shift:4", Augmentation(shift=4)),
        ("flip", Augmentation(flip=True)),
        (" Shift:1 , flip ", Augmentation(shift=1, flip=True)),
    ],
)
def test_settings_parse(spec: str, expected: Augmentation) -> None:
    assert parse_augment(spec) == expected
    assert parse_augment(expected.describe()) == expected


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("rotate", "unknown transform 'rotate'"),
        ("shift:0", "1..16"),
        ("shift:17", "1..16"),
        ("shift:two", "whole number"),
        ("flip:1", "unknown transform 'flip:1'"),
        ("shift,shift:3", "given twice"),
        ("", "unknown transform ''"),
    ],
)
def test_bad_settings_say_what_is_wrong(spec: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_augment(spec)


def test_a_shift_moves_each_image_by_its_own_offset_and_repeats_the_edge() -> None:
    x = torch.randn(64, 2, 6, 7)
    shifted = random_shift(x, 1, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    offsets = set()
    for i in range(len(x)):
        # Exactly one of the 9 windows of the edge-padded image is the shifted one.
        windows = [(dy, dx) for dy in range(3) for dx in range(3)
                   if torch.equal(padded[i, :, dy : dy + 6, dx : dx + 7], shifted[i])]  # fmt: skip
        assert len(windows) == 1
        offsets.add(windows[0])
    assert len(offsets) == 9  # 64 draws cover every offset


def test_flip_mirrors_about_half_of_the_batch_and_is_reproducible() -> None:
    x = torch.randn(200, 1, 4, 5)
    out = BatchAugmenter(parse_augment("flip"), seed=3)(x)
    mirrored = [torch.equal(out[i], x[i].flip(-1)) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert 70 < sum(mirrored) < 130
    assert torch.equal(out, BatchAugmenter(parse_augment("flip"), seed=3)(x))
    assert not torch.equal(out, BatchAugmenter(parse_augment("flip"), seed=4)(x))


@pytest.mark.parametrize(
    ("x", "says"),
    [
        (torch.randn(8, 784), "N × C × H × W"),
        (torch.randint(0, 100, (8, 1, 4, 4)), "N × C × H × W"),
        (torch.randn(8, 1, 2, 2), "not smaller than the images"),
    ],
    ids=["flat-vectors", "token-ids", "tiny-images"],
)
def test_inputs_that_are_not_images_are_refused(x: torch.Tensor, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        check_images(x, Augmentation(shift=2))


@pytest.mark.parametrize(
    "spec",
    ["shift", "shift:2", "shift:16", "flip", "flip,shift:3", " shift , flip ", "SHIFT", "shift:0", "shift:17",
     "shift:+3", "shift:²", "shift:-1", "shift:", "flip:1", "rotate", "", ",", "shift,shift", "flip,flip"],
)  # fmt: skip
def test_the_api_accepts_exactly_what_dwf_core_accepts(spec: str) -> None:
    from api.schemas import check_augment

    try:
        parse_augment(spec)
        core_ok = True
    except ConfigError:
        core_ok = False
    try:
        check_augment(spec)
        api_ok = True
    except ValueError:
        api_ok = False
    assert api_ok == core_ok


def _images(n: int, seed: int) -> TinySplit:
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=generator)
    x = torch.randn(n, 1, 6, 6, generator=generator) * 0.1
    for i, label in enumerate(y.tolist()):
        x[i, 0, 2 * label : 2 * label + 2] += 1.0  # a band per class
    return TinySplit(x, y)


def _conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))


class _Recorder:
    """Inputs the model saw, split by train/eval mode (a forward pre-hook)."""

    def __init__(self, model: nn.Module) -> None:
        self.train: list[torch.Tensor] = []
        self.eval: list[torch.Tensor] = []
        model.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        (self.train if module.training else self.eval).append(args[0].detach().clone())


TRAIN, VAL = _images(96, 0), _images(40, 1)
CFG = TrainConfig(depth=2, epochs=2, batch_size=32, lr=0.05, lam=1e-4, seed=5, device="cpu", augment="shift:1")


def test_training_batches_are_shifted_and_evaluation_sees_the_data_as_given() -> None:
    model = _conv()
    seen = _Recorder(model)
    train(model, TRAIN, VAL, CFG)
    batches = torch.cat(seen.train)
    assert len(batches) == 2 * len(TRAIN.x)  # the model never saw a training batch in eval mode
    originals = {tuple(row.flatten().tolist()) for row in TRAIN.x}
    unchanged = sum(tuple(row.flatten().tolist()) in originals for row in batches)
    assert unchanged < 0.3 * len(batches)  # offset (0, 0) is 1 in 9 draws
    padded = torch.nn.functional.pad(TRAIN.x, (1, 1, 1, 1), mode="replicate")
    windows = {tuple(padded[i, :, dy : dy + 6, dx : dx + 6].flatten().tolist())
               for i in range(len(TRAIN.x)) for dy in range(3) for dx in range(3)}  # fmt: skip
    assert all(tuple(row.flatten().tolist()) in windows for row in batches)  # each one a shifted training image
    given = originals | {tuple(row.flatten().tolist()) for row in VAL.x}
    assert seen.eval and all(tuple(row.flatten().tolist()) in given for x in seen.eval for row in x)


def test_same_seed_same_run_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    full = train(_conv(), TRAIN, VAL, CFG, checkpoint_dir=tmp_path / "full")
    again = train(_conv(), TRAIN, VAL, CFG)
    calls = {"n": 0}

    def stop_in_epoch_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 3 + 1  # 3 steps per epoch

    with pytest.raises(TrainingCancelled):
        train(_conv(), TRAIN, VAL, CFG, checkpoint_dir=tmp_path / "cut", should_stop=stop_in_epoch_two)
    resumed = train(_conv(), TRAIN, VAL, CFG, checkpoint_dir=tmp_path / "cut")
    assert resumed.resumed_from_epoch == 1
    plain = train(_conv(), TRAIN, VAL, replace(CFG, augment=None))
    for name, weight in full.model.state_dict().items():
        assert torch.equal(weight, again.model.state_dict()[name]), name
        assert torch.equal(weight, resumed.model.state_dict()[name]), name
    assert any(not torch.equal(w, plain.model.state_dict()[n]) for n, w in full.model.state_dict().items())


def test_a_job_on_flat_inputs_fails_before_training_with_the_reason(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "flat.npz"
    np.savez(data, x_train=rng.normal(size=(60, 20)).astype(np.float32), y_train=rng.integers(0, 3, 60),
             x_test=rng.normal(size=(20, 20)).astype(np.float32), y_test=rng.integers(0, 3, 20))  # fmt: skip
    argv = ["train", "--model", "lenet_300_100", "--data", str(data), "--epochs", "1", "--augment", "shift",
            "--out", str(tmp_path / "out"), "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert "needs image inputs" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "metrics.json").exists()

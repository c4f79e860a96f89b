"""target_sparsity: the λ controller, the target-quantile collapse, and the config/CLI refusals."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dwf_core.cli import app
from dwf_core.collapse import collapse_and_verify, target_threshold
from dwf_core.config import TrainConfig
from dwf_core.controller import ControllerSettings, next_lam, scheduled_sparsity, target_met
from dwf_core.defaults import LAM_CR_MAP, lam_for_target
from dwf_core.errors import ConfigError
from dwf_core.factorize import factorize, factorized_tensors
from dwf_core.train import initial_lam, train

from .helpers import mlp, separable_data

DATA = separable_data(256)
VAL = separable_data(64, seed=1)


def _cfg(target: float, epochs: int = 6, **controller: float) -> TrainConfig:
    extra = {"controller": controller} if controller else {}
    return TrainConfig(
        depth=3, epochs=epochs, batch_size=32, lr=0.1, target_sparsity=target, seed=0, device="cpu", extra=extra
    )


def test_next_lam_moves_toward_the_schedule_and_is_bounded() -> None:
    lam0 = 1e-3
    assert next_lam(1e-3, 0.5, 0.9, lam0) > 1e-3  # too dense: more decay
    assert next_lam(1e-3, 0.95, 0.5, lam0) < 1e-3  # too sparse: less decay
    assert next_lam(1e-3, 0.9, 0.9, lam0) == pytest.approx(1e-3)
    # One epoch moves λ by at most max_step either way.
    assert next_lam(1e-3, 0.0, 0.9999, lam0) == pytest.approx(1.25e-3)
    assert next_lam(1e-3, 0.9999, 0.0, lam0) == pytest.approx(1e-3 / 1.25)
    # Overall bounds relative to the depth's default: λ cannot sink to nothing nor explode.
    assert next_lam(lam0 / 2, 0.9999, 0.0, lam0) == pytest.approx(lam0 / 2)
    assert next_lam(lam0 * 20, 0.0, 0.9999, lam0) == pytest.approx(lam0 * 20)
    assert next_lam(0.9, 0.0, 0.9999, 0.5) == 1.0  # λ ≤ 1 whatever the ceiling
    tight = ControllerSettings(max_step=2.0, floor=2.0)
    assert next_lam(1e-3, 0.0, 0.9999, lam0, tight) == pytest.approx(2e-3)
    assert next_lam(6e-4, 0.9999, 0.0, lam0, tight) == pytest.approx(5e-4)


def test_controller_settings_from_extra() -> None:
    assert ControllerSettings.from_extra({}) == ControllerSettings()
    assert ControllerSettings.from_extra({"controller": {"ramp": 0.5}}).ramp == 0.5
    with pytest.raises(ConfigError) as err:
        ControllerSettings.from_extra({"controller": {"rampp": 0.5}})
    assert "rampp" in err.value.message
    with pytest.raises(ConfigError):
        ControllerSettings.from_extra({"controller": {"max_step": 1.0}})


def test_schedule_reaches_the_target_at_three_quarters() -> None:
    values = [scheduled_sparsity(0.99, e, 20) for e in range(21)]
    assert values[0] == 0.0 and values == sorted(values)
    assert values[15] == pytest.approx(0.99) and values[20] == pytest.approx(0.99)
    # log-density falls linearly: half way through the ramp the CR is 10, not 50.
    assert 1 / (1 - scheduled_sparsity(0.99, 15, 40)) == pytest.approx(10.0)


def _mostly_tiny() -> torch.nn.Module:
    """A factorized MLP whose weights are 95% negligible already (first factor scaled by 1e-4 there)."""
    model = mlp()
    factorize(model, 3, "varmatch", seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in factorized_tensors(model):
            first = tensor.factors()[0]
            first.mul_(torch.where(torch.rand(first.shape, generator=g) < 0.95, 1e-4, 1.0))
    return model


@pytest.mark.parametrize(("target", "up"), [(0.99, True), (0.5, False)])
def test_controller_moves_lam_in_the_right_direction(target: float, up: bool) -> None:
    # Dense at the start with a high target: λ must grow; already sparser than a low target: λ must shrink.
    model = mlp() if up else _mostly_tiny()
    cfg = _cfg(target, epochs=2, hold=0.25)
    history = train(model, DATA, VAL, cfg).history
    lam0 = lam_for_target(3, target, total_steps=2 * 8)  # 256 examples, batch 32
    assert history[0]["lam"] == lam0
    assert (history[0]["next_lam"] > lam0) is up and (history[1]["lam"] > lam0) is up
    assert {"controller_sparsity", "scheduled_sparsity"} <= set(history[0])


@pytest.mark.parametrize("target", [0.5, 0.9, 0.99])
def test_collapse_reaches_the_target(target: float) -> None:
    result = train(mlp(), DATA, VAL, _cfg(target))
    collapsed = collapse_and_verify(result.model, VAL, "target", target_sparsity=target)
    report = collapsed.report
    if target <= 0.95:
        assert abs(report.sparsity - target) <= 0.01
    else:
        assert abs(report.compression_ratio / (1 / (1 - target)) - 1) <= 0.2
    assert report.sparsity >= target
    assert collapsed.collapsed_accuracy is not None


def test_target_threshold_is_the_smallest_reaching_the_target() -> None:
    weights = [torch.tensor([0.1, -0.2, 0.3, 0.4]), torch.tensor([[0.5, -0.6], [0.7, 0.8]])]
    t = target_threshold(weights, 0.5)  # 4 of 8 must go: 0.1..0.4
    assert 0.4 < t < 0.5 and t == float(torch.nextafter(torch.tensor(0.4), torch.tensor(1.0)))
    assert target_threshold(weights, 0.01) > 0.1 and target_threshold([torch.tensor([1.0])], 0.5) > 1.0


def test_resolved_config_with_a_target() -> None:
    cfg = _cfg(0.9).resolved()
    assert cfg.lam is None and cfg.threshold == "target" and cfg.resolved() == cfg
    assert TrainConfig(target_sparsity=0.9, threshold=1e-3).resolved().threshold == 1e-3
    assert TrainConfig().resolved().threshold == "auto"


@pytest.mark.parametrize(
    ("target", "depth", "expected"),
    [(None, None, 3), (0.9, None, 3), (0.99, None, 3), (0.995, None, 4), (0.998, None, 4), (0.998, 2, 2), (None, 5, 5)],
)
def test_depth_follows_the_target_unless_given(target: float | None, depth: int | None, expected: int) -> None:
    cfg = TrainConfig(target_sparsity=target, depth=depth).resolved()
    assert cfg.depth == expected and cfg.resolved() == cfg
    # λ of a targeted run comes from the map of the depth actually used.
    if target is not None:
        assert initial_lam(cfg, 1000) == lam_for_target(expected, target, 1000)
    # Baselines are depth 1 whatever the target.
    assert TrainConfig(method="gmp", target_sparsity=0.998).resolved().depth == 1


@pytest.mark.parametrize(
    ("target", "achieved", "met"),
    [
        (0.9, 0.9, True),
        (0.9, 0.905, True),
        (0.9, 0.915, False),  # more than 1 pp off
        (0.95, 0.939, False),
        (0.99, 0.99, True),
        (0.99, 0.9915, True),  # CR 117.6 vs 100: within 20%
        (0.99, 0.9925, False),  # CR 133
        (0.998, 0.99902, False),  # CR 1,020 for 500: training pruned past the target (LeNet-5, D = 2)
        (0.998, 1.0, False),
    ],
)
def test_target_met_is_the_promised_band(target: float, achieved: float, met: bool) -> None:
    assert target_met(target, achieved) is met


def test_lam_and_target_are_exclusive() -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig(lam=1e-4, target_sparsity=0.9).resolved()
    assert err.value.param == "target_sparsity" and "lam" in err.value.message


def test_collapse_target_needs_a_target() -> None:
    result = train(mlp(), DATA, VAL, TrainConfig(depth=3, epochs=1, lam=1e-3, device="cpu"))
    with pytest.raises(ConfigError) as err:
        collapse_and_verify(result.model, VAL, "target")
    assert err.value.param == "target_sparsity"
    with pytest.raises(ConfigError):
        collapse_and_verify(result.model, VAL, "target", target_sparsity=math.nan)


def test_cli_refuses_lam_with_target(tmp_path: Path) -> None:
    argv = ["train", "--model", "lenet_300_100", "--data", "/nonexistent.npz", "--out", str(tmp_path),
            "--lam", "1e-4", "--target-sparsity", "0.9"]  # fmt: skip
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2 and "Traceback" not in result.output
    text = " ".join(result.output.split())  # rich wraps at the terminal width
    assert "(target_sparsity)" in text and "--lam or --target-sparsity, not both" in text
    assert not (tmp_path / "metrics.json").exists()


def test_lam_for_target_follows_the_measured_map() -> None:
    for depth, points in LAM_CR_MAP.items():
        for lam, cr in points:
            assert lam_for_target(depth, 1 - 1 / cr) == pytest.approx(lam, rel=1e-9)
        lams = [lam_for_target(depth, 1 - 1 / cr) for cr in (5, 10, 50, 100, 300, 1000)]
        assert lams == sorted(lams) and all(math.isfinite(v) and v > 0 for v in lams)
    # Depths outside the map borrow the nearest measured one.
    assert lam_for_target(6, 0.99) == lam_for_target(4, 0.99)


def test_lam_is_held_then_bounded() -> None:
    cfg = _cfg(0.999, epochs=4, hold=0.25)
    history = train(mlp(), DATA, VAL, cfg).history
    lam0 = lam_for_target(3, 0.999, total_steps=4 * 8)
    # Held for the first quarter of the epochs, then moved by at most ×1.25 per epoch, never above 20·λ₀.
    assert history[0]["next_lam"] == lam0
    for before, after in itertools.pairwise(history):
        assert after["lam"] <= before["lam"] * 1.25 * (1 + 1e-12)
    assert all(lam0 / 2 <= h["next_lam"] <= 20 * lam0 for h in history)


def test_default_target_run_keeps_the_maps_lam_scaled_to_its_steps() -> None:
    history = train(mlp(), DATA, VAL, _cfg(0.95, epochs=3)).history
    lam0 = lam_for_target(3, 0.95, total_steps=3 * 8)
    assert {h["lam"] for h in history} == {lam0} and {h["next_lam"] for h in history} == {lam0}
    # Fewer steps than the map's 40 × 422: a proportionally larger λ, bounded at 16×.
    assert lam0 == pytest.approx(16 * lam_for_target(3, 0.95))
    assert lam_for_target(3, 0.95, total_steps=20 * 422) == pytest.approx(2 * lam_for_target(3, 0.95))

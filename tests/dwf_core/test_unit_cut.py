"""The gradual unit cut of structured DWF: masks whole units on the cubic MAC schedule, holds their gates at zero."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dwf_core.factorize import factorize
from dwf_core.masking import pruning_due
from dwf_core.structured import attach_gates, count_macs
from dwf_core.structured.cut import plain_copy
from dwf_core.structured.gates import GATES_ATTR
from dwf_core.structured.macs import probe_input
from dwf_core.structured.unit_cut import END, START, GradualUnitCut


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))


def _kept_macs(model: nn.Module, x: torch.Tensor) -> float:
    plain, _layers = plain_copy(model)
    return count_macs(plain, probe_input(x)).fraction


@pytest.mark.parametrize("factorized", [False, True])
def test_units_are_masked_on_the_schedule_down_to_the_budget(factorized: bool) -> None:
    model, x = _mlp(), torch.randn(8, 20)
    if factorized:  # structure "both": the gates sit on factorized layers
        factorize(model, 3, "varmatch", seed=0)
    attach_gates(model, 3, x[:2])
    steps = 200
    cut = GradualUnitCut(model, 0.25, steps, x[:2])
    start, end, _ = cut.window
    assert (start, end) == (int(START * steps), int(END * steps))
    previous: dict[str, torch.Tensor] = {}
    fractions = []
    for step in range(1, steps + 1):
        cut.after_step(step)
        for name, mask in previous.items():
            assert bool((cut.masks[name] | ~mask).all())  # a removed unit stays removed
        previous = {name: mask.clone() for name, mask in cut.masks.items()}
        if step == start:
            assert not cut.masks and _kept_macs(model, x) == 1.0
        if pruning_due(step, cut.window):  # every event holds the model to its scheduled MACs
            fractions.append(_kept_macs(model, x))
            assert fractions[-1] <= cut.scheduled(step) + 1e-9
    assert fractions == sorted(fractions, reverse=True) and fractions[0] < 1.0 and fractions[-1] <= 0.25
    assert fractions[-1] > 0.15  # the fewest units that fit, not all of them
    assert cut.events > 10 and cut.describe()["units_removed"] == cut.units_removed() > 0
    for name, mask in cut.masks.items():
        gates = getattr(model.get_submodule(name), GATES_ATTR)
        assert bool((gates[:, mask] == 0).all()) and bool((gates[:, ~mask] != 0).all())
    # The output layer is never gated, so never cut.
    assert "4" not in cut.masks


def test_masks_survive_a_checkpoint_and_a_restart_clears_them() -> None:
    model, x = _mlp(), torch.randn(8, 20)
    attach_gates(model, 2, x[:2])
    cut = GradualUnitCut(model, 0.3, 100, x[:2])
    for step in range(1, 61):
        cut.after_step(step)
    saved, events = cut.state_tensors(), cut.events
    other = GradualUnitCut(model, 0.3, 100, x[:2])
    other.load({**saved, "cut/0.weight": torch.ones(3)}, events)
    assert other.events == events and set(other.masks) == set(cut.masks)
    assert all(torch.equal(other.masks[n], cut.masks[n]) for n in cut.masks)
    cut.reset()
    assert cut.masks == {} and cut.events == 0 and cut.describe()["mac_fraction"] == 1.0


def test_config_and_trainer_take_the_unit_cut() -> None:
    from dataclasses import replace

    from dwf_core.config import TrainConfig
    from dwf_core.errors import ConfigError
    from dwf_core.train import Trainer

    from .helpers import separable_data

    cfg = TrainConfig(structure="units", target_macs=0.3, unit_cut="gradual", epochs=6, lam=2e-3, batch_size=64,
                      device="cpu").resolved()  # fmt: skip
    data, val = separable_data(512), separable_data(256, seed=1)
    result = Trainer(_mlp(), data, val, cfg).fit()
    info = result.extra["unit_cut"]
    assert info["events"] > 0 and info["units_removed"] > 0 and info["mac_fraction"] <= 0.3
    assert _kept_macs(result.model, data.x[:2]) <= 0.3  # the trained model already fits the budget
    # With a unit multiple every event rounds the layers too, so the trained model keeps multiples of it.
    rounded = Trainer(_mlp(), data, val, replace(cfg, unit_multiple=8)).fit()
    assert rounded.extra["unit_cut"]["unit_multiple"] == 8
    plain, layers = plain_copy(rounded.model)
    for name in layers:
        kept = int(plain.get_submodule(name).weight.ne(0).any(dim=1).sum())
        assert kept % 8 == 0 or kept < 8, (name, kept)
    # "both" with a target sparsity may mask its weights gradually too; a unit cut without a MAC budget is refused.
    assert replace(cfg, structure="both", target_macs=0.3, target_sparsity=0.9, lam=None, cut="gradual").resolved()
    for bad in (replace(cfg, target_macs=None), replace(cfg, unit_cut="sometimes")):  # type: ignore[arg-type]
        with pytest.raises(ConfigError) as err:
            bad.resolved()
        assert err.value.param == "unit_cut"


def test_a_unit_multiple_rounds_once_the_schedule_reaches_the_budget() -> None:
    """Rounding at every event compounded (each event that cut a layer took a whole block); only the events at the
    budget round, so the layers end in multiples and the steps before them do not."""
    model, x = _mlp(), torch.randn(8, 20)
    attach_gates(model, 3, x[:2])
    steps = 200
    cut = GradualUnitCut(model, 0.25, steps, x[:2], multiple=8)
    _start, end, _ = cut.window
    uneven_before_end = False
    for step in range(1, steps + 1):
        cut.after_step(step)
        if pruning_due(step, cut.window):
            plain, layers = plain_copy(model)
            kept = [int(plain.get_submodule(n).weight.ne(0).any(dim=1).sum()) for n in layers]
            if step < end:
                uneven_before_end |= any(k % 8 and k > 8 for k in kept)
            else:
                assert all(k % 8 == 0 or k < 8 for k in kept), kept
                assert count_macs(plain, probe_input(x)).fraction <= 0.25
    assert uneven_before_end

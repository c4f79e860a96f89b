"""Structured DWF (D-Gating): gates, their penalty, exact collapse, MAC counting and the MAC-budget cut."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dwf_core.config import TrainConfig
from dwf_core.errors import ConfigError
from dwf_core.evaluate import accuracy_of, predict_logits
from dwf_core.intake.zoo import LeNet5
from dwf_core.penalty import factor_weight_decay, param_groups
from dwf_core.structured import attach_gates, count_macs, fold_gates, gated_modules
from dwf_core.structured.cut import UnitCutter, plain_copy
from dwf_core.structured.gates import GATES_ATTR, gate_depth
from dwf_core.structured.macs import probe_input
from dwf_core.structured.run import collapse_structured
from dwf_core.train import Trainer

from .helpers import ResidualNorm, separable_data


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))


class ConvBN(nn.Module):
    """conv → BatchNorm → ReLU twice, then pool and a linear head: the convs' units are gated after their norms."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """features → global average → head."""
        out: torch.Tensor = self.head(self.features(x).mean(dim=(2, 3)))
        return out


def _random_gates(model: nn.Module, seed: int = 1) -> None:
    """Gates away from 1, some exactly 0, so folding has something to prove."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, module in gated_modules(model):
            gates = getattr(module, GATES_ATTR)
            gates.copy_(torch.rand(gates.shape, generator=g) * 2 - 0.5)
            gates[0, ::3] = 0.0


def test_gates_start_at_one_keep_the_function_and_skip_the_output_layer() -> None:
    model = _mlp()
    x = torch.randn(5, 20)
    before = model(x)
    names = attach_gates(model, 3, x[:2])
    assert names == ["0", "2"]  # "4" produces the logits
    for _name, module in gated_modules(model):
        gates = getattr(module, GATES_ATTR)
        assert gates.shape == (2, module.out_features) and bool((gates == 1).all())
        assert gate_depth(module) == 3
    torch.testing.assert_close(model(x), before)
    with pytest.raises(ConfigError, match="depth"):
        attach_gates(_mlp(), 1, x[:2])


def test_gates_and_gated_units_take_the_factor_decay() -> None:
    model = _mlp()
    attach_gates(model, 3, torch.randn(2, 20))
    groups = param_groups(model, 1e-3)
    factor_ids = {id(p) for g in groups if g["dwf"] == "factors" for p in g["params"]}
    decays = {g["weight_decay"] for g in groups if g["dwf"] == "factors"}
    assert decays == {factor_weight_decay(1e-3, 3)}
    for _name, module in gated_modules(model):
        for param in (getattr(module, GATES_ATTR), module.weight, module.bias):
            assert id(param) in factor_ids
    head = model.get_submodule("4")
    assert id(head.weight) not in factor_ids  # the output layer is not a group: it keeps the "other" decay


def test_training_moves_and_shrinks_the_gates() -> None:
    data, val = separable_data(256), separable_data(128, seed=1)
    cfg = TrainConfig(structure="units", epochs=4, lam=5e-3, batch_size=64, device="cpu", seed=0)
    model = _mlp()
    result = Trainer(model, data, val, cfg).fit()
    gates = [getattr(m, GATES_ATTR).detach() for _n, m in gated_modules(result.model)]
    assert gates and all(g.grad is None for g in gates)
    assert all(not torch.allclose(g, torch.ones_like(g)) for g in gates)
    # The L2 decay pulls the gates down on average (the penalty acts on them).
    assert float(torch.cat([g.flatten() for g in gates]).abs().mean()) < 1.0


@pytest.mark.parametrize("make", [_mlp, lambda: ResidualNorm(), lambda: LeNet5()])
def test_folded_model_computes_what_the_gated_one_did(make: object) -> None:
    model = make()  # type: ignore[operator]
    x = torch.randn(6, 20) if isinstance(model, nn.Sequential) else torch.randn(6, 1, 28, 28)
    attach_gates(model, 3, x[:2])
    _random_gates(model)
    gated = model(x)
    plain, layers = plain_copy(model)
    assert layers and not any(hasattr(m, GATES_ATTR) for m in plain.modules())
    assert not any(m._forward_hooks for m in plain.modules())
    torch.testing.assert_close(plain(x), gated, rtol=1e-5, atol=1e-5)
    # A unit with a zero gate product has an exactly zero row and bias.
    for name in layers:
        module = plain.get_submodule(name)
        assert bool((module.weight[::3] == 0).all()) and bool((module.bias[::3] == 0).all())
    assert set(model.state_dict()) - {f"{n}.{GATES_ATTR}" for n in layers} == set(plain.state_dict())


def test_fold_gates_refuses_a_factorized_weight() -> None:
    from dwf_core.factorize import factorize

    model = _mlp()
    factorize(model, 2)
    attach_gates(model, 2, torch.randn(2, 20))
    with pytest.raises(ConfigError, match="factorized"):
        fold_gates(model)


def test_lenet5_macs_dense_and_after_removing_units() -> None:
    model = LeNet5()
    probe = probe_input(torch.zeros(2, 1, 28, 28))
    dense = count_macs(model, probe)
    # conv1 24·24·20·25, conv2 8·8·50·(20·25), fc1 800·500, fc2 500·10
    assert [layer.dense for layer in dense.layers] == [288_000, 1_600_000, 400_000, 5_000]
    assert dense.kept == dense.dense and dense.fraction == 1.0
    with torch.no_grad():
        for conv, k in ((model.conv1, 5), (model.conv2, 10)):
            conv.weight[k:] = 0.0
            conv.bias[k:] = 0.0
        model.fc1.weight[100:] = 0.0
        model.fc1.bias[100:] = 0.0
    kept = count_macs(model, probe)
    # conv2 keeps 10 filters over 5 input channels; fc1 100 units over the 10·16 columns the flatten keeps.
    assert [layer.kept for layer in kept.layers] == [576 * 25 * 5, 64 * 25 * 5 * 10, 100 * 160, 10 * 100]
    assert [(layer.units, layer.inputs) for layer in kept.layers] == [(5, 1), (10, 5), (100, 160), (10, 100)]


def test_depthwise_conv_counts_per_group() -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=4), nn.Conv2d(8, 2, 1))
    probe = probe_input(torch.zeros(1, 4, 6, 6))
    assert [layer.dense for layer in count_macs(model, probe).layers] == [36 * 8 * 9, 36 * 2 * 8]
    with torch.no_grad():
        model[0].weight[0:2] = 0.0  # both outputs of group 0
        model[0].bias[0:2] = 0.0
    layers = count_macs(model, probe).layers
    assert (layers[0].kept, layers[0].units) == (36 * 6 * 9, 6)
    assert (layers[1].kept, layers[1].inputs) == (36 * 2 * 6, 6)


def test_unit_cut_meets_the_budget_with_exact_zeros() -> None:
    model = _mlp()
    x = torch.randn(4, 20)
    attach_gates(model, 3, x[:2])
    _random_gates(model, seed=3)
    plain, layers = plain_copy(model)
    cutter = UnitCutter(plain, layers, probe_input(x))
    natural = cutter.cut(0)
    assert natural.fraction < 1.0  # the zero-gate units are gone already
    report = cutter.cut_to(0.2)
    assert report.fraction <= 0.2
    # One unit fewer would not have met it: the cut is the smallest that does.
    assert cutter.cut(cutter.removed - 1).fraction > 0.2
    report = cutter.cut_to(0.2)
    for name in layers:
        module = plain.get_submodule(name)
        dead = (module.weight == 0).all(dim=1)
        assert bool((module.bias[dead] == 0).all())
        assert int((~dead).sum()) >= 1


def _live_units(model: nn.Module, name: str) -> int:
    return int(model.get_submodule(name).weight.ne(0).any(dim=1).sum())


@pytest.mark.parametrize("budget", [0.5, 0.2, 0.05])
def test_a_unit_multiple_rounds_each_layer_down_within_the_budget(budget: float) -> None:
    model = _mlp()
    x = torch.randn(4, 20)
    attach_gates(model, 3, x[:2])
    _random_gates(model, seed=3)
    plain, layers = plain_copy(model)
    free = UnitCutter(plain, dict(layers), probe_input(x))
    free_report = free.cut_to(budget)
    free_removed = {(u.layer, u.index) for u in free.removed_units()}
    plain8, layers8 = plain_copy(model)
    cutter = UnitCutter(plain8, layers8, probe_input(x), multiple=8)
    report = cutter.cut_to(budget)
    assert report.fraction <= budget and report.fraction <= free_report.fraction
    for name in layers8:
        kept = _live_units(plain8, name)
        assert kept % 8 == 0 or kept < 8, (name, kept)
    # Rounding only adds removals (each layer's next-smallest units), and it says which.
    removed = {(u.layer, u.index) for u in cutter.removed_units()}
    assert free_removed <= removed and len(removed) == cutter.units_removed()
    assert {(u.layer, u.index) for u in cutter.rounding} == removed - {
        (u.layer, u.index) for u in cutter.natural + cutter.order[: cutter.removed]
    }
    # Without a budget nothing is rounded: the natural cut is the same either way.
    assert cutter.cut_to(None).fraction == free.cut_to(None).fraction and not cutter.rounding


def test_structured_dwf_reaches_its_mac_target_above_chance() -> None:
    data, val = separable_data(1024), separable_data(512, seed=1)
    cfg = TrainConfig(
        structure="units", target_macs=0.3, epochs=15, lam=2e-3, batch_size=64, device="cpu", mac_frontier=[0.5, 0.1]
    ).resolved()
    result = Trainer(_mlp(), data, val, cfg).fit()
    # λ followed the live units' MACs toward the schedule, which reaches the target at half the epochs.
    assert all("mac_fraction" in h and "scheduled_macs" in h for h in result.history)
    assert result.history[-1]["scheduled_macs"] == pytest.approx(0.3)
    assert len({h["lam"] for h in result.history}) > 1
    collapsed, info = collapse_structured(result.model, val, val, cfg, example=data.x[:2])
    assert info["mac_fraction"] <= 0.3 and info["target_met"]
    assert info["mac_fraction"] >= 0.2  # the fewest units that fit, not far below
    assert collapsed.collapsed_accuracy is not None and collapsed.collapsed_accuracy > 0.6  # chance: 0.25
    assert accuracy_of(predict_logits(collapsed.model, val.x), val.y) == collapsed.collapsed_accuracy
    assert info["fold_max_abs_logit_diff_val"] < 1e-4
    assert [p["budget"] for p in info["mac_frontier"]] == [0.5, 0.1]
    assert all(p["mac_fraction"] <= p["budget"] for p in info["mac_frontier"])
    assert sum(layer["units"] for layer in info["layers"][:2]) < 128


def test_structure_both_factorizes_and_gates() -> None:
    data, val = separable_data(256), separable_data(128, seed=1)
    cfg = TrainConfig(structure="both", target_macs=0.5, epochs=2, lam=1e-3, batch_size=64, device="cpu").resolved()
    result = Trainer(_mlp(), data, val, cfg).fit()
    from dwf_core.factorize import factorized_tensors

    assert factorized_tensors(result.model) and gated_modules(result.model)
    collapsed, info = collapse_structured(result.model, val, None, cfg, example=data.x[:2])
    assert info["mac_fraction"] <= 0.5 and info["weight_cut"] is not None
    reference = copy.deepcopy(collapsed.model)
    assert reference(val.x).shape == (128, 4)


@pytest.mark.parametrize(
    ("settings", "param"),
    [
        ({"structure": "channels"}, "structure"),
        ({"target_macs": 0.1}, "target_macs"),
        ({"structure": "units", "target_macs": 0.0}, "target_macs"),
        ({"structure": "units", "target_macs": 1.5}, "target_macs"),
        ({"structure": "units", "target_sparsity": 0.9}, "target_sparsity"),
        ({"structure": "units", "depth": 1}, "depth"),
        ({"structure": "units", "frontier": [10.0]}, "frontier"),
        ({"structure": "units", "mac_frontier": [0.5, 1.0]}, "mac_frontier"),
        ({"mac_frontier": [0.5]}, "mac_frontier"),
        ({"structure": "units", "method": "gmp", "target_sparsity": 0.9}, "structure"),
        ({"structure": "units", "unit_multiple": 16}, "unit_multiple"),  # nothing to round without a budget
        ({"structure": "units", "target_macs": 0.5, "unit_multiple": 0}, "unit_multiple"),
        ({"structure": "units", "target_macs": 0.5, "unit_multiple": True}, "unit_multiple"),
        ({"structure": "units", "target_macs": 0.5, "unit_multiple": 4096}, "unit_multiple"),
    ],
)
def test_bad_structured_settings_name_the_field(settings: dict[str, object], param: str) -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig(**settings).resolved()  # type: ignore[arg-type]
    assert err.value.param == param


def test_structured_units_default_lam_is_the_group_one() -> None:
    from dwf_core.defaults import default_lam
    from dwf_core.structured.settings import structured_lam

    assert TrainConfig(structure="units").resolved().lam == structured_lam(3)
    assert TrainConfig(structure="both").resolved().lam == default_lam(3)


def test_mac_schedule_and_lam_steps() -> None:
    from dwf_core.structured.control import STEP, next_lam, scheduled_macs

    assert scheduled_macs(0.1, 0, 20) == 1.0
    assert scheduled_macs(0.1, 10, 20) == pytest.approx(0.1) and scheduled_macs(0.1, 20, 20) == pytest.approx(0.1)
    assert 0.1 < scheduled_macs(0.1, 5, 20) < 0.55  # cubic: most of the cut early
    assert next_lam(1e-3, 0.5, 0.4, 1e-3) == pytest.approx(1e-3 * STEP)  # too many MACs: stronger penalty
    assert next_lam(1e-3, 0.2, 0.4, 1e-3) == pytest.approx(1e-3 / STEP)  # far below the goal: weaker
    assert next_lam(1e-3, 0.39, 0.4, 1e-3) == 1e-3  # within the band: unchanged
    assert next_lam(1.0, 0.9, 0.1, 1e-3) == pytest.approx(0.1)  # clamped to λ₀·100


def test_batchnorm_units_are_gated_after_the_norm_and_removed_with_the_conv_row() -> None:
    model = ConvBN()
    x = torch.randn(6, 1, 8, 8)
    model.train()
    model(x)  # running statistics that are not the identity
    model.eval()
    before = model(x)
    assert attach_gates(model, 3, x[:2]) == ["features.1", "features.4"]  # the norms, not the convs
    torch.testing.assert_close(model(x), before)
    _random_gates(model)
    gated = model(x)
    plain, layers = plain_copy(model)
    assert layers == {"features.1": "features.0", "features.4": "features.3"}
    torch.testing.assert_close(plain.eval()(x), gated, rtol=1e-5, atol=1e-5)
    cutter = UnitCutter(plain, layers, probe_input(x))
    report = cutter.cut(0)  # the zero-gate units: γ = β = 0 and the feeding conv's row zeroed
    conv, norm = plain.get_submodule("features.0"), plain.get_submodule("features.1")
    assert bool((conv.weight[::3] == 0).all()) and bool((norm.weight[::3] == 0).all())
    assert bool((norm.bias[::3] == 0).all()) and bool((conv.bias[::3] == 0).all())
    assert [layer.units for layer in report.layers[:2]] == [5, 5]
    torch.testing.assert_close(plain(x), gated, rtol=1e-5, atol=1e-5)  # they output 0 already


def test_structured_training_on_a_batchnorm_model() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, :4].mean(dim=(1, 2)) > 0).long()
    from .helpers import TinySplit

    data = TinySplit(x, y)
    cfg = TrainConfig(structure="units", target_macs=0.5, epochs=3, batch_size=64, device="cpu").resolved()
    result = Trainer(ConvBN(), data, data, cfg).fit()
    collapsed, info = collapse_structured(result.model, data, None, cfg, example=x[:2])
    assert info["gated_norms"] == {"features.1": "features.0", "features.4": "features.3"}
    assert info["mac_fraction"] <= 0.5
    for norm_name, conv_name in info["gated_norms"].items():
        norm, conv = collapsed.model.get_submodule(norm_name), collapsed.model.get_submodule(conv_name)
        dead = norm.weight == 0
        assert bool((norm.bias[dead] == 0).all()) and bool((conv.weight[dead] == 0).all())

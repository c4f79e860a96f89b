"""The factor penalty, its Lq equivalent and the optimizer groups that realise it."""

from __future__ import annotations

import pytest
import torch

from dwf_core.errors import ConfigError
from dwf_core.factorize import factorize, factorized_tensors
from dwf_core.penalty import factor_penalty, lq_penalty, misalignment, param_groups

from .helpers import mlp


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_penalties_agree_at_balance(depth: int) -> None:
    model = factorize(mlp(), depth, init="balanced")
    lam = 3e-3
    assert float(factor_penalty(model, lam)) == pytest.approx(float(lq_penalty(model, lam)), rel=1e-6)
    assert misalignment(model) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("depth", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_factor_penalty_never_smaller(depth: int, seed: int) -> None:
    model = factorize(mlp(), depth, seed=seed)
    assert float(factor_penalty(model, 1e-3)) >= float(lq_penalty(model, 1e-3))
    assert 0.0 < misalignment(model) <= 1.0


def test_lq_penalty_values() -> None:
    model = factorize(mlp(), 2, init="balanced")
    expected = sum(float(t.weight().detach().abs().sum()) for t in factorized_tensors(model))
    assert float(lq_penalty(model, 1.0)) == pytest.approx(expected, rel=1e-6)  # D = 2 is L1


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_param_groups_decay_and_cover_everything(depth: int) -> None:
    model = factorize(mlp(), depth)
    groups = param_groups(model, 1e-3, other_weight_decay=5e-4)
    factors = [g for g in groups if g["dwf"] == "factors"]
    assert len(factors) == 1 and factors[0]["weight_decay"] == pytest.approx(2e-3 / depth)
    others = [g for g in groups if g["dwf"] == "other"]
    assert others[0]["weight_decay"] == 5e-4
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


@pytest.mark.parametrize("depth", [2, 3])
def test_weight_decay_gradient_equals_penalty_gradient(depth: int) -> None:
    """An SGD step with decay 2λ/D on the factors equals a step on the explicit (λ/D)·Σ‖ω‖² penalty."""
    lam, lr = 1e-2, 0.1
    a = factorize(mlp(), depth, seed=3)
    b = factorize(mlp(), depth, seed=3)
    x = torch.randn(8, 20)
    opt_a = torch.optim.SGD(param_groups(a, lam), lr=lr)
    a(x).sum().backward()
    opt_a.step()
    opt_b = torch.optim.SGD(b.parameters(), lr=lr)
    explicit = sum(lam / depth * f.pow(2).sum() for t in factorized_tensors(b) for f in t.factors())
    (b(x).sum() + explicit).backward()
    opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)


@pytest.mark.parametrize("lam", [-1.0, float("nan"), float("inf")])
def test_bad_lambda_refused(lam: float) -> None:
    with pytest.raises(ConfigError) as err:
        param_groups(factorize(mlp(), 2), lam)
    assert err.value.param == "lam"

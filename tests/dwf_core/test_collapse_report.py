"""collapse(): plain module, original keys, exact zeros, verified threshold; sparsity_report counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from dwf_core.collapse import collapse, collapse_and_verify, threshold_grid
from dwf_core.errors import ConfigError
from dwf_core.factorize import factorize, factorized_tensors
from dwf_core.report import sparsity_report

from .helpers import ResidualNorm, mlp, separable_data, trained_mlp


def _shrink_half(model: nn.Module) -> None:
    """Make every other weight tiny (1e-6 after collapse) by scaling one factor."""
    with torch.no_grad():
        for t in factorized_tensors(model):
            f0 = t.factors()[0]
            mask = torch.zeros_like(f0, dtype=torch.bool).flatten()
            mask[::2] = True
            f0.view(-1)[mask] *= 1e-6


@pytest.mark.parametrize("make", [mlp, ResidualNorm])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_collapse_restores_classes_and_keys(make: type[nn.Module], depth: int) -> None:
    original = make()
    keys = list(original.state_dict())
    classes = [type(m) for m in original.modules()]
    model = factorize(make(), depth)
    plain = collapse(model, threshold=0.0)
    assert list(plain.state_dict()) == keys
    assert [type(m) for m in plain.modules()] == classes
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    # The factorized model is untouched and still works.
    assert factorized_tensors(model)
    x = torch.randn(2, 1, 8, 8) if make is ResidualNorm else torch.randn(2, 20)
    torch.testing.assert_close(plain(x), model(x), rtol=0, atol=0)


def test_collapsed_loads_into_original_architecture() -> None:
    plain = collapse(factorize(mlp(), 3), threshold=1e-2)
    fresh = mlp(seed=5)
    fresh.load_state_dict(plain.state_dict(), strict=True)
    assert torch.equal(fresh[1].weight, plain[1].weight)


def test_threshold_gives_exact_positive_zeros() -> None:
    model = factorize(mlp(), 3)
    _shrink_half(model)
    plain = collapse(model, threshold=1e-4)
    for name in ("1.weight", "3.weight"):
        w = plain.get_parameter(name)
        zeros = w[w == 0]
        assert zeros.numel() >= w.numel() // 2
        assert torch.all(torch.signbit(zeros) == 0), "zeros must be +0.0"
    report = sparsity_report(plain)
    assert report.sparsity == pytest.approx(0.5, abs=0.01)
    assert report.compression_ratio == pytest.approx(2.0, rel=0.03)


def test_auto_threshold_verified_on_validation() -> None:
    data = separable_data(512)
    model = factorize(trained_mlp(data), 3, init="balanced")
    _shrink_half(model)
    result = collapse_and_verify(model, data, "auto", tolerance=0.0)
    assert result.factorized_accuracy is not None and result.factorized_accuracy > 0.4  # chance is 0.25
    assert result.threshold >= 1e-6  # the tiny half is removed for free
    assert result.collapsed_accuracy is not None
    assert result.factorized_accuracy - result.collapsed_accuracy <= 0.0
    assert 0.5 <= result.report.sparsity < 0.99
    assert result.max_abs_logit_diff is not None and result.max_abs_logit_diff > 0.0
    fixed = collapse_and_verify(model, data, 1e-4)
    assert fixed.max_abs_logit_diff is not None and fixed.max_abs_logit_diff < 1e-3
    assert result.search and all(
        s["threshold"] <= max(threshold_grid([p.detach() for p in model.parameters()])) for s in result.search
    )


def test_auto_threshold_larger_tolerance_prunes_more() -> None:
    data = separable_data(512)
    model = factorize(trained_mlp(data), 3, init="balanced")
    strict = collapse_and_verify(model, data, "auto", tolerance=0.0)
    loose = collapse_and_verify(model, data, "auto", tolerance=0.2)
    assert loose.threshold >= strict.threshold
    assert loose.report.nnz <= strict.report.nnz
    assert loose.factorized_accuracy is not None and loose.collapsed_accuracy is not None
    assert loose.factorized_accuracy - loose.collapsed_accuracy <= 0.2


@pytest.mark.parametrize(
    ("threshold", "kwargs"),
    [("auto", {}), (-1.0, {}), (float("nan"), {}), ("big", {}), (0.1, {"tolerance": 1.5})],
)
def test_bad_threshold_refused(threshold: object, kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        collapse(factorize(mlp(), 2), threshold, **kwargs)  # type: ignore[arg-type]


def test_collapse_of_plain_model_refused() -> None:
    with pytest.raises(ConfigError, match="factorize"):
        collapse(mlp(), 0.1)


def test_report_counts_per_layer_and_all_params() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 1, 0, 2], [0, 0, 0, 0], [3, 0, 0, 0]]))
        model[0].bias.zero_()
        model[1].weight.fill_(1.0)
        model[1].bias.fill_(1.0)
    report = sparsity_report(model)
    assert [(t.name, t.total, t.nnz) for t in report.layers] == [("0.weight", 12, 3), ("1.weight", 6, 6)]
    assert report.total == 18 and report.nnz == 9 and report.compression_ratio == 2.0
    assert report.total_all == 23 and report.nnz_all == 11
    assert report.layers[0].sparsity == 0.75
    thresholded = sparsity_report(model, threshold=1.5)
    assert thresholded.layers[0].nnz == 2 and thresholded.layers[1].nnz == 0
    as_dict = report.to_dict()
    assert as_dict["layers"][0] == {"name": "0.weight", "shape": [3, 4], "total": 12, "nnz": 3, "sparsity": 0.75}


def test_report_on_factorized_model_counts_collapsed_weights() -> None:
    model = factorize(mlp(), 2)
    report = sparsity_report(model)
    assert [t.name for t in report.layers] == ["1.weight", "3.weight"]
    assert report.total == 20 * 32 + 32 * 4
    assert report.total_all == sum(p.numel() for p in mlp().parameters())
    assert sparsity_report(model, threshold=1e9).compression_ratio == float("inf")

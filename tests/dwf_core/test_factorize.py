"""Invariants of factorize(): selection, function preservation, init statistics, loud errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from dwf_core.errors import ConfigError
from dwf_core.factorize import Product, factorize, factorized_tensors, init_stats, select_parameters
from dwf_core.init import target_std, varmatch_bounds

from .helpers import ResidualNorm, mlp


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_balanced_preserves_function(depth: int) -> None:
    model = ResidualNorm()
    x = torch.randn(3, 1, 8, 8)
    before = model(x)
    factorize(model, depth, init="balanced")
    torch.testing.assert_close(model(x), before)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_factors_have_weight_shape_and_dtype(depth: int) -> None:
    model = mlp()
    factorize(model, depth)
    tensors = factorized_tensors(model)
    assert [t.name for t in tensors] == ["1.weight", "3.weight"]
    for t in tensors:
        factors = t.factors()
        assert len(factors) == depth
        for f in factors:
            assert f.shape == t.weight().shape and f.dtype == torch.float32 and f.requires_grad


def test_parameters_named_as_parametrize_does() -> None:
    model = factorize(mlp(), 3)
    names = [n for n, _ in model.named_parameters()]
    assert "1.parametrizations.weight.original2" in names and "1.bias" in names
    assert isinstance(model[1].parametrizations.weight[0], Product)


def test_gradients_flow_to_every_factor() -> None:
    model = factorize(mlp(), 3)
    model(torch.randn(5, 20)).sum().backward()
    for t in factorized_tensors(model):
        for f in t.factors():
            assert f.grad is not None and f.grad.abs().sum() > 0


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_varmatch_exact_matches_target_std(depth: int) -> None:
    model = nn.Sequential(nn.Linear(784, 300))
    factorize(model, depth, variant="exact")
    stats = init_stats(model)["0.weight"]
    assert stats["std"] == pytest.approx(target_std((300, 784)), rel=0.02)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_varmatch_published_shrinks_std_and_respects_window(depth: int) -> None:
    model = nn.Sequential(nn.Linear(784, 300))
    factorize(model, depth, variant="published")
    sigma = target_std((300, 784))
    assert 0.7 * sigma < init_stats(model)["0.weight"]["std"] < 0.9 * sigma
    low, high = varmatch_bounds(sigma, depth, 0.25)
    for f in factorized_tensors(model)[0].factors():
        assert low < float(f.detach().abs().min()) and float(f.detach().abs().max()) < high


def test_varmatch_is_seeded() -> None:
    a = factorize(mlp(), 3, seed=7)
    b = factorize(mlp(), 3, seed=7)
    c = factorize(mlp(), 3, seed=8)
    assert torch.equal(a[1].weight, b[1].weight)
    assert not torch.equal(a[1].weight, c[1].weight)


def test_include_exclude_globs() -> None:
    model = ResidualNorm()
    assert select_parameters(model) == ["stem.weight", "block.0.weight", "block.2.weight", "head.weight"]
    assert select_parameters(model, exclude=["head.*"]) == ["stem.weight", "block.0.weight", "block.2.weight"]
    assert select_parameters(model, include=["norm.weight", "head.bias"]) == ["norm.weight", "head.bias"]
    factorize(model, 2, include=["norm.weight"])
    assert [t.name for t in factorized_tensors(model)] == ["norm.weight"]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"depth": 0}, "depth"),
        ({"depth": 9}, "depth"),
        ({"depth": 2.0}, "depth"),
        ({"init": "xavier"}, "init"),
        ({"include": ["nothing.*"]}, "include"),
    ],
)
def test_bad_arguments_are_refused_loudly(kwargs: dict[str, object], param: str) -> None:
    model = mlp()
    with pytest.raises(ConfigError) as err:
        factorize(model, **kwargs)  # type: ignore[arg-type]
    assert err.value.param == param
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


def test_already_factorized_is_refused() -> None:
    model = factorize(mlp(), 2)
    with pytest.raises(ConfigError, match="already parametrized"):
        factorize(model, 2)


def test_tied_weights_are_refused() -> None:
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    with pytest.raises(ConfigError, match="tied"):
        factorize(tied, 2)


def test_integer_parameter_is_refused() -> None:
    model = nn.Module()
    model.register_parameter("codes", nn.Parameter(torch.zeros(3, dtype=torch.int64), requires_grad=False))
    with pytest.raises(ConfigError, match="dtype"):
        factorize(model, 2, include=["codes"])


def test_failed_init_rolls_back() -> None:
    model = mlp()
    with pytest.raises(ConfigError):
        factorize(model, 3, epsilon=100.0)  # empty VarMatch window
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert [n for n, _ in model.named_parameters()] == ["1.weight", "1.bias", "3.weight", "3.bias"]


class _TokenEncoder(nn.Module):
    """Embedding → nn.TransformerEncoderLayer → mean → Linear: the weight matrices a small text model holds."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(30, 16)
        self.layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True, dropout=0.0)
        self.cross = nn.MultiheadAttention(16, 2, kdim=8, vdim=8, batch_first=True)  # separate Q/K/V projections
        self.head = nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.layer(self.emb(ids))
        memory = h[..., :8]
        h = h + self.cross(h, memory, memory, need_weights=False)[0]
        return self.head(h.mean(dim=1))


def test_the_default_factorizes_attention_projections_and_embedding_tables() -> None:
    model = _TokenEncoder()
    chosen = set(select_parameters(model))
    assert chosen == {
        "emb.weight",
        "layer.self_attn.in_proj_weight",
        "layer.self_attn.out_proj.weight",
        "layer.linear1.weight",
        "layer.linear2.weight",
        "cross.q_proj_weight",
        "cross.k_proj_weight",
        "cross.v_proj_weight",
        "cross.out_proj.weight",
        "head.weight",
    }
    assert sum(model.get_parameter(n).numel() for n in chosen) == sum(
        p.numel() for p in model.parameters() if p.dim() >= 2
    )
    ids = torch.randint(0, 30, (4, 5))
    reference = model(ids).detach()
    factorize(model, 3, "balanced")
    torch.testing.assert_close(model(ids), reference, atol=1e-5, rtol=1e-5)  # balanced keeps the function
    loss = model(ids).square().mean()
    loss.backward()  # type: ignore[no-untyped-call]
    factors = [p for t in factorized_tensors(model) for p in t.factors()]
    assert len(factors) == 3 * len(chosen) and all(p.grad is not None for p in factors)


def test_an_embedding_with_sparse_gradients_stays_dense_by_default() -> None:
    model = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Flatten(), nn.Linear(8, 2))
    assert select_parameters(model) == ["2.weight"]
    assert select_parameters(nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2))) == [
        "0.weight",
        "2.weight",
    ]

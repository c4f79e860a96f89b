"""The default selection beyond Linear/Conv: recurrent layers, transposed convolutions, Bilinear, GPT-2's Conv1D."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dwf_core.coverage import coverage
from dwf_core.factorize import factorize, factorized_tensors, init_stats, select_parameters
from dwf_core.init import target_std


class _Recurrent(nn.Module):
    """A bidirectional 2-layer LSTM with a projection, a GRU cell over its last output, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 16, num_layers=2, bidirectional=True, batch_first=True, proj_size=8)
        self.cell = nn.GRUCell(16, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        hidden = self.cell(out[:, 0])
        out2: torch.Tensor = self.head(self.cell(out.mean(1), hidden))  # two cell steps: its hidden weights count
        return out2


class _Decoder(nn.Module):
    """Conv down, transposed conv up, a bilinear layer on two pooled views."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1)
        self.pair = nn.Bilinear(4, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = torch.relu(self.down(x))
        high = self.up(low)
        out: torch.Tensor = self.pair(low.mean((2, 3)), high.mean((2, 3)))
        return out


def test_every_recurrent_matrix_is_selected_by_default() -> None:
    model = _Recurrent()
    lstm = [f"lstm.weight_{kind}_l{n}{rev}" for n in (0, 1) for rev in ("", "_reverse") for kind in ("ih", "hh", "hr")]
    assert sorted(select_parameters(model)) == sorted([*lstm, "cell.weight_ih", "cell.weight_hh", "head.weight"])
    cov = coverage(model)
    matrices = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    assert cov.factorized == matrices and cov.factorized_share > 0.9  # biases are all that is left


@pytest.mark.parametrize("depth", [2, 3])
def test_a_factorized_lstm_computes_the_same_function_and_trains(depth: int) -> None:
    model = _Recurrent()
    x = torch.randn(4, 5, 6)
    before = model(x)
    factorize(model, depth, init="balanced")
    torch.testing.assert_close(model(x), before)
    assert len(factorized_tensors(model)) == 15
    fresh = factorize(_Recurrent(), depth, seed=0)  # VarMatch factors: a forward and gradients into every factor
    fresh(x).square().mean().backward()
    for t in factorized_tensors(fresh):
        assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in t.factors()), t.name


def test_transposed_conv_and_bilinear_are_selected_by_default() -> None:
    model = _Decoder()
    assert select_parameters(model) == ["down.weight", "up.weight", "pair.weight"]
    x = torch.randn(2, 1, 8, 8)
    before = model(x)
    factorize(model, 3, init="balanced")
    torch.testing.assert_close(model(x), before)


def test_transformers_conv1d_is_selected_with_its_transposed_fan_in() -> None:
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    model = nn.Sequential(Conv1D(300, 784))  # type: ignore[no-untyped-call]  # nf = 300 outputs, nx = 784 inputs: weight (784, 300)
    assert select_parameters(model) == ["0.weight"]
    factorize(model, 3, variant="exact")
    # VarMatch matches the std of a 784-input layer, not of the 300 the (in, out) shape would suggest
    assert init_stats(model)["0.weight"]["std"] == pytest.approx(target_std((300, 784)), rel=0.02)


def test_the_suite_gru_default_selection_is_its_include_globs() -> None:
    from benchmarks.suite_models import PAIR_BY_NAME, GRUClassifier

    assert select_parameters(GRUClassifier()) == list(PAIR_BY_NAME["gru"].include)


def test_xlnet_and_funnel_einsum_projections_are_selected_with_their_fan_in() -> None:
    """XLNet's q/k/v/o/r and Funnel's r_kernel are raw (d_model, n_head, d_head) parameters used in einsum calls, not
    Linear layers: selected by default, drawn with the fan-in of the einsum that reads them, the function kept."""
    pytest.importorskip("transformers")
    from transformers import FunnelConfig, FunnelModel, XLNetConfig, XLNetModel

    xlnet = XLNetModel(XLNetConfig(vocab_size=50, d_model=64, n_layer=1, n_head=4, d_inner=32))
    chosen = select_parameters(xlnet)
    assert {f"layer.0.rel_attn.{p}" for p in "qkvor"} <= set(chosen)
    assert not any(name.endswith(("_bias", "seg_embed")) for name in chosen)  # biases stay dense
    # every weight but the biases, LayerNorms and the mask embedding (53% of a width-32 XLNet before this selection)
    assert coverage(xlnet, None, None).factorized_share > 0.9
    funnel = FunnelModel(FunnelConfig(vocab_size=50, d_model=32, n_head=4, d_head=8, d_inner=32, block_sizes=[1, 1]))
    assert "encoder.blocks.0.0.attention.r_kernel" in select_parameters(funnel)

    torch.manual_seed(0)
    factorize(xlnet, 3, variant="exact")
    stats = init_stats(xlnet)
    q, o = stats["layer.0.rel_attn.q"], stats["layer.0.rel_attn.o"]
    assert q["std"] == pytest.approx(target_std((1, 64)), rel=0.05)  # reads d_model = 64
    assert o["std"] == pytest.approx(target_std((1, 4 * 16)), rel=0.05)  # reads n_head · d_head = 4 · 16


def test_xlnet_function_is_kept_by_the_balanced_factorization() -> None:
    pytest.importorskip("transformers")
    from transformers import XLNetConfig, XLNetModel

    torch.manual_seed(0)
    model = XLNetModel(XLNetConfig(vocab_size=50, d_model=32, n_layer=1, n_head=2, d_inner=32)).eval()
    tokens = torch.randint(0, 50, (2, 7))
    before = model(tokens).last_hidden_state
    factorize(model, 3, init="balanced")
    assert len(factorized_tensors(model)) >= 5
    torch.testing.assert_close(model(tokens).last_hidden_state, before, rtol=1e-4, atol=1e-5)

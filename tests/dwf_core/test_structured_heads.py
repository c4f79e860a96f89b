"""Structured DWF per attention head: gates on nn.MultiheadAttention, timm's ViT and BERT keep the function at 1,
take the factor decay, fold exactly, count and cut heads by MACs, and a short run removes heads the compaction drops."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from dwf_core.compact import compact_model
from dwf_core.config import TrainConfig
from dwf_core.penalty import factor_weight_decay, param_groups
from dwf_core.structured import attach_gates, count_macs, gated_modules
from dwf_core.structured.cut import UnitCutter, plain_copy, unit_sizes
from dwf_core.structured.gates import GATES_ATTR
from dwf_core.structured.macs import probe_input
from dwf_core.structured.run import collapse_structured
from dwf_core.train import Trainer

from .attention_models import HEADS, SEQ, VOCAB, bert, timm_vit
from .helpers import separable_data


class TokenAttention(nn.Module):
    """(N, 20) → 5 tokens of 4 → Linear embedding → nn.MultiheadAttention (4 heads of 4) → mean → logits."""

    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.batch_first = batch_first
        self.embed = nn.Linear(4, 16)
        self.attn = nn.MultiheadAttention(16, HEADS, batch_first=batch_first)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens attend to each other once; their mean is classified."""
        h = torch.tanh(self.embed(x.reshape(x.shape[0], 5, 4)))
        if not self.batch_first:
            h = h.transpose(0, 1)
        out = self.attn(h, h, h, need_weights=False)[0]
        mixed = h + out
        out_tokens: torch.Tensor = self.head(mixed.mean(1 if self.batch_first else 0))
        return out_tokens


def _case(kind: str, tmp_path: Path) -> tuple[Callable[[], nn.Module], torch.Tensor, str, list[str]]:
    """(builder, inputs, the attention's name, the Linears that hold its Q/K/V rows)."""
    g = torch.Generator().manual_seed(5)
    if kind == "mha":
        return TokenAttention, torch.randn(6, 20, generator=g), "attn", []
    if kind == "mha-seq-first":
        return (lambda: TokenAttention(batch_first=False)), torch.randn(6, 20, generator=g), "attn", []
    if kind == "timm":
        return timm_vit, torch.randn(4, 3, 16, 16, generator=g), "blocks.0.attn", ["blocks.0.attn.qkv"]
    prefix = "bert.encoder.layer.0.attention.self"
    inputs = torch.randint(0, VOCAB, (4, SEQ), generator=g)
    return (lambda: bert(tmp_path)), inputs, prefix, [f"{prefix}.{n}" for n in ("query", "key", "value")]


KINDS = ["mha", "mha-seq-first", "timm", "hf"]


def _attention_output(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """What the attention module ``name`` returns (its first output) on ``x``."""
    seen: list[torch.Tensor] = []

    def keep(_m: nn.Module, _i: object, out: object) -> None:
        seen.append(out[0] if isinstance(out, tuple) else out)  # type: ignore[arg-type]

    handle = model.get_submodule(name).register_forward_hook(keep)
    try:
        _logits(model, x)
    finally:
        handle.remove()
    return seen[0]


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model.eval()(x)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_head_gates_start_at_one_keep_the_function_and_replace_the_projection_gates(kind: str, tmp_path: Path) -> None:
    build, x, name, projections = _case(kind, tmp_path)
    model = build()
    before = _logits(model, x)
    gated = attach_gates(model, 3, x[:2])
    assert name in gated
    gates = getattr(model.get_submodule(name), GATES_ATTR)
    assert gates.shape == (2, HEADS) and bool((gates == 1).all())
    assert not set(projections) & set(gated)  # their units are the heads now
    torch.testing.assert_close(_logits(model, x), before, atol=1e-6, rtol=0)
    open_heads = _attention_output(model, name, x)
    with torch.no_grad():
        gates[:, 1] = 0.0  # a closed head changes the attention's output: the gates are really in the path
    assert float((_attention_output(model, name, x) - open_heads).abs().max()) > 1e-3 * float(open_heads.abs().max())


@pytest.mark.parametrize("kind", KINDS)
def test_folded_head_gates_compute_what_the_gated_model_did_and_closed_heads_compact_away(
    kind: str, tmp_path: Path
) -> None:
    build, x, name, _ = _case(kind, tmp_path)
    model = build()
    attach_gates(model, 3, x[:2])
    with torch.no_grad():
        gates = getattr(model.get_submodule(name), GATES_ATTR)
        gates.copy_(torch.rand(gates.shape, generator=torch.Generator().manual_seed(2)) + 0.5)
        gates[0, 2] = 0.0
    gated = _logits(model, x)
    plain, layers = plain_copy(model)
    assert layers[name] is None
    assert type(plain.get_submodule(name)) is type(build().get_submodule(name))  # original class, no gates left
    assert not any(hasattr(m, GATES_ATTR) for m in plain.modules())
    torch.testing.assert_close(_logits(plain, x), gated, atol=1e-5, rtol=0)
    sizes = [u for u in unit_sizes(plain, layers) if u.layer == name]
    assert len(sizes) == HEADS and sizes[2].size == 0.0 and min(u.size for i, u in enumerate(sizes) if i != 2) > 0
    result = compact_model(plain, x)
    assert result.heads.heads[name] == (HEADS, HEADS - 1)
    torch.testing.assert_close(_logits(result.model, x), gated, atol=1e-5, rtol=0)


def test_head_gates_and_projections_take_the_factor_decay() -> None:
    model = TokenAttention()
    attach_gates(model, 3, torch.randn(2, 20))
    attn = model.attn
    decay = factor_weight_decay(1e-3, 3)
    by_param = {id(p): g["weight_decay"] for g in param_groups(model, 1e-3) for p in g["params"]}
    for param in (getattr(attn, GATES_ATTR), attn.in_proj_weight, attn.in_proj_bias):
        assert by_param[id(param)] == pytest.approx(decay)
    assert by_param[id(attn.out_proj.weight)] == 0.0  # read by every head: not the heads' group
    assert by_param[id(model.head.weight)] == 0.0  # the logits layer is never gated


@pytest.mark.parametrize("kind", ["mha", "timm", "hf"])
def test_cutting_a_head_zeroes_its_projections_and_saves_their_macs(kind: str, tmp_path: Path) -> None:
    build, x, name, _ = _case(kind, tmp_path)
    model = build()
    attach_gates(model, 3, x[:2])
    with torch.no_grad():
        getattr(model.get_submodule(name), GATES_ATTR)[1, 3] = 1e-3  # head 3 is the smallest unit by far
    plain, layers = plain_copy(model)
    cutter = UnitCutter(plain, layers, probe_input(x))
    full = cutter.cut(0)
    first = cutter.order[0]
    assert (first.layer, first.index) == (name, 3)
    attention_macs = [layer for layer in full.layers if layer.name == name or layer.name.startswith(f"{name}.")]
    assert attention_macs  # the attention's projections are counted (for MHA: by the module itself)
    one = cutter.cut(1)
    assert one.kept < full.kept
    saved = full.kept - one.kept
    hd = 16 // HEADS if kind.startswith("mha") else 32 // HEADS
    assert saved >= 3 * hd * (16 if kind.startswith("mha") else 32)  # at least one token's Q, K and V rows
    result = compact_model(plain, x)
    assert result.heads.heads[name] == (HEADS, HEADS - 1)
    restored = cutter.cut(0)  # the saved weights come back: the head is whole again
    assert restored.kept == full.kept
    assert compact_model(plain, x).heads.heads[name] == (HEADS, HEADS)


def test_fine_tuning_after_the_cut_keeps_removed_heads_removed() -> None:
    """The automatic fine-tuning masks the zeros of nn.MultiheadAttention's in_proj too: a cut head stays cut."""
    from dataclasses import replace

    from dwf_core.structured.run import finetune_units

    torch.set_num_threads(1)
    data, val = separable_data(512), separable_data(256, seed=1)
    cfg = TrainConfig(structure="units", target_macs=0.4, epochs=3, lam=2e-3, batch_size=64, device="cpu",
                      mac_frontier=[]).resolved()  # fmt: skip
    result = Trainer(TokenAttention(), data, val, cfg).fit()
    collapsed, _ = collapse_structured(result.model, val, None, cfg, example=data.x[:2])
    _, kept = compact_model(collapsed.model, data.x[:8]).heads.heads["attn"]
    assert kept < HEADS
    _, tuned, _ = finetune_units(collapsed, data, val, replace(cfg, finetune_epochs=2))
    in_proj = tuned.model.attn.in_proj_weight
    assert bool((in_proj[collapsed.model.attn.in_proj_weight == 0] == 0).all())  # every zero stayed zero
    assert compact_model(tuned.model, data.x[:8]).heads.heads["attn"] == (HEADS, kept)


@pytest.mark.parametrize("unit_cut", ["final", "gradual"])
def test_a_short_structured_run_removes_heads_and_the_compact_model_matches(unit_cut: str) -> None:
    torch.set_num_threads(1)
    data, val = separable_data(512), separable_data(256, seed=1)
    cfg = TrainConfig(
        structure="units",
        target_macs=0.4,
        unit_cut=unit_cut,
        epochs=4,
        lam=2e-3,
        batch_size=64,
        device="cpu",
        mac_frontier=[],
    ).resolved()
    result = Trainer(TokenAttention(), data, val, cfg).fit()
    assert "attn" in [name for name, _ in gated_modules(result.model)]
    collapsed, info = collapse_structured(result.model, val, None, cfg, example=data.x[:2])
    assert info["target_met"] and "attn" in info["gated_layers"]
    assert collapsed.factorized_accuracy is not None and collapsed.factorized_accuracy > 0.35  # chance: 0.25
    attention = next(layer for layer in info["layers"] if layer["name"] == "attn")
    assert attention["units"] < HEADS  # the budget could not be met without removing heads
    compact = compact_model(collapsed.model, data.x[:8])
    before, kept = compact.heads.heads["attn"]
    assert (before, kept) == (HEADS, attention["units"])
    assert compact.model.attn.num_heads == kept
    torch.testing.assert_close(_logits(compact.model, val.x), _logits(collapsed.model, val.x), atol=1e-5, rtol=0)
    assert (
        count_macs(compact.model, probe_input(data.x[:2])).dense
        < count_macs(collapsed.model, probe_input(data.x[:2])).dense
    )

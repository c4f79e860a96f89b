"""Compaction of attention heads: dead heads of nn.MultiheadAttention, timm's ViT and BERT leave the compact model,
which computes what the sparse one does and rebuilds from its file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from dwf_core.compact import compact_model, load_compact, save_compact, write_compact
from dwf_core.compact.mha import HeadsMultiheadAttention
from dwf_core.compact.spec import SPEC_KEY

from .attention_models import HEADS, SEQ, VOCAB, bert, timm_vit


class SeqFirstAttention(nn.Module):
    """Tokens → Linear embedding → nn.MultiheadAttention (sequence first, cross-attention on a second view) → mean."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(6, 32)
        self.attn = nn.MultiheadAttention(32, HEADS)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, 6) → logits (N, 3)."""
        h = torch.tanh(self.embed(x)).transpose(0, 1)  # (L, N, E)
        out: torch.Tensor = self.attn(h, h * 0.5, h, need_weights=True)[0]
        return self.head((h + out).mean(0))


def _tiny_vit_mha() -> nn.Module:
    """The model suite's ViT (nn.TransformerEncoder, batch first, its fused fast path in eval) with 4 heads."""
    from benchmarks.suite_models import TinyViT

    torch.manual_seed(0)
    return TinyViT(classes=3, dim=32)


def _case(kind: str, tmp_path: Path) -> tuple[Callable[[], nn.Module], torch.Tensor, str]:
    """(builder, example inputs, the attention module's name) of one kind."""
    g = torch.Generator().manual_seed(5)
    if kind == "mha-seq-first":
        return SeqFirstAttention, torch.randn(4, 5, 6, generator=g), "attn"
    if kind == "mha-encoder":
        return _tiny_vit_mha, torch.randn(4, 1, 28, 28, generator=g), "enc.layers.0.self_attn"
    if kind == "timm":
        return timm_vit, torch.randn(4, 3, 16, 16, generator=g), "blocks.0.attn"
    return (
        (lambda: bert(tmp_path)),
        torch.randint(0, VOCAB, (4, SEQ), generator=g),
        "bert.encoder.layer.0.attention.self",
    )


def _projections(model: nn.Module, kind: str, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, nn.Linear]:
    """(Q rows, V rows, V bias, output projection) of the named attention, written out per kind for the test."""
    module = model.get_submodule(name)
    if kind.startswith("mha"):
        e = module.embed_dim
        return module.in_proj_weight[:e], module.in_proj_weight[2 * e :], module.in_proj_bias[2 * e :], module.out_proj
    if kind == "timm":
        e = module.attn_dim
        return module.qkv.weight[:e], module.qkv.weight[2 * e :], module.qkv.bias[2 * e :], module.proj
    parent = model.get_submodule(name.rpartition(".")[0])
    return module.query.weight, module.value.weight, module.value.bias, parent.output.dense


def _head_count(module: nn.Module) -> int:
    return int(getattr(module, "num_attention_heads", getattr(module, "num_heads", -1)))


def _max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a.eval()(x) - b.eval()(x)).abs().max())


KINDS = ["mha-seq-first", "mha-encoder", "timm", "hf"]
# scenario → (what to zero, heads expected to go, folded constants expected)
SCENARIOS = {
    "value-rows": ({0: "v", 2: "v"}, 2, 0),
    "value-rows-with-bias": ({1: "vb"}, 1, 1),
    "out-columns": ({3: "out"}, 1, 0),
    "query-only": ({1: "q"}, 0, 0),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("kind", KINDS)
def test_dead_heads_leave_and_the_compact_model_rebuilds(kind: str, scenario: str, tmp_path: Path) -> None:
    build, x, name = _case(kind, tmp_path)
    model = build().eval()
    zero, gone, folded = SCENARIOS[scenario]
    hd = 32 // HEADS
    q, v, v_bias, out = _projections(model, kind, name)
    with torch.no_grad():
        v_bias.normal_(0, 0.5)  # every head has a V bias: only the folded constant keeps the function
        for head, what in zero.items():
            rows = slice(head * hd, (head + 1) * hd)
            if what == "q":
                q[rows] = 0
            elif what in ("v", "vb"):
                v[rows] = 0
                if what == "v":
                    v_bias[rows] = 0
            else:
                out.weight[:, rows] = 0
    result = compact_model(model, x)
    compact = result.model
    assert _head_count(compact.get_submodule(name)) == HEADS - gone
    assert result.heads.heads[name] == (HEADS, HEADS - gone)
    assert result.heads.folded == folded
    assert result.to_dict()["attention_heads"][name] == {"before": HEADS, "kept": HEADS - gone}
    assert _max_diff(model, compact, x) < 1e-5
    g = torch.Generator().manual_seed(9)
    fresh_x = (
        torch.randn(x.shape, generator=g)
        if x.dtype.is_floating_point
        else torch.randint(0, VOCAB, x.shape, generator=g)
    )
    assert _max_diff(model, compact, fresh_x) < 1e-5
    path = tmp_path / "model.compact.safetensors"
    save_compact(compact, result.spec, path, metadata={})
    rebuilt = load_compact(build(), path)
    assert _head_count(rebuilt.get_submodule(name)) == HEADS - gone
    assert _max_diff(model, rebuilt, fresh_x) < 1e-5
    if gone and kind.startswith("mha"):
        assert type(rebuilt.get_submodule(name)) is HeadsMultiheadAttention


def test_every_head_dead_keeps_one() -> None:
    model = SeqFirstAttention().eval()
    with torch.no_grad():
        model.attn.out_proj.weight.zero_()
    result = compact_model(model, torch.randn(3, 5, 6))
    assert result.heads.heads["attn"] == (HEADS, 1)
    assert result.model.attn.in_proj_weight.shape == (3 * 8, 32)


def test_the_spec_records_the_new_head_count_and_class(tmp_path: Path) -> None:
    from safetensors import safe_open

    model = SeqFirstAttention().eval()
    with torch.no_grad():
        model.attn.in_proj_weight[64:72] = 0  # head 0's value rows
    result = compact_model(model, torch.randn(3, 5, 6))
    path = tmp_path / "model.compact.safetensors"
    save_compact(result.model, result.spec, path, metadata={})
    with safe_open(str(path), framework="pt") as handle:
        spec = json.loads(handle.metadata()[SPEC_KEY])
    assert spec["attn"]["class"] == "HeadsMultiheadAttention"
    assert spec["attn"]["attrs"] == {"num_heads": 3}
    assert spec["attn"]["params"]["in_proj_weight"] == [72, 32]
    assert spec["attn.out_proj"]["attrs"] == {"in_features": 24}


def test_compact_attention_exports_to_onnx_with_the_same_outputs(tmp_path: Path) -> None:
    model = _tiny_vit_mha().eval()
    with torch.no_grad():
        for layer in model.enc.layers:
            layer.self_attn.out_proj.weight[:, :8] = 0  # head 0 of both layers is unread
    x = torch.randn(4, 1, 28, 28)
    outcome = write_compact(model, x, tmp_path, metadata={})
    assert outcome.info["attention_heads"]["enc.layers.0.self_attn"] == {"before": 4, "kept": 3}
    assert outcome.info["onnx"]["exported"], outcome.info["onnx"]
    session = ort.InferenceSession(str(tmp_path / "model.compact.onnx"), providers=["CPUExecutionProvider"])
    probe = torch.randn(3, 1, 28, 28)
    got = session.run(None, {"input": probe.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(probe).numpy(), atol=1e-4, rtol=0)


def test_heads_multihead_attention_matches_torch_with_masks_and_weights() -> None:
    """At full heads the module is nn.MultiheadAttention: masks, unbatched input, attention weights."""
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    ours = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    ours.load_state_dict(reference.state_dict())
    ours.__class__ = HeadsMultiheadAttention
    q, kv = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[0, -2:] = True
    causal = torch.ones(5, 7, dtype=torch.bool).triu(1)
    for kwargs in (
        {},
        {"key_padding_mask": padding},
        {"attn_mask": causal, "key_padding_mask": padding, "average_attn_weights": False},
        {"need_weights": False, "key_padding_mask": padding},
    ):
        want, want_w = reference(q, kv, kv, **kwargs)
        got, got_w = ours(q, kv, kv, **kwargs)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        if want_w is None:
            assert got_w is None
        else:
            assert got_w is not None
            torch.testing.assert_close(got_w, want_w, atol=1e-5, rtol=0)
    want, _ = reference(q[0], kv[0], kv[0])
    got, _ = ours(q[0], kv[0], kv[0])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


class _OneWideHead(nn.Module):
    """Looks like BERT's self-attention (query/key/value, 4 heads of 8) but scores all 32 dims as one head."""

    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32)
        self.num_attention_heads, self.attention_head_size, self.all_head_size = HEADS, 8, 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.query(x) @ self.key(x).transpose(1, 2) / 8**0.5
        out: torch.Tensor = scores.softmax(dim=-1) @ self.value(x)
        return out


class _LooksLikeBert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.self = _OneWideHead()
        self.output = nn.Module()
        self.output.dense = nn.Linear(32, 32)
        self.classifier = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.output.dense(self.self(x))
        out: torch.Tensor = self.classifier(h.mean(1))
        return out


def test_an_attention_whose_heads_are_not_separate_is_put_back_whole() -> None:
    """Removing 'head' 0's rows changes this module's scores (all dims form one head): the check catches it, the
    module stays whole with the reason, and the rest of the compaction goes on."""
    model = _LooksLikeBert().eval()
    with torch.no_grad():
        model.self.value.weight[:8] = 0
    x = torch.randn(4, 6, 32)
    result = compact_model(model, x)
    assert result.heads.heads["self"] == (HEADS, HEADS)
    assert result.heads.skipped["self"].startswith("removing 1 dead heads changed its output")
    assert result.model.self.query.out_features == 32
    assert _max_diff(model, result.model, x) < 1e-5


class _CrossWithOwnKeyWidth(nn.Module):
    """nn.MultiheadAttention with kdim/vdim ≠ embed_dim: separate q/k/v weights, a layout the compaction refuses."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(16, HEADS, kdim=8, vdim=8, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.attn(x[..., :16], x[..., 16:], x[..., 16:])[0].mean(1))
        return out


def test_attention_layouts_it_cannot_shrink_are_named_with_the_reason() -> None:
    model = _CrossWithOwnKeyWidth().eval()
    with torch.no_grad():
        model.attn.v_proj_weight[:4] = 0
    result = compact_model(model, torch.randn(3, 5, 24))
    assert result.heads.heads == {}
    assert "separate q/k/v" in result.to_dict()["attention_left_whole"]["attn"]

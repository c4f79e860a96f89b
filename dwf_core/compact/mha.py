"""``nn.MultiheadAttention`` that may hold fewer heads than ``embed_dim / head_dim``, and may gate each head.

PyTorch's own module derives ``head_dim = embed_dim // num_heads`` and checks ``num_heads · head_dim == embed_dim``,
so it cannot hold the heads that remain after dead ones are removed (``embed_dim`` is the width of the tokens and
must stay). ``HeadsMultiheadAttention`` is the same module (same parameters and state_dict keys, ``in_proj`` rows
now ``3 · num_heads · head_dim``, ``out_proj`` with ``num_heads · head_dim`` input columns) with a forward that
computes attention per remaining head; a compact file names it as the module's class and ``load_compact`` turns a
fresh ``nn.MultiheadAttention`` into it. With ``dwf_gates`` (structured DWF) each head's output is multiplied by
its gate product before the output projection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

GATES_ATTR = "dwf_gates"  # the same name as dwf_core.structured.gates.GATES_ATTR (imported there from here)


def _additive_mask(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    batch: int,
    heads: int,
    full_heads: bool,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """One float mask (batch or 1, heads or 1, L, S) to add to the scores: True/−inf entries are never attended."""

    def as_float(mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
        return mask.to(dtype)

    merged: torch.Tensor | None = None
    if attn_mask is not None:
        mask = as_float(attn_mask)
        if mask.dim() == 3:
            # (batch · heads, L, S): one mask per original head, which a module without some heads cannot map.
            if not full_heads:
                raise ValueError("a per-head (3-D) attn_mask needs every head; this attention had heads removed")
            mask = mask.reshape(batch, heads, *mask.shape[1:])
        merged = mask
    if key_padding_mask is not None:
        padding = as_float(key_padding_mask).reshape(batch, 1, 1, -1)
        merged = padding if merged is None else merged + padding
    return merged


class HeadsMultiheadAttention(nn.MultiheadAttention):
    """Self- or cross-attention with ``num_heads`` heads of ``head_dim`` each, read from the usual parameters.

    Supports what the compaction lets through: packed q/k/v weights (``kdim == vdim == embed_dim``), no
    ``bias_k``/``bias_v``, no ``add_zero_attn``. ``need_weights`` returns the attention of the remaining heads
    (averaged over them unless ``average_attn_weights=False``).
    """

    @property
    def _qkv_same_embed_dim(self) -> bool:
        """Always False: ``nn.TransformerEncoderLayer``'s fused fast path reads ``in_proj_weight`` with
        ``embed_dim // num_heads`` per head and no gates; this answer makes it call ``forward`` instead."""
        return False

    @_qkv_same_embed_dim.setter
    def _qkv_same_embed_dim(self, value: bool) -> None:
        """Ignored (``nn.MultiheadAttention.__init__`` sets it)."""

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``nn.MultiheadAttention.forward``'s contract: (output, attention weights or None)."""
        batched = query.dim() == 3
        if not batched:  # (L, E): one sequence
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        length, batch, _ = query.shape
        heads, head_dim = self.num_heads, self.head_dim
        inner = heads * head_dim
        weight, bias = self.in_proj_weight, self.in_proj_bias
        w_q, w_k, w_v = weight[:inner], weight[inner : 2 * inner], weight[2 * inner :]
        b_q, b_k, b_v = (
            (None, None, None) if bias is None else (bias[:inner], bias[inner : 2 * inner], bias[2 * inner :])
        )

        def per_head(x: torch.Tensor, weight: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
            return F.linear(x, weight, b).reshape(x.shape[0], batch, heads, head_dim).permute(1, 2, 0, 3)

        q, k, v = per_head(query, w_q, b_q), per_head(key, w_k, b_k), per_head(value, w_v, b_v)
        full_heads = inner == self.embed_dim
        mask = _additive_mask(attn_mask, key_padding_mask, batch, heads, full_heads, q.dtype)
        dropout = self.dropout if self.training else 0.0
        weights: torch.Tensor | None = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(head_dim)
            if mask is not None:
                scores = scores + mask
            elif is_causal:
                causal = torch.ones(length, k.shape[2], dtype=torch.bool, device=q.device).triu(1)
                scores = scores.masked_fill(causal, float("-inf"))
            weights = scores.softmax(dim=-1)
            context = F.dropout(weights, dropout, self.training) @ v
        else:
            context = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal and mask is None
            )
        gates = getattr(self, GATES_ATTR, None)
        if isinstance(gates, torch.Tensor):
            context = context * gates.prod(dim=0).to(context.dtype).view(1, heads, 1, 1)
        out = F.linear(
            context.permute(2, 0, 1, 3).reshape(length, batch, inner), self.out_proj.weight, self.out_proj.bias
        )
        if not batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None:
            weights = weights.mean(dim=1) if average_attn_weights else weights
            weights = weights.squeeze(0) if not batched else weights
        return out, weights


def supports_heads(module: nn.MultiheadAttention) -> str | None:
    """Why ``module``'s heads cannot be handled by ``HeadsMultiheadAttention``, or None when they can."""
    if not module.__dict__.get("_qkv_same_embed_dim", True) or module.in_proj_weight is None:
        return "separate q/k/v projection weights (kdim or vdim differ)"
    if module.bias_k is not None or module.add_zero_attn:
        return "bias_k/bias_v or add_zero_attn"
    return None

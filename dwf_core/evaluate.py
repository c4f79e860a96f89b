"""Batched inference helpers shared by the trainer and the collapse verification."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from torch.nn.utils import parametrize


class Labeled(Protocol):
    """Anything with inputs ``x`` and integer labels ``y`` (a dataset split)."""

    x: torch.Tensor
    y: torch.Tensor


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: torch.Tensor, *, batch_size: int = 1000, device: torch.device | str | None = None
) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode, on CPU in float32; restores the model's train flag."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    outs = []
    try:
        # cached(): the factor product is computed once for the whole pass instead of per batch.
        with parametrize.cached():
            for start in range(0, x.shape[0], batch_size):
                batch = x[start : start + batch_size].to(dev, non_blocking=True)
                outs.append(model(batch).float().cpu())
    finally:
        model.train(was_training)
    if not outs:
        return torch.empty(0)
    return torch.cat(outs)


def max_logit_diff(reference: nn.Module, model: nn.Module, x: torch.Tensor, *, batch_size: int = 1000) -> float:
    """max |model(x) − reference(x)| over the logits (0 for no examples)."""
    got = predict_logits(model, x, batch_size=batch_size)
    return float((got - predict_logits(reference, x, batch_size=batch_size)).abs().max()) if got.numel() else 0.0


def accuracy_of(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1]."""
    if y.numel() == 0:
        return 0.0
    return float((logits.argmax(dim=1) == y.to(logits.device)).float().mean())


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Labeled, *, batch_size: int = 1000, device: torch.device | str | None = None
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on a split."""
    logits = predict_logits(model, data.x, batch_size=batch_size, device=device)
    if logits.numel() == 0:
        return 0.0, 0.0
    loss = float(nn.functional.cross_entropy(logits, data.y.to(logits.device)))
    return loss, accuracy_of(logits, data.y)

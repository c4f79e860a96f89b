"""Pruning at initialization: SNIP (Lee et al. 2019), SynFlow (Tanaka et al. 2020) and random masks.

Each function takes the factorized depth-1 model at its initial weights and returns masks keeping a fraction
1 − S of the target tensors; training then runs with the masks fixed.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dwf_core.baselines.masks import weights_of
from dwf_core.masking import Masks, Scores, global_topk_mask, pruned_count

SNIP_BATCHES = 4
SYNFLOW_ROUNDS = 100


def snip_scores(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, batches: int = SNIP_BATCHES, seed: int = 0
) -> Scores:
    """Connection sensitivity |∂L/∂w ⊙ w| with the gradient summed over a few random training batches."""
    weights = weights_of(model)
    device = next(iter(weights.values())).device
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    was_training = model.training
    model.train()
    model.zero_grad(set_to_none=True)
    try:
        for b in range(batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            if idx.numel() == 0:
                break
            xb, yb = x[idx.to(x.device)].to(device), y[idx.to(y.device)].to(device)
            nn.functional.cross_entropy(model(xb).float(), yb).backward()  # type: ignore[no-untyped-call]
        scores = {
            n: (w.grad * w).detach().abs() if w.grad is not None else torch.zeros_like(w) for n, w in weights.items()
        }
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return scores


def snip_masks(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, sparsity: float, *, batch_size: int, seed: int = 0
) -> Masks:
    """SNIP: keep the top (1 − S) connection sensitivities, globally."""
    return global_topk_mask(snip_scores(model, x, y, batch_size=batch_size, seed=seed), sparsity)


def synflow_scores(net: nn.Module, example: torch.Tensor) -> Scores:
    """|∂R/∂w ⊙ w| for R = sum of the outputs on an all-ones input, on ``net`` (already |w|, double, eval)."""
    weights = weights_of(net)
    net.zero_grad(set_to_none=True)
    ones = torch.ones_like(example, dtype=torch.float64)
    net(ones).sum().backward()
    scores = {n: (w.grad * w).detach().abs() if w.grad is not None else torch.zeros_like(w) for n, w in weights.items()}
    net.zero_grad(set_to_none=True)
    return scores


def synflow_masks(model: nn.Module, example: torch.Tensor, sparsity: float, *, rounds: int = SYNFLOW_ROUNDS) -> Masks:
    """SynFlow: data-free, ``rounds`` iterations pruning to density (1 − S)^(k/rounds), k = 1…rounds.

    Works on a double-precision copy whose parameters are replaced by their absolute values (the linearized
    network), in eval mode; ``example`` only gives the input shape (one sample with its batch dimension).
    """
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    weights = weights_of(net)
    original = {n: w.detach().clone() for n, w in weights.items()}
    masks: Masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    for k in range(1, rounds + 1):
        with torch.no_grad():
            for n, w in weights.items():
                w.copy_(original[n] * masks[n])
        scores = synflow_scores(net, example[:1])
        # Pruned weights score −1 so they never return; the density shrinks exponentially to 1 − S.
        scores = {n: s.masked_fill(~masks[n], -1.0) for n, s in scores.items()}
        density = (1.0 - sparsity) ** (k / rounds)
        masks = global_topk_mask(scores, 1.0 - density)
    return masks


def random_masks(model: nn.Module, sparsity: float, *, seed: int = 0) -> Masks:
    """Per-tensor uniform sparsity: each tensor loses exactly round(S·n) of its n weights, at random."""
    generator = torch.Generator().manual_seed(seed)
    masks: Masks = {}
    for n, w in weights_of(model).items():
        keep = torch.ones(w.numel(), dtype=torch.bool)
        keep[torch.randperm(w.numel(), generator=generator)[: pruned_count(w.numel(), sparsity)]] = False
        masks[n] = keep.reshape(w.shape).to(w.device)
    return masks

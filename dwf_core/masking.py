"""Pruning masks over factorized tensors and the cubic gradual-pruning schedule.

Shared by the pruning baselines (dwf_core.baselines, depth 1) and DWF's gradual cut (dwf_core.gradual_cut, any
depth). Masks are dicts from state_dict name ("fc1.weight") to a bool tensor (True = kept) of the weight's shape;
a masked entry has every factor at +0.0, so its collapsed weight is an exact zero.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dwf_core.factorize import factorized_tensors

Masks = dict[str, torch.Tensor]
Scores = dict[str, torch.Tensor]


def pruned_count(total: int, sparsity: float) -> int:
    """How many of ``total`` weights a sparsity S removes: round(S·total), so the achieved S is within 1/total."""
    return min(total, max(0, round(sparsity * total)))


def global_topk_mask(scores: Scores, sparsity: float) -> Masks:
    """Keep the largest scores over all tensors together, pruning exactly round(S·N) of N entries."""
    names = list(scores)
    flat = torch.cat([scores[n].detach().reshape(-1).double() for n in names]) if names else torch.zeros(0)
    keep = flat.numel() - pruned_count(flat.numel(), sparsity)
    kept = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if keep > 0:
        kept[torch.topk(flat, keep, sorted=False).indices] = True
    masks: Masks = {}
    offset = 0
    for n in names:
        size = scores[n].numel()
        masks[n] = kept[offset : offset + size].reshape(scores[n].shape).to(scores[n].device)
        offset += size
    return masks


def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero every masked weight in every factor (writing +0.0, so the sparse encoders see true zeros)."""
    with torch.no_grad():
        for t in factorized_tensors(model):
            mask = masks.get(t.name)
            if mask is None:
                continue
            for factor in t.factors():
                factor.masked_fill_(~mask.to(factor.device), 0.0)


def mask_sparsity(masks: Masks) -> float:
    """Fraction of masked (pruned) entries over all masks."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / total if total else 0.0


def cubic_sparsity(step: int, final: float, start_step: int, end_step: int, initial: float = 0.0) -> float:
    """Zhu & Gupta's schedule s_t = s_f + (s_i − s_f)(1 − (t − t0)/(t1 − t0))³: ``initial`` up to ``start_step``,
    ``final`` from ``end_step`` on."""
    if step <= start_step:
        return initial
    if step >= end_step:
        return final
    progress = (step - start_step) / (end_step - start_step)
    return final + (initial - final) * (1.0 - progress) ** 3


def pruning_window(total_steps: int, start: float, end: float, events: int) -> tuple[int, int, int]:
    """(t0, t1, interval) for pruning from ``start`` to ``end`` (fractions of ``total_steps``) in about ``events``
    steps; t0 < t1 ≤ total_steps."""
    first = math.floor(start * total_steps)
    last = min(total_steps, max(first + 1, math.ceil(end * total_steps)))
    interval = max(1, (last - first) // events)
    return first, last, interval


def pruning_due(steps_done: int, window: tuple[int, int, int]) -> bool:
    """Whether ``steps_done`` is one of the window's pruning steps (every interval after t0, and t1)."""
    start, end, interval = window
    return start < steps_done <= end and ((steps_done - start) % interval == 0 or steps_done == end)


def grow_masks(scores: Scores, masks: Masks, sparsity: float) -> Masks:
    """Masks at ``sparsity`` by score, keeping every entry ``masks`` already prunes pruned (the schedule only
    grows): pruned entries score −1, below any magnitude."""
    ranked = {}
    for name, score in scores.items():
        mask = masks.get(name)
        ranked[name] = score if mask is None else score.masked_fill(~mask, -1.0)
    return global_topk_mask(ranked, sparsity)


class GrowingMasks:
    """Masks that grow during training (``dwf_core.gradual_cut``, ``dwf_core.structured.unit_cut``): what the trainer
    calls (``after_step`` after every optimizer step, ``reset`` when training starts over) and their place in its
    checkpoints (``state_tensors`` under ``checkpoint_prefix``, ``load`` on resume), so a resumed run masks exactly
    as an uninterrupted one."""

    checkpoint_prefix: str

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.masks: Masks = {}
        self.events = 0

    def after_step(self, steps_done: int) -> None:
        """Grow the masks when a masking event is due, then apply them."""
        raise NotImplementedError

    def reset(self) -> None:
        """Training starts over (λ or divergence restart): no masks yet."""
        self.masks, self.events = {}, 0

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The masks, for a checkpoint."""
        return {f"{self.checkpoint_prefix}{name}": mask for name, mask in self.masks.items()}

    def load(self, tensors: dict[str, torch.Tensor], events: int) -> None:
        """Take the masks back from a checkpoint's tensors (those ``state_tensors`` wrote)."""
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        prefix = self.checkpoint_prefix
        self.masks = {
            key[len(prefix) :]: value.to(device=device, dtype=torch.bool)
            for key, value in tensors.items()
            if key.startswith(prefix)
        }
        self.events = events

"""Pruning masks over the tensors DWF factorizes, and a Trainer that keeps them applied.

Baselines train through the DWF ``Trainer`` at depth 1 (w = ω1, plain L2 decay), so a mask acts on the single
factor ``parametrizations.<attr>.original0``; collapse then yields the original classes and keys. The masks
themselves (dwf_core.masking) are dicts from state_dict name ("fc1.weight") to a bool tensor (True = kept).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dwf_core.errors import ConfigError
from dwf_core.factorize import FactorizedTensor, factorized_tensors
from dwf_core.masking import Masks, apply_masks
from dwf_core.train import Trainer


def depth_one_tensors(model: nn.Module) -> list[FactorizedTensor]:
    """The factorized tensors of a baseline model, which must all be depth 1 (w = ω1)."""
    tensors = factorized_tensors(model)
    if not tensors:
        raise ConfigError("model has no factorized tensors to prune", param="model")
    for t in tensors:
        if t.depth != 1:
            raise ConfigError(f"baselines prune depth-1 models; {t.name!r} has depth {t.depth}", param="depth")
    return tensors


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The (single) factor of every factorized tensor, i.e. the weight itself at depth 1, by name."""
    return {t.name: t.factors()[0] for t in depth_one_tensors(model)}


def layer_density(masks: Masks) -> dict[str, float]:
    """Kept fraction per tensor."""
    return {n: float(m.float().mean()) for n, m in masks.items()}


class MaskedTrainer(Trainer):
    """The DWF Trainer with masks re-applied after every optimizer step (so masked weights stay exactly 0).

    ``masks`` may be given up front (fine-tuning a pruned model), or built by ``make_masks(trainer)`` once the
    trainer has factorized the model and moved it to its device (pruning at init). Subclasses may change the
    masks during training in ``after_step``. Runs without checkpoints: masks are not part of them.
    """

    def __init__(
        self,
        *args: Any,
        masks: Masks | None = None,
        make_masks: Callable[[Trainer], Masks] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs["checkpoint_dir"] = None
        super().__init__(*args, **kwargs)
        self.masks: Masks = dict(masks or {})
        self.make_masks = make_masks
        # make_masks is a closure the other ranks of a DDP run could not receive: such a run trains in one process.
        self.distributable = make_masks is None

    def _prepare(self) -> None:
        super()._prepare()
        depth_one_tensors(self.model)
        if self.make_masks is not None:
            self.masks = self.make_masks(self)
        self.masks = {n: m.to(self.device) for n, m in self.masks.items()}
        apply_masks(self.model, self.masks)

    def _keep_initial_state(self) -> None:
        super()._keep_initial_state()
        self.initial_masks = dict(self.masks)

    def _restart(self) -> None:
        """A restart (non-finite loss) also starts from the initial masks, not the ones grown since."""
        super()._restart()
        self.masks = dict(self.initial_masks)

    def after_step(self, steps_done: int) -> None:
        """Called after each optimizer step with the number of steps done; default: re-apply the masks."""
        apply_masks(self.model, self.masks)

    def _step(self, xb: torch.Tensor, yb: torch.Tensor, lr: float) -> torch.Tensor:
        out = super()._step(xb, yb, lr)
        self.after_step(self.global_step + 1)
        return out


def finetune_epochs_for(epochs: int, finetune_epochs: int | None) -> int:
    """Fine-tuning epochs: the setting, else 10% of the training epochs, at least 1."""
    return finetune_epochs if finetune_epochs is not None else max(1, round(0.1 * epochs))

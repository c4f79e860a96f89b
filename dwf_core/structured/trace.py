"""One forward pass that finds the order in which layers run and which conv/linear feeds a BatchNorm directly.

A BatchNorm right after a layer undoes any scale on that layer's output: a gate there would be pushed to zero by its
decay without changing the function, and a small unit there is not an unimportant one. Such units are gated after
the BatchNorm instead (``gates.attach_gates``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass
class Trace:
    """Layer names in first-call order, and for a layer whose output goes straight into a BatchNorm, that norm's."""

    order: list[str] = field(default_factory=list)
    normalized_by: dict[str, str] = field(default_factory=dict)


def trace_layers(model: nn.Module, layers: dict[str, nn.Module], example: torch.Tensor) -> Trace:
    """Run ``model`` once on ``example`` (eval mode, no gradients) with hooks on ``layers`` and every affine
    BatchNorm; uncalled layers are left out of ``order``."""
    trace = Trace()
    produced: dict[int, str] = {}
    keep_alive: list[torch.Tensor] = []  # ids stay unique while the tensors live
    handles = []
    for name, module in layers.items():

        def record(_m: nn.Module, _i: Any, output: Any, name: str = name) -> None:
            if name not in trace.order:
                trace.order.append(name)
            if isinstance(output, torch.Tensor):
                keep_alive.append(output)
                produced[id(output)] = name

        handles.append(module.register_forward_hook(record))
    for bn_name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and module.affine:

            def consume(_m: nn.Module, inputs: Any, bn_name: str = bn_name) -> None:
                source = produced.get(id(inputs[0])) if inputs else None
                if source is not None:
                    trace.normalized_by.setdefault(source, bn_name)

            handles.append(module.register_forward_pre_hook(consume))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return trace

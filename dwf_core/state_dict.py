"""Loading plain tensor mappings (safetensors files, snapshots) into a model as its own state_dict would load.

``Module.state_dict()`` carries each submodule's version in a ``_metadata`` attribute that a dict of tensors (a
safetensors file, a copy) does not. Most modules ignore it; some refuse to load without it (torchvision's MNASNet:
"version should be set to 1 or 2 instead of None"). Tensors from files written from this very architecture get the
model's own versions.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn


def load_tensors(model: nn.Module, tensors: Mapping[str, torch.Tensor], *, strict: bool = True) -> None:
    """``model.load_state_dict(tensors, strict=strict)`` with the model's module versions where ``tensors`` has none."""
    state: OrderedDict[str, torch.Tensor] = OrderedDict(tensors)
    versions = getattr(tensors, "_metadata", None)
    if versions is None:
        versions = getattr(model.state_dict(keep_vars=True), "_metadata", None)
    if versions is not None:
        state._metadata = versions  # type: ignore[attr-defined]
    model.load_state_dict(state, strict=strict)

"""``timm:NAME``: any timm classifier as a randomly initialised architecture, never with downloaded weights.

timm resolves a name in three ways: a registry name (built locally), ``hf-hub:REPO`` (reads a config, and with
``pretrained=True`` the weights, from the Hugging Face Hub) and ``local-dir:PATH`` (reads a folder). Only the
first is offered: the name must match ``TIMM_NAME_PATTERN`` and be in ``timm.list_models()``, ``pretrained`` is
always False and no other timm argument comes from the user. The hub is also switched off while the model is
built, so a timm change that reached for it would fail instead of downloading.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import torch
from torch import nn

from dwf_core.errors import ModelError
from dwf_core.intake.limits import DEFAULT_LIMITS

TIMM_PREFIX = "timm:"
# Every timm registry name is lowercase letters, digits and "_" (39 characters at most in timm 1.0.31); the
# API keeps a copy of this pattern (api/schemas.py) so it can refuse a malformed name without importing timm.
TIMM_NAME_PATTERN = r"[a-z0-9_]{1,100}"
_NAME = re.compile(TIMM_NAME_PATTERN)
_FIND_HINT = "list them with `python -c \"import timm; print(timm.list_models('*resnet*'))\"`"


def _timm() -> ModuleType:
    """Import timm on first use: it costs about a second and only timm specs need it."""
    import timm

    return timm


def list_timm_models(pattern: str = "*") -> list[str]:
    """Return the timm architecture names matching the glob ``pattern`` (use each as ``timm:NAME``)."""
    names: list[str] = _timm().list_models(pattern)
    return names


def check_timm_name(name: str) -> None:
    """Refuse a ``timm:NAME`` whose NAME is malformed or not a timm architecture.

    Raises:
        ModelError: ``unknown_model``, with close matches and how to list the valid names.
    """
    spec = TIMM_PREFIX + name
    if not _NAME.fullmatch(name):
        base, dot, tag = name.partition(".")
        why = (
            f"drop the pretrained tag '.{tag}' (dwf never downloads weights; the architecture is timm:{base})"
            if dot and _NAME.fullmatch(base)
            else "NAME must be a timm architecture name: lowercase letters, digits and '_' (no hf-hub: or paths)"
        )
        raise ModelError(f"{spec!r} is not a timm model name: {why}; {_FIND_HINT}", code="unknown_model", param="model")
    timm = _timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        maybe = f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise ModelError(
            f"unknown timm model {spec!r}{maybe} The {len(timm.list_models())} timm architectures are valid as "
            f"timm:NAME; {_FIND_HINT}",
            code="unknown_model",
            param="model",
        )


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Put huggingface_hub in offline mode (env var and its already-read constant) for the block, then restore."""
    old_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    old_constant = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        setattr(constants, "HF_HUB_OFFLINE", True)  # noqa: B010 (a module attribute mypy cannot see)
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
        if constants is not None:
            setattr(constants, "HF_HUB_OFFLINE", old_constant)  # noqa: B010


def _parameters_on_meta(timm: ModuleType, name: str, kwargs: dict[str, Any]) -> int | None:
    """How many parameters the model would have, built on the meta device (no memory, no RNG work); None when a
    constructor needs real tensors."""
    try:
        with torch.device("meta"):
            model: nn.Module = timm.create_model(name, pretrained=False, **kwargs)
    except Exception:  # e.g. a constructor that reads a tensor's value: the real build decides
        return None
    return sum(p.numel() for p in model.parameters())


def build_timm_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int | None = None,
    img_size: tuple[int, int] | None = None,
    max_params: int = DEFAULT_LIMITS.max_params,
) -> nn.Module:
    """Build timm's ``name`` with random weights for ``num_classes`` outputs and ``in_channels`` inputs.

    Args:
        name: A timm architecture name (``timm.list_models()``), without the ``timm:`` prefix or a pretrained tag.
        num_classes: Output logits (timm puts a fresh classifier head of this size).
        in_channels: Input channels (timm adapts the stem); None keeps the model's default (3).
        img_size: (H, W) of the inputs; given to models with a fixed input size (ViTs and other transformers
            size their patch grid and position embeddings from it), ignored by size-agnostic ones (CNNs).
        max_params: Most parameters (elements) allowed; counted on the meta device before anything is allocated,
            so a giant architecture is refused without taking the worker's memory.

    Returns:
        The model in training mode.

    Raises:
        ModelError: ``unknown_model`` for a malformed or unknown name, ``model_build_failed`` when timm cannot
            build the architecture with these classes, channels and size, ``too_large`` over ``max_params``.
    """
    check_timm_name(name)
    timm = _timm()
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if in_channels is not None:
        kwargs["in_chans"] = in_channels
    cfg = timm.models.get_pretrained_cfg(name)
    if img_size is not None and cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = img_size
    with _hub_offline():
        planned = _parameters_on_meta(timm, name, kwargs)
        if planned is not None and planned > max_params:
            raise ModelError(
                f"{TIMM_PREFIX}{name} has {planned:,} parameters for this data, limit is {max_params:,}",
                code="too_large",
                param="model",
            )
        try:
            model: nn.Module = timm.create_model(name, pretrained=False, **kwargs)
        except Exception as exc:  # a model constructor may refuse a size or channel count with any exception
            asked = ", ".join(f"{k}={v}" for k, v in kwargs.items())
            raise ModelError(
                f"timm cannot build {TIMM_PREFIX}{name} with {asked}: {type(exc).__name__}: {exc}",
                code="model_build_failed",
                param="model",
            ) from exc
    built = sum(p.numel() for p in model.parameters())
    if built > max_params:  # a model the meta device could not build is counted here instead
        raise ModelError(
            f"{TIMM_PREFIX}{name} has {built:,} parameters for this data, limit is {max_params:,}",
            code="too_large",
            param="model",
        )
    return model.train()

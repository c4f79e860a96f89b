"""Hugging Face transformers classifiers built from an uploaded ``config.json``: offline, no remote code, one input.

A config names an architecture built into transformers (``model_type``); the model is built with the library's
own classes (``_from_config``), never from the Hub: the process is put in offline mode before transformers is
imported, ``auto_map`` (remote code), a pretrained backbone and quantization are refused (dwf_core.hf_config),
and the attention implementation is chosen here, not by the file. Weights come, when given, from the usual
safetensors path (dwf_core.intake.weights), whose keys are the model's own (``bert.encoder.layer.0…``).

The built model keeps dwf's single-input contract: it takes the dataset's one x tensor and returns plain logits.
Token datasets ((N, L) ids, or (N, 2, L) ids stacked on a 0/1 mask) get a sequence-classification head; image
datasets ((N, C, H, W) floats) an image-classification head.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwf_core.errors import ModelError
from dwf_core.hf_config import MAX_CONFIG_BYTES, parse_config
from dwf_core.intake.limits import DEFAULT_LIMITS, ModelLimits

TOKENS, IMAGES = "tokens", "images"
_HEADS = {TOKENS: "sequence classification", IMAGES: "image classification"}
# Config keys the file may not set: the attention/experts kernels (a kernels-community name is fetched from the
# Hub) and transformers' private fields; the dtype is forced to float32 below.
_DROPPED_KEYS = ("attn_implementation", "experts_implementation")
_LISTED = 12
# Wrapped classes, one per (transformers class, input kind), so that equal models share one type.
_CLASSES: dict[tuple[type[nn.Module], str], type[nn.Module]] = {}


def _transformers() -> Any:
    """Import transformers in offline mode: nothing in this process may reach the Hugging Face Hub."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import huggingface_hub.constants

    # Read at call time by huggingface_hub, so this also holds when transformers was imported before.
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    import transformers

    return transformers


def _clean(obj: Any) -> Any:
    """A copy of the config without private (``_…``) keys and kernel choices, in sub-configs too."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if not str(k).startswith("_") and k not in _DROPPED_KEYS}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _single_input(base: type[nn.Module], kind: str) -> type[nn.Module]:
    """A subclass of the transformers model whose forward takes dwf's one x tensor and returns the logits.

    A subclass rather than a wrapper module keeps the state_dict keys those of transformers, so a
    ``model.safetensors`` saved by transformers loads as weights and dwf's artifacts load back into transformers.
    """
    key = (base, kind)
    if key in _CLASSES:
        return _CLASSES[key]

    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_labels) for token x (N, L) / (N, 2, L) or image x (N, C, H, W)."""
        if kind == TOKENS:
            # Any non-zero mask entry counts as 1: ONNX export checks feed random integers in the data's range.
            ids, mask = (x, None) if x.dim() == 2 else (x[:, 0], (x[:, 1] != 0).to(torch.long))
            out = base.forward(self, input_ids=ids, attention_mask=mask)
        else:
            out = base.forward(self, pixel_values=x if x.dim() == 4 else x.unsqueeze(1))
        logits = out.logits if hasattr(out, "logits") else out[0]
        assert isinstance(logits, torch.Tensor)
        return logits

    cls = type(base.__name__, (base,), {"forward": forward, "__module__": __name__, "dwf_input": kind})
    _CLASSES[key] = cls
    return cls


def _read(path: Path) -> bytes:
    """The config file's bytes, reading at most one byte past the limit."""
    try:
        with path.open("rb") as fh:
            return fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ModelError(f"cannot read {path.name!r}: {exc.strerror}", code="not_found", param="model") from exc


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(sorted(names)[:_LISTED])
    return shown + (f" … ({len(names)} in all)" if len(names) > _LISTED else "")


def _model_class(tf: Any, config: Any, model_type: str, kind: str) -> type[nn.Module]:
    """The transformers class with the head ``kind`` needs, or ModelError ``hf_no_classification_head``."""
    from transformers.models.auto import modeling_auto

    prefix = "SEQUENCE" if kind == TOKENS else "IMAGE"
    mapping = getattr(modeling_auto, f"MODEL_FOR_{prefix}_CLASSIFICATION_MAPPING")
    names = getattr(modeling_auto, f"MODEL_FOR_{prefix}_CLASSIFICATION_MAPPING_NAMES")
    try:
        found = mapping[type(config)]
    except KeyError:
        data = "a token dataset (input_ids_*)" if kind == TOKENS else "an image dataset"
        raise ModelError(
            f"model_type {model_type!r} has no {_HEADS[kind]} model in transformers {tf.__version__}, which "
            f"{data} needs; model types with one: {_listing(list(names))}",
            code="hf_no_classification_head",
            param="model_type",
        ) from None
    cls = found[0] if isinstance(found, (list, tuple)) else found
    return _single_input(cls, kind)


def _check_inputs(config: Any, kind: str, input_shape: tuple[int, ...], max_token_id: int | None) -> None:
    """Refuse data the config cannot take, naming both sides (instead of an index error in the first forward)."""
    if kind == TOKENS:
        vocab = getattr(config, "vocab_size", None)
        if isinstance(vocab, int) and max_token_id is not None and max_token_id >= vocab:
            raise ModelError(
                f"the dataset has token id {max_token_id} but the config's vocab_size is {vocab}; ids must be "
                f"below vocab_size",
                code="vocab_mismatch",
                param="vocab_size",
            )
        positions = getattr(config, "max_position_embeddings", None)
        length = input_shape[-1]
        if isinstance(positions, int) and 0 < positions < length:  # XLNet's -1: no limit (relative positions)
            raise ModelError(
                f"the dataset's sequences have {length} tokens but the config's max_position_embeddings is {positions}",
                code="input_shape_mismatch",
                param="max_position_embeddings",
            )
        return
    if len(input_shape) not in (2, 3):
        raise ModelError(
            f"an image classification config needs images of shape (C, H, W) or (H, W); the dataset's samples "
            f"have shape {input_shape}",
            code="input_shape_mismatch",
            param="model",
        )
    channels = getattr(config, "num_channels", None)
    have = input_shape[0] if len(input_shape) == 3 else 1
    if isinstance(channels, int) and channels != have:
        raise ModelError(
            f"the config's num_channels is {channels} but the dataset's images have {have} channel(s) "
            f"(shape {input_shape})",
            code="input_shape_mismatch",
            param="num_channels",
        )


def build_hf_model(
    path: str | os.PathLike[str],
    *,
    num_classes: int,
    input_shape: Sequence[int],
    tokens: bool,
    max_token_id: int | None = None,
    limits: ModelLimits = DEFAULT_LIMITS,
) -> nn.Module:
    """Build a freshly initialised transformers classifier from a ``config.json``, offline and without remote code.

    Args:
        path: The config file (a JSON object with ``model_type``, as ``PretrainedConfig.save_pretrained`` writes).
        num_classes: Output classes (the config's ``num_labels``/``id2label`` are replaced).
        input_shape: Per-sample shape of the dataset's x.
        tokens: True for a token dataset (sequence classification), False for images (image classification).
        max_token_id: The largest token id in the data, checked against ``vocab_size``.
        limits: ``max_params`` bounds the model, counted on the meta device before any memory is allocated.

    Returns:
        A module (a subclass of the transformers class, same state_dict keys) mapping x to logits (N, num_classes).

    Raises:
        ModelError: the codes of dwf_core.hf_config.parse_config; ``hf_unknown_model_type``,
            ``hf_no_classification_head``, ``hf_config_invalid`` (transformers refused a value), ``too_large``,
            ``vocab_mismatch``, ``input_shape_mismatch``.
    """
    p = Path(path)
    raw = parse_config(_read(p), p.name)
    tf = _transformers()
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = raw["model_type"]
    if model_type not in CONFIG_MAPPING:
        raise ModelError(
            f"{p.name}: model_type {model_type!r} is not an architecture built into transformers {tf.__version__} "
            "(models from the Hub with their own code are not accepted)",
            code="hf_unknown_model_type",
            param="model_type",
        )
    kind = TOKENS if tokens else IMAGES
    try:
        config = CONFIG_MAPPING[model_type].from_dict(_clean(raw))
        config.num_labels = num_classes  # also resets id2label/label2id to the dataset's classes
    except Exception as exc:  # transformers validates values with ValueError, TypeError, AttributeError…
        raise ModelError(
            f"{p.name}: transformers refuses this {model_type} config: {type(exc).__name__}: {exc}",
            code="hf_config_invalid",
            param="model",
        ) from exc
    cls = _model_class(tf, config, model_type, kind)
    _check_inputs(config, kind, tuple(int(d) for d in input_shape), max_token_id)
    options: dict[str, Any] = {
        "dtype": torch.float32,
        # transformers' fast attention when the class has it; never a kernel fetched from the Hub.
        "attn_implementation": "sdpa" if getattr(cls, "_supports_sdpa", False) else "eager",
    }

    def build() -> nn.Module:
        try:
            model: nn.Module = cls._from_config(config, **options)  # type: ignore[attr-defined]
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(
                f"{p.name}: transformers could not build {cls.__name__}: {type(exc).__name__}: {exc}",
                code="hf_config_invalid",
                param="model",
            ) from exc
        return model

    with torch.device("meta"):
        probe = build()
    params = sum(t.numel() for t in probe.parameters())
    del probe
    if params > limits.max_params:
        raise ModelError(
            f"{p.name}: the {model_type} model has {params:,} parameters, more than the limit of {limits.max_params:,}",
            code="too_large",
            param="model",
        )
    model = build()
    _read_last_position_without_pad(model, kind)
    model.train()
    return model


# Decoder-style sequence classifiers (GPT-2, Llama, Mistral, …) take the logits at each sequence's last token that
# is not ``pad_token_id``, and refuse every batch of more than one sequence when the config names no pad token, as
# GPT-2's and Llama's own configs do not. Such a model gets this id, which no sequence holds, after it is built (so
# no embedding treats it as padding): it reads every sequence at its last position. A config that names its pad
# token keeps it.
NO_PAD_TOKEN = -1


def _read_last_position_without_pad(model: nn.Module, kind: str) -> None:
    config = getattr(model, "config", None)
    if kind == TOKENS and config is not None and hasattr(config, "pad_token_id") and config.pad_token_id is None:
        config.pad_token_id = NO_PAD_TOKEN

"""Hugging Face ``config.json`` model files: the bounded JSON check shared by upload sniffing and model intake.

Light on purpose (json only): the API imports it without torch or transformers. What needs transformers (is the
``model_type`` one this install knows, does it have the head the dataset needs) is checked by
``dwf_core.intake.hf_source`` in the worker.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from dwf_core.errors import ModelError

FORMAT_HF_CONFIG = "hf-config"
# Real configs are a few KB; ImageNet-21k ViT's, with 21,843 id2label entries, is under 1 MiB.
MAX_CONFIG_BYTES = 4 * 1024**2
_BOM = b"\xef\xbb\xbf"
# Keys that make transformers fetch code or weights from the Hub (or another site) or change what a weight is.
# auto_map names remote Python classes (trust_remote_code); a pretrained backbone is downloaded (timm, torch.hub);
# a quantization_config turns Linear weights into integer codes that cannot be factorized.
_REMOTE_CODE_KEYS = ("auto_map",)
_UNSUPPORTED_KEYS = ("use_pretrained_backbone", "quantization_config")


def looks_like_json_object(head: bytes) -> bool:
    """True when the first bytes of a file start a JSON object: ``{`` (after a BOM or whitespace), then ``"``/``}``."""
    text = head.removeprefix(_BOM).lstrip(b" \t\r\n")
    if not text.startswith(b"{"):
        return False
    rest = text[1:].lstrip(b" \t\r\n")
    # A head that ends inside the leading whitespace cannot tell; a JSON object's next token is a key or "}".
    return not rest or rest[:1] in (b'"', b"}")


def _walk(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted key path, value) of nested dicts (sub-configs such as text_config, vision_config)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            where = f"{path}.{key}" if path else str(key)
            yield where, value
            yield from _walk(value, where)
    elif isinstance(obj, list):
        for value in obj:
            yield from _walk(value, path)


def parse_config(data: bytes, name: str = "config.json") -> dict[str, Any]:
    """Parse and check a ``config.json`` without transformers: size, JSON object, ``model_type``, no remote code.

    Args:
        data: The file's bytes.
        name: The file name, for messages.

    Returns:
        The config as a dict.

    Raises:
        ModelError: ``too_large`` (over MAX_CONFIG_BYTES), ``corrupt_file`` (not UTF-8 JSON, or not an object),
            ``hf_config_invalid`` (no ``model_type`` string), ``remote_code_refused`` (``auto_map``: code from
            the Hub), ``hf_config_unsupported`` (a pretrained backbone to download, or a quantization_config);
            ``param`` names the key.
    """
    if len(data) > MAX_CONFIG_BYTES:
        raise ModelError(
            f"{name}: {len(data)} bytes, more than the {MAX_CONFIG_BYTES} bytes a model config.json may have",
            code="too_large",
            param="model",
        )
    try:
        obj = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelError(f"{name}: not valid UTF-8 JSON ({exc})", code="corrupt_file", param="model") from exc
    if not isinstance(obj, dict):
        raise ModelError(
            f"{name}: a JSON {type(obj).__name__}; a Hugging Face config.json is a JSON object",
            code="corrupt_file",
            param="model",
        )
    model_type = obj.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ModelError(
            f'{name}: no "model_type" string; a Hugging Face config.json names its architecture, e.g. '
            '"model_type": "bert" (as PretrainedConfig.save_pretrained writes it)',
            code="hf_config_invalid",
            param="model_type",
        )
    for where, value in _walk(obj):
        key = where.rsplit(".", 1)[-1]
        if key in _REMOTE_CODE_KEYS:
            raise ModelError(
                f"{name}: {where!r} points to model code on the Hugging Face Hub, which is never downloaded or "
                "run (no trust_remote_code); upload the config of an architecture built into transformers",
                code="remote_code_refused",
                param=where,
            )
        if key in _UNSUPPORTED_KEYS and value not in (None, False, {}):
            raise ModelError(
                f"{name}: {where!r} is set; "
                + (
                    "a pretrained backbone would be downloaded, which the service never does (set it to false "
                    "and upload the weights as .safetensors)"
                    if key == "use_pretrained_backbone"
                    else "quantized weights cannot be factorized; upload the config without it"
                ),
                code="hf_config_unsupported",
                param=where,
            )
    return obj

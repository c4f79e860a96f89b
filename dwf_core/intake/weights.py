"""Load safetensors weights into a model after validating every name, shape, dtype and value."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from dwf_core.errors import ModelError, WeightsError
from dwf_core.intake.formats import (
    ACCEPTED_FORMATS_HINT,
    FORMAT_SAFETENSORS,
    FORMAT_UNKNOWN,
    detect_model_format,
)
from dwf_core.intake.limits import DEFAULT_LIMITS, ModelLimits
from dwf_core.intake.safetensors_header import FLOAT_DTYPES, SafetensorsHeader, read_safetensors_header
from dwf_core.state_dict import load_tensors

SAFETENSORS_TO_TORCH: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_LISTED = 20


def _listing(names: Iterable[str]) -> str:
    """Format up to ``_MAX_LISTED`` names, saying how many more were left out."""
    items = sorted(names)
    shown = ", ".join(repr(n) for n in items[:_MAX_LISTED])
    return shown + (f" … and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _prefix_hint(missing: set[str], unexpected: set[str]) -> str:
    """Suggest a key prefix to add or strip when it would make the two key sets line up exactly."""
    if not missing or not unexpected or len(missing) != len(unexpected):
        return ""
    probe = next(iter(unexpected))
    for m in missing:
        if probe.endswith(m) and {probe[: -len(m)] + k for k in missing} == unexpected:
            return f" (the file's keys carry an extra prefix {probe[: -len(m)]!r}; strip it when saving)"
        if m.endswith(probe) and {m[: -len(probe)] + k for k in unexpected} == missing:
            return f" (the model's keys carry a prefix {m[: -len(probe)]!r} the file lacks)"
    return ""


def _tied_partners(state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Map each state-dict key to the other keys viewing the very same tensor (tied weights)."""
    groups: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], list[str]] = {}
    for key, t in state.items():
        if t.numel() == 0:
            continue
        sig = (t.untyped_storage().data_ptr(), int(t.storage_offset()), tuple(t.shape), tuple(t.stride()))
        groups.setdefault(sig, []).append(key)
    return {k: [o for o in keys if o != k] for keys in groups.values() for k in keys}


def _check_keys(header: SafetensorsHeader, state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Compare key sets strictly; return model keys to fill from a tied partner that the file holds."""
    in_file, in_model = set(header.tensors), set(state)
    missing, unexpected = in_model - in_file, in_file - in_model
    # safetensors' save_model drops all but one name of tied tensors; accept that, nothing else.
    partners = _tied_partners(state)
    fill = {}
    for key in list(missing):
        source = next((p for p in partners.get(key, []) if p in in_file), None)
        if source is not None:
            fill[key] = source
            missing.discard(key)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing from the file ({len(missing)}): {_listing(missing)}")
        if unexpected:
            parts.append(f"not in the model ({len(unexpected)}): {_listing(unexpected)}")
        raise WeightsError(
            "weights do not match the model's state_dict keys; " + "; ".join(parts) + _prefix_hint(missing, unexpected),
            code="missing_keys" if missing else "unexpected_keys",
            param=sorted(missing or unexpected)[0],
        )
    return fill


def _check_shapes_and_dtypes(header: SafetensorsHeader, state: dict[str, torch.Tensor]) -> None:
    """Require exact shapes, and identical dtypes unless both sides are floating point."""
    bad_shapes = [
        (name, entry.shape, tuple(state[name].shape))
        for name, entry in header.tensors.items()
        if entry.shape != tuple(state[name].shape)
    ]
    if bad_shapes:
        shown = "; ".join(f"{n!r}: file {list(f)} vs model {list(m)}" for n, f, m in bad_shapes[:_MAX_LISTED])
        raise WeightsError(
            f"{len(bad_shapes)} tensor shape(s) differ: {shown}",
            code="shape_mismatch",
            param=bad_shapes[0][0],
        )
    for name, entry in header.tensors.items():
        file_dtype, model_dtype = SAFETENSORS_TO_TORCH[entry.dtype], state[name].dtype
        if file_dtype != model_dtype and not (entry.dtype in FLOAT_DTYPES and model_dtype.is_floating_point):
            raise WeightsError(
                f"tensor {name!r} is {entry.dtype} in the file but {model_dtype} in the model; only floating "
                "point tensors are cast",
                code="dtype_mismatch",
                param=name,
            )


def load_weights(model: nn.Module, path: str | os.PathLike[str], *, limits: ModelLimits = DEFAULT_LIMITS) -> None:
    """Load a ``.safetensors`` file into ``model`` strictly, refusing anything that does not fit exactly.

    The header is parsed and validated by our own bounded parser before the safetensors library reads
    the file; keys must match ``model.state_dict()`` exactly (tied weights saved once are accepted),
    shapes must be equal, floating tensors are cast to the model's dtype and must be finite.

    Args:
        model: The architecture to fill; its parameters and buffers are overwritten in place.
        path: A safetensors file.
        limits: Bounds on file size, header size, tensor count and total elements.

    Raises:
        WeightsError: ``unsupported_format`` (not safetensors: pickle, TorchScript, ONNX…), ``too_large``,
            ``corrupt_file``, ``dtype_not_allowed``, ``missing_keys``, ``unexpected_keys``,
            ``shape_mismatch``, ``dtype_mismatch``, ``non_finite``, ``not_found``.
    """
    p = Path(path)
    try:
        found = detect_model_format(p)
    except ModelError as exc:
        raise WeightsError(exc.message, code=exc.code, param=exc.param) from exc
    # "unknown" goes on to the header parser, whose error says what is wrong with the header.
    if found not in (FORMAT_SAFETENSORS, FORMAT_UNKNOWN):
        raise WeightsError(
            f"{p.name!r} is not a safetensors file (detected: {found}); weights must be .safetensors "
            f"({ACCEPTED_FORMATS_HINT})",
            code="unsupported_format",
            param="path",
        )
    header = read_safetensors_header(p, limits=limits)
    state = model.state_dict()
    fill = _check_keys(header, state)
    _check_shapes_and_dtypes(header, state)

    loaded: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            for name, entry in header.tensors.items():
                tensor: torch.Tensor = f.get_tensor(name)
                # The library re-parsed the file; its view must agree with the one we validated.
                if tuple(tensor.shape) != entry.shape or tensor.dtype != SAFETENSORS_TO_TORCH[entry.dtype]:
                    raise WeightsError(
                        f"tensor {name!r} read back as {tensor.dtype}{list(tensor.shape)}, header said "
                        f"{entry.dtype}{list(entry.shape)}",
                        code="corrupt_file",
                        param=name,
                    )
                target = state[name].dtype
                if tensor.dtype != target:
                    tensor = tensor.to(target)
                if tensor.is_floating_point():
                    bad = int((~torch.isfinite(tensor)).sum())
                    if bad:
                        cast = f" after casting {entry.dtype} to {target}" if entry.dtype in FLOAT_DTYPES else ""
                        raise WeightsError(
                            f"tensor {name!r} has {bad} NaN/inf value(s){cast}; weights must be finite",
                            code="non_finite",
                            param=name,
                        )
                loaded[name] = tensor
    except SafetensorError as exc:
        raise WeightsError(f"safetensors could not read {p.name!r}: {exc}", code="corrupt_file", param="path") from exc
    for key, source in fill.items():
        loaded[key] = loaded[source]
    load_tensors(model, loaded)

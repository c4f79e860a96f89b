"""Write the artifacts of a sparsified model: dense and sparse safetensors, ONNX, JSON reports.

Every writer is atomic: it writes a hidden temporary file next to the destination and ``os.replace``-s
it into place, so a reader never sees a half-written artifact and a failed write leaves nothing behind.
Nothing here uses pickle. The sparse file format is documented in ``dwf_core.sparse_format``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import uuid
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from dwf_core.errors import ExportError
from dwf_core.sparse_format import (
    CORRUPT,
    SparseFileStats,
    TensorEncoding,
    bound_bytes,
    build_metadata,
    decode_tensor,
    encode_tensor,
    expected_keys,
    parse_metadata,
)

__all__ = [
    "OnnxExportResult",
    "SparseFileStats",
    "TensorEncoding",
    "export_onnx",
    "load_sparse",
    "save_dense",
    "save_sparse",
    "write_json_atomic",
]

PathLike = str | os.PathLike[str]
_REASON_MAX_CHARS = 2000
_CHECK_BATCH = 3


# --------------------------------------------------------------------------------------------- files


def _temp_path(final: Path) -> Path:
    """A hidden, unique sibling of ``final``; same directory so ``os.replace`` is an atomic rename."""
    return final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.tmp")


def _fsync(path: Path) -> None:
    """Flush a file (or directory) to disk so the rename never publishes an empty file after a crash."""
    flags = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # best effort: some filesystems refuse to open directories
    try:
        os.fsync(fd)
    except OSError:
        pass  # durability is a bonus; a filesystem without fsync must not fail the export
    finally:
        os.close(fd)


def _discard(tmp: Path) -> None:
    """Remove a temporary file if it exists; never raise (it runs while another error propagates)."""
    # OSError beyond "missing", e.g. the parent is not a directory: then the file cannot exist either.
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def _publish(tmp: Path, final: Path) -> None:
    """Atomically move a finished temporary file to its destination."""
    _fsync(tmp)
    os.replace(tmp, final)
    _fsync(final.parent)


@contextmanager
def _atomic_target(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on any error it is removed.

    Raises:
        ExportError: ``write_failed`` (param = the destination) when the file system refuses the write.
    """
    final = Path(path)
    tmp = _temp_path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        _publish(tmp, final)
    except OSError as exc:
        raise ExportError(f"cannot write {final}: {exc}", code="write_failed", param=str(final)) from exc
    finally:
        _discard(tmp)


# --------------------------------------------------------------------------------------------- dense


def save_dense(model: nn.Module, path: PathLike, *, metadata: Mapping[str, str] | None = None) -> int:
    """Save ``model.state_dict()`` as a plain safetensors file.

    Every tensor is saved as a contiguous CPU clone, so tied/shared parameters are written once per key
    and the file loads with ``safetensors.torch.load_file`` + ``model.load_state_dict(strict=True)``.

    Args:
        model: The (collapsed) model.
        path: Destination file; parent directories are created.
        metadata: Extra str -> str safetensors metadata (``format`` is always "pt").

    Returns:
        Bytes written.

    Raises:
        ExportError: ``unsupported_dtype`` (param = the key) for a non-tensor state entry or a dtype
            safetensors cannot store, ``write_failed`` when the file cannot be written.
    """
    tensors: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor) or value.is_meta:
            raise ExportError(
                f"state entry {name!r} is not a materialized tensor and cannot be saved",
                code="unsupported_dtype",
                param=name,
            )
        # clone(): safetensors refuses tensors sharing storage (tied weights, views into a flat buffer).
        tensors[name] = value.detach().to("cpu").clone(memory_format=torch.contiguous_format)
    with _atomic_target(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={**(metadata or {}), "format": "pt"})
        except (SafetensorError, ValueError, TypeError, KeyError) as exc:
            raise ExportError(
                f"safetensors cannot store this state dict: {exc}", code="unsupported_dtype", param=str(path)
            ) from exc
    return Path(path).stat().st_size


# -------------------------------------------------------------------------------------------- sparse


def save_sparse(
    state: Mapping[str, torch.Tensor] | nn.Module,
    path: PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
) -> SparseFileStats:
    """Save tensors in the dwf-sparse format, each with its smallest encoding (dense, bitmask or csr).

    Args:
        state: A state dict, or a module whose ``state_dict()`` is saved.
        path: Destination file; parent directories are created.
        metadata: Extra str -> str safetensors metadata (``format``, ``version``, ``tensors`` are reserved).

    Returns:
        File size, per-tensor encodings, total nnz/numel and ``bound_bytes`` (Σ nnz·itemsize + ⌈numel/8⌉).

    Raises:
        ExportError: ``invalid_tensor_name``, ``unsupported_dtype`` (param = the tensor name),
            ``invalid_metadata`` (param = the key) or ``write_failed``.
    """
    tensors = state.state_dict() if isinstance(state, nn.Module) else state
    entries: dict[str, torch.Tensor] = {}
    infos: list[TensorEncoding] = []
    bound = 0
    for name, tensor in tensors.items():
        encoded = encode_tensor(name, tensor)
        entries.update(encoded.entries)
        info = encoded.info
        infos.append(info)
        bound += bound_bytes(info.nnz, info.numel, tensor.element_size())
    header = build_metadata(infos, metadata)
    with _atomic_target(path) as tmp:
        save_file(entries, str(tmp), metadata=header)
    return SparseFileStats(
        file_bytes=Path(path).stat().st_size,
        tensors=infos,
        nnz=sum(i.nnz for i in infos),
        numel=sum(i.numel for i in infos),
        bound_bytes=bound,
    )


def load_sparse(path: PathLike, *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a dwf-sparse file back to dense tensors, bit for bit, validating every stored array.

    Args:
        path: A file written by ``save_sparse`` (or any writer following the documented format).
        device: Where the returned tensors live.

    Returns:
        The dense tensors, keyed and ordered as they were saved.

    Raises:
        ExportError: ``file_not_found`` (param = the path), ``invalid_device`` (param = "device") or
            ``corrupt_sparse_file`` (param = the tensor name, the metadata key or the path) when the file
            is not valid dwf-sparse: wrong format/version, a missing or unexpected key, inconsistent
            lengths, out-of-range indices or an unsupported dtype.
    """
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ExportError(f"invalid device {device!r}: {exc}", code="invalid_device", param="device") from exc
    source = Path(path)
    if not source.is_file():
        raise ExportError(f"no sparse file at {source}", code="file_not_found", param=str(source))
    try:
        with safe_open(str(source), framework="pt", device="cpu") as handle:
            specs = parse_metadata(handle.metadata())
            needed = expected_keys(specs)
            present = set(handle.keys())
            for key, owner in needed.items():
                if key not in present:
                    raise ExportError(f"tensor {owner!r}: key {key!r} is missing", code=CORRUPT, param=owner)
            unexpected = sorted(present - needed.keys())
            if unexpected:
                raise ExportError(
                    f"unexpected key {unexpected[0]!r} in a dwf-sparse file",
                    code=CORRUPT,
                    param=unexpected[0],
                )
            out: dict[str, torch.Tensor] = {}
            for spec in specs:
                out[spec.name] = decode_tensor(spec, handle.get_tensor).to(target)
            return out
    except SafetensorError as exc:
        raise ExportError(
            f"{source} is not a readable safetensors file: {exc}", code=CORRUPT, param=str(source)
        ) from exc


# ---------------------------------------------------------------------------------------------- onnx


@dataclass
class OnnxExportResult:
    """Outcome of ``export_onnx``; ``exported=False`` comes with a human-readable ``reason``."""

    exported: bool
    path: str | None
    bytes: int
    max_abs_diff: float | None
    reason: str | None
    opset: int

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return {
            "exported": self.exported,
            "path": self.path,
            "bytes": self.bytes,
            "max_abs_diff": self.max_abs_diff,
            "reason": self.reason,
            "opset": self.opset,
        }


def _random_batch(example: torch.Tensor, batch: int) -> torch.Tensor:
    """A seeded random batch shaped like ``example`` per sample (floats ~ N(0,1), ints in its range)."""
    generator = torch.Generator().manual_seed(0)
    shape = (batch, *example.shape[1:])
    if example.dtype.is_floating_point:
        sample = torch.randn(shape, generator=generator).to(example.dtype)
    elif example.dtype == torch.bool:
        sample = torch.randint(0, 2, shape, generator=generator).bool()
    else:
        # Integer inputs are usually ids/indices: stay in the example's range so lookups stay valid.
        low, high = int(example.min()), int(example.max())
        sample = torch.randint(low, high + 1, shape, generator=generator).to(example.dtype)
    return sample.to(example.device)


def _as_arrays(output: Any) -> list[np.ndarray]:
    """The model's output (a tensor or a tuple/list of tensors) as float64 numpy arrays."""
    items = list(output) if isinstance(output, (tuple, list)) else [output]
    arrays: list[np.ndarray] = []
    for item in items:
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"model output of type {type(item).__name__} cannot be compared")
        arrays.append(item.detach().to("cpu", torch.float64).numpy())
    return arrays


def _max_abs_diff(expected: np.ndarray, actual: np.ndarray) -> float:
    """Largest |expected − actual|; equal infinities and NaN-vs-NaN count as 0, a shape mismatch as inf."""
    if expected.shape != actual.shape:
        return math.inf
    ref = expected.astype(np.float64)
    got = np.asarray(actual).astype(np.float64)
    with np.errstate(invalid="ignore"):
        same = (ref == got) | (np.isnan(ref) & np.isnan(got))
        diff = np.where(same, 0.0, np.abs(ref - got))
    diff = np.nan_to_num(diff, nan=math.inf)
    return float(diff.max()) if diff.size else 0.0


def _compare_with_onnxruntime(model: nn.Module, example_input: torch.Tensor, onnx_path: Path) -> tuple[float, float]:
    """Run the ONNX file and the model on the example and on a random batch.

    Returns:
        (max abs difference over all outputs, max(1, max |PyTorch output|)).
    """
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(onnx_path))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's warnings are noise for a one-off check
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    input_names = {i.name for i in session.get_inputs()}
    worst, scale = 0.0, 1.0
    for x in (example_input, _random_batch(example_input, _CHECK_BATCH)):
        with torch.no_grad():
            expected = _as_arrays(model(x))
        # An input the graph never reads is pruned by the exporter; feed only what the session declares.
        feeds = {"input": x.detach().cpu().numpy()} if "input" in input_names else {}
        actual = session.run(None, feeds)
        if len(actual) != len(expected):
            raise RuntimeError(f"ONNX graph has {len(actual)} outputs, PyTorch returned {len(expected)}")
        for ref, got in zip(expected, actual, strict=True):
            worst = max(worst, _max_abs_diff(ref, np.asarray(got)))
            finite = np.abs(ref[np.isfinite(ref)])
            if finite.size:
                scale = max(scale, float(finite.max()))
    return worst, scale


def _onnx2torch_export_shim() -> None:
    """Let onnx2torch's modules (Gather, Shape, Squeeze, Reduce…) find the export opset while they are exported.

    They read ``torch.onnx.symbolic_helper.GLOBALS``. onnx2torch binds whatever ``torch.onnx.symbolic_helper`` is
    when it is imported: torch's internal module (which has GLOBALS), or, once anything imported the
    ``torch.onnx.symbolic_helper`` backward-compatibility module (torchvision does), that module, which lacks it;
    then re-exporting an ONNX graph with a Gather (every token model) failed depending on import order.
    """
    # The backward-compatibility module itself (sys.modules), whichever one torch.onnx's attribute names now.
    compat = importlib.import_module("torch.onnx.symbolic_helper")
    if not hasattr(compat, "GLOBALS"):
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

        compat.GLOBALS = GLOBALS  # type: ignore[attr-defined]


def _failure(reason: str, opset: int, max_abs_diff: float | None = None) -> OnnxExportResult:
    """An ``exported=False`` result with a bounded reason."""
    return OnnxExportResult(
        exported=False,
        path=None,
        bytes=0,
        max_abs_diff=max_abs_diff,
        reason=reason[:_REASON_MAX_CHARS],
        opset=opset,
    )


@contextmanager
def _without_attention_fast_path() -> Iterator[None]:
    """nn.MultiheadAttention / TransformerEncoderLayer in eval mode under no_grad call one fused kernel
    (``aten::_native_multi_head_attention``) that has no ONNX conversion (torchvision's ViTs); off, they trace as
    the plain ops they equal."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


@contextmanager
def onnx_log_as_asked() -> Iterator[None]:
    """The TorchScript exporter's ONNX log stays off unless it was on before.

    torch's ``setup_onnx_logging`` tests ``_C._jit_is_onnx_log_enabled`` without calling it (a function is always
    true), so every export turns the C++ ONNX log on and leaves it on: a failed export then prints the whole traced
    graph to stdout ("Torch IR graph at exception", megabytes for a ResNet in a worker's log), and so does every later
    failure in the process. Its fixed twin is used while we export; the log's state is restored afterwards. Public:
    the benchmarks that export users' models with torch.onnx directly (benchmarks/suite_models.py) use it too.
    """
    from torch.onnx._internal.torchscript_exporter import utils as ts_utils

    was_enabled = bool(torch._C._jit_is_onnx_log_enabled())
    original = getattr(ts_utils, "setup_onnx_logging", None)

    @contextmanager
    def setup_onnx_logging(verbose: bool) -> Iterator[None]:
        enabled = bool(torch._C._jit_is_onnx_log_enabled())
        torch._C._jit_set_onnx_log_enabled(enabled or bool(verbose))
        try:
            yield
        finally:
            torch._C._jit_set_onnx_log_enabled(enabled)

    if original is not None:
        ts_utils.setup_onnx_logging = setup_onnx_logging
    try:
        yield
    finally:
        if original is not None:
            ts_utils.setup_onnx_logging = original
        torch._C._jit_set_onnx_log_enabled(was_enabled)


def _torchscript_export(model: nn.Module, example_input: torch.Tensor, tmp: Path, opset: int) -> None:
    with warnings.catch_warnings(), torch.no_grad(), _without_attention_fast_path(), onnx_log_as_asked():
        # The TorchScript exporter is chosen on purpose (dynamo=False); its deprecation is known.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
        _onnx2torch_export_shim()
        torch.onnx.export(
            model,
            (example_input,),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


def _retry_with_eager_attention(model: nn.Module, example_input: torch.Tensor, tmp: Path, opset: int) -> bool:
    """Export a transformers model again with its attention written out as matmuls; True if that worked.

    The TorchScript exporter cannot convert ``scaled_dot_product_attention`` with grouped key/value heads
    (Mistral, Qwen2, Gemma, Llama configs with ``num_key_value_heads``); transformers' "eager" attention computes
    the same function with plain ops. The model's own attention implementation is restored afterwards.
    """
    config = getattr(model, "config", None)
    switch = getattr(model, "set_attn_implementation", None)
    current = getattr(config, "_attn_implementation", None)
    if not callable(switch) or current in (None, "eager"):
        return False
    try:
        switch("eager")
    except Exception:  # a model class without an eager path keeps the first failure
        return False
    try:
        _torchscript_export(model, example_input, tmp, opset)
        return True
    except Exception:
        return False
    finally:
        switch(current)


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: PathLike,
    *,
    opset: int = 17,
    check: bool = True,
    atol: float = 1e-4,
) -> OnnxExportResult:
    """Export the model to ONNX (TorchScript exporter, dynamic batch axis) and verify it with onnxruntime.

    The graph takes ``input`` and returns ``logits``, both with a dynamic axis 0. With ``check`` the file
    is validated by ``onnx.checker`` and run by onnxruntime (CPU) on ``example_input`` and on a random
    batch of 3; it is rejected if max |ONNX − PyTorch| > ``atol · max(1, max |PyTorch output|)``. The
    model is run in eval mode and its train/eval mode restored afterwards. A failure never leaves a file:
    the export goes to a temporary file that only replaces ``path`` once everything passed.

    Args:
        model: The (collapsed) model.
        example_input: One input batch, batch axis first.
        path: Destination ``.onnx`` file; parent directories are created.
        opset: ONNX opset version.
        check: Verify with onnxruntime (recommended).
        atol: Tolerance relative to the output magnitude (see above).

    Returns:
        ``exported=True`` with path, bytes and ``max_abs_diff`` (None without ``check``), or
        ``exported=False`` with a ``reason`` when the exporter or the check failed.

    Raises:
        ExportError: ``invalid_example_input`` (param = "example_input") when it is not a tensor with a
            batch axis; ``write_failed`` (param = the path) when the file system refuses the write.
    """
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1:
        raise ExportError(
            "example_input must be a tensor with a leading batch axis",
            code="invalid_example_input",
            param="example_input",
        )
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot write {final}: {exc}", code="write_failed", param=str(final)) from exc
    tmp = _temp_path(final)
    was_training = model.training
    model.eval()
    try:
        try:
            _torchscript_export(model, example_input, tmp, opset)
        except Exception as exc:  # the exporter raises many unrelated types; any of them means "no export"
            if not _retry_with_eager_attention(model, example_input, tmp, opset):
                return _failure(f"torch.onnx.export failed: {type(exc).__name__}: {exc}", opset)
        if not tmp.is_file():
            return _failure("torch.onnx.export wrote no file", opset)
        max_diff: float | None = None
        if check:
            try:
                max_diff, scale = _compare_with_onnxruntime(model, example_input, tmp)
            except Exception as exc:  # checker, session creation and run errors all mean "not verified"
                return _failure(f"onnxruntime check failed: {type(exc).__name__}: {exc}", opset)
            tolerance = atol * scale
            if not max_diff <= tolerance:
                return _failure(
                    f"ONNX output differs from PyTorch by {max_diff:.3g} > tolerance {tolerance:.3g} "
                    "(data-dependent Python control flow or a mis-exported op?)",
                    opset,
                    max_abs_diff=max_diff,
                )
        try:
            _publish(tmp, final)
        except OSError as exc:
            # An I/O failure says nothing about the model's exportability: raise instead of exported=False.
            raise ExportError(f"cannot write {final}: {exc}", code="write_failed", param=str(final)) from exc
        return OnnxExportResult(
            exported=True,
            path=str(final),
            bytes=final.stat().st_size,
            max_abs_diff=max_diff,
            reason=None,
            opset=opset,
        )
    finally:
        _discard(tmp)
        model.train(was_training)


# ---------------------------------------------------------------------------------------------- json


def _json_safe(obj: Any) -> Any:
    """Copy of ``obj`` with non-finite floats as None and numpy scalars/tuples as plain JSON types."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {key: _json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(value) for value in obj]
    return obj


def write_json_atomic(obj: Any, path: PathLike) -> None:
    """Write ``obj`` as indented JSON, atomically; NaN and ±inf become null (JSON has no such numbers).

    Args:
        obj: Dicts, lists, tuples, str, int, float, bool, None and numpy scalars.
        path: Destination file; parent directories are created.

    Raises:
        ExportError: ``not_json_serializable`` (param = the path) for other types, ``write_failed``.
    """
    try:
        text = json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ExportError(f"cannot write {path} as JSON: {exc}", code="not_json_serializable", param=str(path)) from exc
    with _atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8")

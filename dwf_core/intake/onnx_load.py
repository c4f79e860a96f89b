"""Bounded ONNX loading and conversion to a torch GraphModule via onnx2torch."""

from __future__ import annotations

import math
import os
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx
import onnxscript.optimizer
from google.protobuf.message import DecodeError
from onnx import ModelProto, TensorProto
from onnx2torch import convert as onnx2torch_convert
from onnx2torch.node_converters.registry import get_converter
from onnx2torch.onnx_node import OnnxNode
from torch import fx, nn

from dwf_core.errors import ModelError
from dwf_core.intake.formats import ACCEPTED_FORMATS_HINT, FORMAT_SAFETENSORS, detect_model_format, refuse_unsafe
from dwf_core.intake.limits import DEFAULT_LIMITS, ModelLimits
from dwf_core.intake.onnx_converters import register_extra_converters
from dwf_core.intake.onnx_external import all_tensors, count_nodes, inline_external_data
from dwf_core.intake.onnx_normalize import normalize_for_onnx2torch
from dwf_core.intake.onnx_trainable import promote_initializers
from dwf_core.intake.onnx_verify import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    check_batch_independence,
    compare_with_onnxruntime,
)

# Failures that a constant-folded, simplified graph may not have.
_RETRYABLE_CODES = frozenset(
    {"onnx_unsupported_op", "onnx_verification_failed", "onnx_conversion_mismatch", "onnx_batch_dependent"}
)
_SINGLE_FILE_HINT = (
    "re-save it as one file, e.g. torch.onnx.export(..., external_data=False) or "
    "onnx.save_model(onnx.load(path), out_path, save_as_external_data=False)"
)


def _check_bounds(model: ModelProto, limits: ModelLimits) -> None:
    """Refuse graphs with too many nodes, initializers or parameters."""
    nodes = count_nodes(model.graph) + sum(len(f.node) for f in model.functions)
    if nodes > limits.max_onnx_nodes:
        raise ModelError(f"graph has {nodes} nodes, limit is {limits.max_onnx_nodes}", code="too_large", param="path")
    count = len(model.graph.initializer) + len(model.graph.sparse_initializer)
    if count > limits.max_tensors:
        raise ModelError(
            f"graph has {count} initializers, limit is {limits.max_tensors}", code="too_large", param="path"
        )
    params = sum(math.prod(t.dims) for t in model.graph.initializer)
    if params > limits.max_params:
        raise ModelError(f"graph has {params} parameters, limit is {limits.max_params}", code="too_large", param="path")


def read_onnx_model(
    path: str | os.PathLike[str], *, limits: ModelLimits = DEFAULT_LIMITS, allow_external_data: bool = False
) -> ModelProto:
    """Read and check an ONNX file with every tensor's data held inline.

    Args:
        path: The ``.onnx`` file.
        limits: Bounds on file size, node count, initializer count and parameters.
        allow_external_data: Read external tensor data from plain files next to the model (the CLI
            case); when False (the service case) any external reference is refused.

    Returns:
        The checked ModelProto.

    Raises:
        ModelError: ``unsupported_format`` (pickle/TorchScript/safetensors given), ``too_large``,
            ``onnx_invalid`` (not parseable or fails onnx.checker), ``onnx_external_data``, ``not_found``.
    """
    p = Path(path)
    refuse_unsafe(p)
    if detect_model_format(p) == FORMAT_SAFETENSORS:
        raise ModelError(
            f"{p.name!r} is a safetensors weights file, not an ONNX graph; {ACCEPTED_FORMATS_HINT}",
            code="unsupported_format",
            param="path",
        )
    size = p.stat().st_size
    if size > limits.max_file_bytes:
        raise ModelError(f"file is {size} bytes, limit is {limits.max_file_bytes}", code="too_large", param="path")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelError(f"{p.name!r} is not a valid ONNX protobuf: {exc}", code="onnx_invalid", param="path") from exc
    _check_bounds(model, limits)
    external = [t.name for t in all_tensors(model) if t.data_location == TensorProto.EXTERNAL]
    if external:
        if not allow_external_data:
            raise ModelError(
                f"{p.name!r} keeps {len(external)} tensor(s) (e.g. {external[0]!r}) in external data files, "
                f"which are not accepted; {_SINGLE_FILE_HINT}",
                code="onnx_external_data",
                param="path",
            )
        inline_external_data(model, p.resolve().parent, limits.max_file_bytes - size)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{p.name!r} fails ONNX validation: {exc}", code="onnx_invalid", param="path") from exc
    return model


def _opset(model: ModelProto, domain: str) -> int:
    """The opset version the model imports for ``domain`` (default domain aliases included)."""
    aliases = ("", "ai.onnx") if domain in ("", "ai.onnx") else (domain,)
    for entry in model.opset_import:
        if entry.domain in aliases:
            return int(entry.version)
    return 0


def _unsupported_ops(model: ModelProto) -> list[str]:
    """Describe every (op, opset) in the top-level graph that no onnx2torch converter handles."""
    missing: dict[str, None] = {}
    for node in model.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        version = _opset(model, domain)
        try:
            get_converter(operation_type=node.op_type, version=version, domain=domain)
        except NotImplementedError:
            label = f"{domain + '::' if domain else ''}{node.op_type} (opset {version})"
            missing[label] = None
    return list(missing)


def _failing_node(exc: BaseException) -> OnnxNode | None:
    """Find the ONNX node onnx2torch was converting when ``exc`` was raised, from the traceback."""
    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        for value in frame.f_locals.values():
            if isinstance(value, OnnxNode):
                found = value
    return found


def _convert_normalized(model: ModelProto) -> fx.GraphModule:
    """Convert a normalized model, raising ModelError(code="onnx_unsupported_op") on failure."""
    missing = _unsupported_ops(model)
    if missing:
        raise ModelError(
            f"the graph uses operators the converter does not support: {', '.join(missing)}",
            code="onnx_unsupported_op",
            param="path",
        )
    try:
        module: fx.GraphModule = onnx2torch_convert(model)
    except Exception as exc:  # onnx2torch raises bare KeyError/ValueError/NotImplementedError alike
        node = _failing_node(exc)
        where = "the graph"
        if node is not None:
            opset = _opset(model, node.domain)
            where = f"{node.operation_type} node {node.name or node.unique_name!r} (opset {opset})"
        raise ModelError(
            f"cannot convert {where}: {type(exc).__name__}: {exc}", code="onnx_unsupported_op", param="path"
        ) from exc
    return module


def _optimized(model: ModelProto) -> ModelProto | None:
    """Constant-fold and simplify with onnxscript's optimizer (what torch.onnx runs by default), or None."""
    try:
        optimized: ModelProto = onnxscript.optimizer.optimize(model)
    except Exception:  # the optimizer is a best-effort fallback; its failure leaves the first error standing
        return None
    return optimized


def convert_onnx_model(
    model: ModelProto, *, check: Callable[[ModelProto, fx.GraphModule], None] | None = None
) -> fx.GraphModule:
    """Normalize a checked ONNX model and convert it with onnx2torch.

    Graphs exported without optimization (e.g. ``torch.onnx.export(..., optimize=False)``) compute
    constants such as Reduce axes or reshape targets at run time and use ops like CastLike or
    SplitToSequence that onnx2torch lacks; when the first attempt fails, onnxscript's optimizer
    (the one torch.onnx runs by default) folds those and the conversion is retried once.

    Args:
        model: A checked ModelProto with inline data; it is modified in place by the normalization.
        check: Called with the converted graph and module; a ModelError it raises also triggers the
            retry (load_onnx passes its onnxruntime comparison here).

    Returns:
        An eval-mode GraphModule whose Conv/Gemm layers are real nn.Conv2d / nn.Linear modules.

    Raises:
        ModelError: ``onnx_unsupported_op`` naming the operators (and opset) that cannot be converted,
            or whatever ``check`` raises; the first attempt's error is reported when both fail.
    """
    register_extra_converters()

    def attempt(candidate: ModelProto) -> fx.GraphModule:
        """Convert one candidate graph and run the check on it."""
        normalized, _ = normalize_for_onnx2torch(candidate)
        module = _convert_normalized(normalized)
        module.eval()
        if check is not None:
            check(normalized, module)
        return module

    # The normalization rewrites in place; the retry must start from the graph as exported (with its static
    # batch size still visible, so the batch can be freed in the optimized graph too).
    pristine = ModelProto()
    pristine.CopyFrom(model)
    try:
        return _trainable(attempt(model))
    except ModelError as first:
        if first.code not in _RETRYABLE_CODES:
            raise
        optimized = _optimized(pristine)
        if optimized is None:
            raise
        try:
            return _trainable(attempt(optimized))
        except ModelError:
            raise first from None


def _trainable(module: fx.GraphModule) -> fx.GraphModule:
    """The converted module with every learnable initializer made a parameter (onnx_trainable.py)."""
    promote_initializers(module)
    return module


def verify_onnx_conversion(
    onnx_path_or_model: str | os.PathLike[str] | ModelProto,
    torch_module: nn.Module,
    n: int = 2,
    *,
    input_shape: Sequence[int] | None = None,
    allow_external_data: bool = False,
) -> float:
    """Compare a converted module with onnxruntime on a random input.

    Args:
        onnx_path_or_model: The original ONNX file (read with the same safety checks) or ModelProto.
        torch_module: The module to check (e.g. from ``load_onnx``).
        n: Size substituted for a dynamic batch dimension.
        input_shape: Full shape of the first input, for graphs with other dynamic dims.
        allow_external_data: As for ``read_onnx_model`` when a path is given.

    Returns:
        The maximum absolute difference over all outputs.

    Raises:
        ModelError: as ``read_onnx_model`` and ``compare_with_onnxruntime``.
    """
    model = (
        onnx_path_or_model
        if isinstance(onnx_path_or_model, ModelProto)
        else read_onnx_model(onnx_path_or_model, allow_external_data=allow_external_data)
    )
    return compare_with_onnxruntime(model, torch_module, n=n, input_shape=input_shape)[0]


def load_onnx(
    path: str | os.PathLike[str],
    *,
    limits: ModelLimits = DEFAULT_LIMITS,
    allow_external_data: bool = False,
    verify: bool = True,
    input_shape: Sequence[int] | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> fx.GraphModule:
    """Load an ONNX file as an eval-mode torch module, checked against onnxruntime.

    Args:
        path: The ``.onnx`` file; pickle, TorchScript and ``.pt2`` files are refused unopened.
        limits: Bounds on file size, node count, initializer count and parameters.
        allow_external_data: Accept tensor data in plain files next to the model (default: refuse).
        verify: Compare the converted module with onnxruntime on a random input.
        input_shape: Full shape (batch included) of the first input, for graphs whose non-batch dims
            are dynamic.
        atol: Absolute tolerance of the check.
        rtol: Tolerance relative to the largest reference output.

    Returns:
        An onnx2torch GraphModule in eval mode; Conv and constant-weight Gemm nodes are nn.Conv2d /
        nn.Linear modules whose weights can be parametrized.

    Raises:
        ModelError: ``unsupported_format``, ``too_large``, ``onnx_invalid``, ``onnx_external_data``,
            ``onnx_unsupported_op``, ``onnx_input_shape``, ``onnx_verification_failed``,
            ``onnx_conversion_mismatch`` (outputs differ beyond tolerance), ``not_found``.
    """
    model = read_onnx_model(path, limits=limits, allow_external_data=allow_external_data)
    if not verify:
        return convert_onnx_model(model)
    # onnxruntime runs the graph as the user exported it, before our rewrites (which keep the inputs).
    original = model.SerializeToString()
    # Test inputs follow the original graph's shapes too: normalization may have made a fixed batch size
    # symbolic, and onnxruntime must still be able to run the graph as exported.
    reference = onnx.load_from_string(original)

    def check(graph: ModelProto, module: fx.GraphModule) -> None:
        """Require the module to match onnxruntime on the original graph within tolerance."""
        diff, scale = compare_with_onnxruntime(reference, module, input_shape=input_shape, model_bytes=original)
        if not diff <= atol + rtol * scale:  # also catches NaN
            raise ModelError(
                f"converted model differs from onnxruntime by {diff:.3g} (allowed "
                f"{atol + rtol * scale:.3g} for outputs up to {scale:.3g}); the conversion is not faithful",
                code="onnx_conversion_mismatch",
                param="path",
            )
        # Training runs other batch sizes than the export's: each example must come out as it does alone.
        check_batch_independence(graph, module, input_shape=input_shape)

    return convert_onnx_model(model, check=check)

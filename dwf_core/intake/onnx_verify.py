"""Checking a converted module against onnxruntime on a random input derived from the graph."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import ModelProto
from torch import nn

from dwf_core.errors import ModelError

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4
_EXPORT_HINT = (
    "export with a dynamic batch axis (torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}}) or "
    "dynamic_shapes), or with an example batch of 2 or more (at batch 1 the graph cannot show where the batch goes)"
)


def _graph_inputs(model: ModelProto) -> list[onnx.ValueInfoProto]:
    """Real graph inputs (initializers listed as inputs, an old exporter habit, excluded)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _random_inputs(
    model: ModelProto, batch: int, input_shape: Sequence[int] | None, seed: int = 0, *, distinct_ints: bool = False
) -> list[np.ndarray[Any, Any]]:
    """Random feeds for every graph input: dynamic dim 0 becomes ``batch``, other dims must be static.

    Integer inputs are zeros (valid for any index range), or zeros and ones with ``distinct_ints`` so that the
    rows of a batch differ.
    """
    rng = np.random.default_rng(seed)
    feeds = []
    inputs = _graph_inputs(model)
    for index, value in enumerate(inputs):
        ttype = value.type.tensor_type
        if not value.type.HasField("tensor_type") or not ttype.HasField("shape"):
            raise ModelError(
                f"graph input {value.name!r} has no tensor shape; cannot build a test input",
                code="onnx_input_shape",
                param="input_shape",
            )
        if input_shape is not None and index == 0:
            shape = [int(d) for d in input_shape]
        else:
            shape = []
            for axis, dim in enumerate(ttype.shape.dim):
                if dim.HasField("dim_value") and dim.dim_value > 0:
                    shape.append(int(dim.dim_value))
                elif axis == 0:
                    shape.append(batch)
                else:
                    raise ModelError(
                        f"graph input {value.name!r} has a dynamic dim {axis} ({dim.dim_param or '?'}); "
                        "pass input_shape to verify the conversion",
                        code="onnx_input_shape",
                        param="input_shape",
                    )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds.append(rng.standard_normal(shape).astype(dtype))
        else:
            # Integer inputs are usually indices; zeros are valid for any index range.
            ints = rng.integers(0, 2, size=shape) if distinct_ints else np.zeros(shape)
            feeds.append(ints.astype(dtype))
    return feeds


def _flatten_outputs(value: Any) -> list[torch.Tensor]:
    """Flatten a module's tensor / tuple / list output into a list of tensors."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _flatten_outputs(item)]
    raise ModelError(f"converted module returned {type(value).__name__}, expected tensors", code="onnx_invalid")


def compare_with_onnxruntime(
    model: ModelProto,
    torch_module: nn.Module,
    *,
    n: int = 2,
    input_shape: Sequence[int] | None = None,
    model_bytes: bytes | None = None,
) -> tuple[float, float]:
    """Run both on one random input; return (max abs difference, max abs reference output).

    Args:
        model: The ONNX model; its graph inputs define the test input.
        torch_module: The converted module, called with the inputs in graph order.
        n: Size substituted for a dynamic batch dimension.
        input_shape: Full shape (batch included) of the first input, overriding the graph's.
        model_bytes: Serialized model for onnxruntime to run instead of ``model`` (same inputs).

    Returns:
        The largest absolute difference over all outputs, and the largest absolute reference value.

    Raises:
        ModelError: ``onnx_input_shape`` if a test input cannot be derived, ``onnx_verification_failed``
            if onnxruntime cannot run the graph or the outputs differ in number or shape.
    """
    if not isinstance(n, int) or n < 1:
        raise ModelError(f"n must be a positive int, got {n!r}", code="invalid_argument", param="n")
    data = model.SerializeToString() if model_bytes is None else model_bytes
    feeds = _random_inputs(model, n, input_shape)
    names = [i.name for i in _graph_inputs(model)]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        expected = session.run(None, dict(zip(names, feeds, strict=True)))
    except Exception as exc:  # onnxruntime raises its own exception classes (Fail, InvalidGraph, ...)
        raise ModelError(
            f"onnxruntime cannot run the graph to verify the conversion: {exc}",
            code="onnx_verification_failed",
        ) from exc
    was_training = torch_module.training
    torch_module.eval()
    try:
        with torch.no_grad():
            raw = torch_module(*[torch.from_numpy(f) for f in feeds])
    except Exception as exc:  # a converted module can fail in any torch op at run time
        raise ModelError(
            f"the converted module fails on a test input: {type(exc).__name__}: {exc}",
            code="onnx_verification_failed",
        ) from exc
    finally:
        torch_module.train(was_training)
    actual = _flatten_outputs(raw)
    if len(actual) != len(expected):
        raise ModelError(
            f"converted module returns {len(actual)} outputs, onnxruntime {len(expected)}",
            code="onnx_verification_failed",
        )
    diff, scale = 0.0, 0.0
    for got, ref in zip(actual, expected, strict=True):
        ref_arr = np.asarray(ref)
        got_arr = got.detach().cpu().numpy()
        if got_arr.shape != ref_arr.shape:
            raise ModelError(
                f"converted output shape {list(got_arr.shape)} differs from onnxruntime's {list(ref_arr.shape)}",
                code="onnx_verification_failed",
            )
        if ref_arr.size:
            ref64, got64 = ref_arr.astype(np.float64), got_arr.astype(np.float64)
            diff = max(diff, float(np.max(np.abs(got64 - ref64))))
            scale = max(scale, float(np.max(np.abs(ref64))))
    return diff, scale


def check_batch_independence(
    model: ModelProto, torch_module: nn.Module, *, n: int = 3, input_shape: Sequence[int] | None = None
) -> float:
    """Require each row of a batch of ``n`` to come out as it does alone; returns the max abs difference.

    Catches a converted graph that still mixes or assumes the export's batch size (a Reshape target that kept
    it): training runs it at other batch sizes. ``model`` is the normalized graph (its batch dim symbolic).

    Raises:
        ModelError: ``onnx_batch_dependent`` when the graph fails at batch ``n`` or its rows differ.
    """
    shape = None if input_shape is None else [n, *list(input_shape)[1:]]
    feeds = [torch.from_numpy(f) for f in _random_inputs(model, n, shape, seed=1, distinct_ints=True)]
    was_training = torch_module.training
    torch_module.eval()
    try:
        with torch.no_grad():
            together = _flatten_outputs(torch_module(*feeds))
            alone = [_flatten_outputs(torch_module(*[f[i : i + 1] for f in feeds])) for i in range(n)]
    except Exception as exc:
        raise ModelError(
            f"the converted graph does not run at batch size {n}: {type(exc).__name__}: {exc}; the export baked "
            f"its example's batch size in somewhere we could not free: {_EXPORT_HINT}",
            code="onnx_batch_dependent",
            param="path",
        ) from exc
    finally:
        torch_module.train(was_training)
    diff, scale = 0.0, 0.0
    for index, outputs in enumerate(together):
        if outputs.dim() == 0 or outputs.shape[0] != n:
            continue  # not a per-example output
        rows = torch.cat([single[index] for single in alone]).double()
        diff = max(diff, float((outputs.double() - rows).abs().max()))
        scale = max(scale, float(rows.abs().max()))
    if not diff <= DEFAULT_ATOL + DEFAULT_RTOL * scale:
        raise ModelError(
            f"the converted graph mixes the examples of a batch (rows differ by {diff:.3g} from the same inputs "
            f"run one by one): {_EXPORT_HINT}",
            code="onnx_batch_dependent",
            param="path",
        )
    return diff

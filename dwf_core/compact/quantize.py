"""``model.compact.int8.onnx``: the compact model with int8 weights and activations, for pruning and quantization
in one job (Deep Compression's combination).

onnxruntime's static quantization (operator format, per-channel int8 weights, uint8 activations, the x86
default) calibrates activation ranges on training samples; the result is scored on the test split beside the float model
it came from. Like the compact model itself it fails soft: a graph onnxruntime cannot quantize gets a reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)
INT8_ONNX = "model.compact.int8.onnx"
CALIBRATION_SAMPLES = 256
_BATCH = 256


def _input_name(session: Any) -> str | None:
    inputs = session.get_inputs()
    return str(inputs[0].name) if inputs else None


def _predict(session: Any, x: np.ndarray) -> np.ndarray:
    """Class predictions of an onnxruntime session, in batches."""
    name = _input_name(session)
    out = [
        np.asarray(session.run(None, {name: x[i : i + _BATCH]} if name else {})[0]).argmax(axis=1)
        for i in range(0, len(x), _BATCH)
    ]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _quantize(source: Path, target: Path, calibration: np.ndarray) -> None:
    """Static quantization of ``source`` into ``target``, calibrated on ``calibration``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = _input_name(_session(source))

    class Reader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type hints
        def __init__(self) -> None:
            self.batches = iter([calibration[i : i + 32] for i in range(0, len(calibration), 32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None or name is None else {name: batch}

    prepared = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.pre.onnx")
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(target),
            Reader(),
            # QLinearMatMul/QGemm ran the compact DWF LeNet-300-100 in 0.074 ms at batch 64 (one thread), the QDQ
            # format's Quantize/Dequantize pairs in 0.133 ms (float: 0.066 ms).
            quant_format=QuantFormat.QOperator,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    finally:
        with contextlib.suppress(OSError):
            prepared.unlink()


def quantize_compact(
    float_onnx: Path, calibration: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor
) -> tuple[dict[str, Any], Path | None]:
    """Write ``model.compact.int8.onnx`` next to ``float_onnx``; score both on the test split.

    Args:
        float_onnx: the compact float model.
        calibration: training inputs (the first ``CALIBRATION_SAMPLES`` are used).
        test_x, test_y: the test split.

    Returns:
        (``metrics["compact"]["int8"]``: file, bytes, test accuracy of both, prediction agreement; or
        ``{"skipped": reason}``), and the file written (None when skipped).
    """
    if not calibration.dtype.is_floating_point:
        return {"skipped": "integer inputs (token ids): static quantization calibrates float inputs only"}, None
    final = float_onnx.with_name(INT8_ONNX)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        _quantize(float_onnx, tmp, calibration[:CALIBRATION_SAMPLES].numpy())
        x, y = test_x.numpy(), test_y.numpy()
        float_pred, int8_pred = _predict(_session(float_onnx), x), _predict(_session(tmp), x)
        os.replace(tmp, final)
    except Exception as exc:  # the quantizer raises many types on graphs it does not support; the job goes on
        log.info("no int8 model: %s", exc)
        return {"skipped": f"onnxruntime quantization failed: {type(exc).__name__}: {exc}"[:500]}, None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    n = max(1, len(y))
    return {
        "file": final.name,
        "bytes": final.stat().st_size,
        "calibration_samples": min(len(calibration), CALIBRATION_SAMPLES),
        "test_accuracy": float((int8_pred == y).sum()) / n if len(y) else None,
        "float_test_accuracy": float((float_pred == y).sum()) / n if len(y) else None,
        "agreement": float((int8_pred == float_pred).sum()) / n if len(y) else None,
    }, final

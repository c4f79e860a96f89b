"""What a model costs at inference: multiply-accumulates, parameters, file bytes, onnxruntime CPU latency.

Latency is measured for the dense ``model.onnx`` and the compact ``model.compact.onnx`` side by side in one
process, one thread (intra- and inter-op), runs alternating between the models so that a busy machine slows
both alike; the median of the runs is reported per batch size.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

BATCHES = (1, 64)


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one sample through ``model`` (matmuls, convolutions, attention; from torch's counter).

    Recurrent layers (RNN, LSTM, GRU and their cells) are counted from their sizes and the steps each call ran
    wherever torch's counter saw less inside them: it counts the matmuls of a recurrence torch runs op by op (a GRU
    on CPU) but nothing inside a fused kernel (oneDNN's or cuDNN's LSTM). Zeros inside dense weights are counted
    like any value: that is what a dense runtime executes.
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    missed: list[int] = []  # per recurrent call: MACs its sizes say minus those the counter saw inside it
    seen_before: list[int] = []

    def before(_module: nn.Module, _args: Any) -> None:
        seen_before.append(counter.get_total_flops())

    def after(module: nn.Module, args: Any, _out: Any) -> None:
        seen = (counter.get_total_flops() - seen_before.pop()) // 2
        missed.append(max(0, recurrent_macs(module, args[0]) - seen))

    recurrent = [m for m in model.modules() if isinstance(m, (nn.RNNBase, nn.RNNCellBase))]
    hooks = [m.register_forward_pre_hook(before) for m in recurrent]
    hooks += [m.register_forward_hook(after) for m in recurrent]
    try:
        with counter, torch.no_grad():
            model(example[:1])
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return int(counter.get_total_flops()) // 2 + sum(missed)


_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def recurrent_macs(module: nn.Module, inputs: Any) -> int:
    """Multiply-accumulates of one call of a recurrent layer or cell on ``inputs`` (one sample's worth per step).

    Per step and direction a layer multiplies its input and its previous output by every gate's weights (LSTM 4,
    GRU 3, RNN 1), plus the LSTM's projection when it has one; calls on a batch count one sample.
    """
    if isinstance(module, nn.RNNCellBase):
        gates = 4 if isinstance(module, nn.LSTMCell) else 3 if isinstance(module, nn.GRUCell) else 1
        return gates * module.hidden_size * (module.input_size + module.hidden_size)
    assert isinstance(module, nn.RNNBase)
    if isinstance(inputs, nn.utils.rnn.PackedSequence):
        batch = int(inputs.batch_sizes[0])
        steps = inputs.data.shape[0] / max(batch, 1)  # the mean length of the packed sequences
    elif inputs.dim() == 2:  # unbatched (L, input_size)
        steps = inputs.shape[0]
    else:
        steps = inputs.shape[1] if module.batch_first else inputs.shape[0]
    gates, hidden, proj = _GATES.get(module.mode, 1), module.hidden_size, module.proj_size
    out = proj or hidden
    directions = 2 if module.bidirectional else 1
    per_step = 0
    for layer in range(module.num_layers):
        width = module.input_size if layer == 0 else out * directions
        per_step += directions * (gates * hidden * (width + out) + hidden * proj)
    return int(steps * per_step)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters)."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(p.detach().count_nonzero()) for p in model.parameters())
    return total, nonzero


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(session: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    inputs = session.get_inputs()
    return {inputs[0].name: x} if inputs else {}  # a graph that never reads its input declares none


def onnx_latency(
    paths: Mapping[str, Path],
    sample: torch.Tensor,
    *,
    batches: Sequence[int] = BATCHES,
    seconds: float = 1.0,
    min_runs: int = 5,
    max_runs: int = 500,
) -> dict[str, dict[str, Any]]:
    """Median onnxruntime CPU latency (ms) per model and batch size, one thread, runs alternating.

    Args:
        paths: model name -> ONNX file (all take the same input).
        sample: one input sample (batch axis first); batches are random tensors of its shape and dtype.
        batches: batch sizes.
        seconds: time per batch size after ``min_runs`` runs of each model; at most ``max_runs`` each.

    Returns:
        ``{name: {"<batch>": median_ms, ...}, "runs": {"<batch>": runs per model}}``.
    """
    from dwf_core.compact.model import random_like

    sessions = {name: _session(path) for name, path in paths.items()}
    result: dict[str, dict[str, Any]] = {name: {} for name in sessions}
    runs: dict[str, int] = {}
    for batch in batches:
        x = random_like(sample, batch, seed=batch).numpy()
        feeds = {name: _feeds(s, x) for name, s in sessions.items()}
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for name, session in sessions.items():  # warm-up: first runs allocate and pick kernels
            for _ in range(2):
                session.run(None, feeds[name])
        start = time.perf_counter()
        count = 0
        while count < max_runs and (count < min_runs or time.perf_counter() - start < seconds):
            for name, session in sessions.items():
                t0 = time.perf_counter()
                session.run(None, feeds[name])
                times[name].append(time.perf_counter() - t0)
            count += 1
        for name in sessions:
            result[name][str(batch)] = 1000 * statistics.median(times[name])
        runs[str(batch)] = count
    result["runs"] = runs
    return result


def measure(
    models: Mapping[str, tuple[nn.Module | None, Path]], example: torch.Tensor, *, seconds: float = 0.5
) -> dict[str, Any]:
    """``metrics["inference"]``: MACs, parameters, ONNX bytes and latency per model, and ratios to "dense".

    Args:
        models: name ("dense", "compact", "compact_int8") -> (torch model or None for an ONNX-only model, its
            ONNX file); models without a file are skipped.
        example: input samples (batch first).
        seconds: latency time per batch size (see ``onnx_latency``).
    """
    present = {name: pair for name, pair in models.items() if pair[1].is_file()}
    out: dict[str, Any] = {"runtime": _runtime(), "threads": 1, "batches": list(BATCHES)}
    if not present:
        return {**out, "skipped": "no ONNX model was exported"}
    try:
        latency = onnx_latency({name: path for name, (_, path) in present.items()}, example[:1], seconds=seconds)
    except Exception as exc:  # onnxruntime raises its own types; numbers are a report, never a reason to fail a job
        return {**out, "skipped": f"onnxruntime could not run the models: {type(exc).__name__}: {exc}"[:500]}
    for name, (model, path) in present.items():
        params, nonzero = count_params(model) if model is not None else (None, None)
        out[name] = {
            "file": path.name,
            "bytes": path.stat().st_size,
            "params": params,
            "nonzero_params": nonzero,
            "macs": _macs_or_none(model, example) if model is not None else None,
            "latency_ms": latency[name],
        }
    out["runs"] = latency["runs"]
    dense = out.get("dense")
    for name, key in (("compact", "speedup"), ("compact_int8", "int8_speedup")):
        if dense is not None and name in out:
            out[key] = {b: dense["latency_ms"][b] / out[name]["latency_ms"][b] for b in dense["latency_ms"]}
    if dense is not None and "compact" in out and dense["macs"] and out["compact"]["macs"]:
        out["mac_reduction"] = dense["macs"] / out["compact"]["macs"]
    return out


def _macs_or_none(model: nn.Module, example: torch.Tensor) -> int | None:
    """``count_macs``, or None where torch's counter cannot trace the model."""
    try:
        return count_macs(model, example)
    except Exception:  # the counter dispatches every op; an exotic one may not be supported
        return None


def _runtime() -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} CPU"

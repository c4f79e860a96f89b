"""report.html's Inference section (no torch: report pages are drawn from metrics.json alone)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any


def _fmt(value: Any, unit: str = "", digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value:.{digits}g}{unit}"


def _pct(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, float) else "–"


def inference_html(metrics: Mapping[str, Any]) -> str:
    """report.html's "Inference" section: the ``inference`` and ``compact`` entries as a table and a note."""
    inference = metrics.get("inference")
    compact = metrics.get("compact")
    if not isinstance(inference, Mapping):
        return ""
    batches = [str(b) for b in inference.get("batches") or []]
    head = (
        "<tr><th>model</th><th>MACs / sample</th><th>parameters (non-zero)</th><th>ONNX bytes</th>"
        + "".join(f"<th>latency, batch {html.escape(b)}</th>" for b in batches)
        + "</tr>"
    )
    rows = []
    for name in ("dense", "compact", "compact_int8"):
        entry = inference.get(name)
        if not isinstance(entry, Mapping):
            continue
        latency = entry.get("latency_ms") or {}
        rows.append(
            f"<tr><td>{html.escape(str(entry.get('file', name)))}</td><td class='num'>{_fmt(entry.get('macs'))}</td>"
            f"<td class='num'>{_fmt(entry.get('params'))} ({_fmt(entry.get('nonzero_params'))})</td>"
            f"<td class='num'>{_fmt(entry.get('bytes'))}</td>"
            + "".join(f"<td class='num'>{_fmt(latency.get(b), ' ms')}</td>" for b in batches)
            + "</tr>"
        )
    notes = [f"{html.escape(str(inference.get('runtime', 'onnxruntime')))}, one thread, median of alternating runs."]
    speedup = inference.get("speedup")
    if isinstance(speedup, Mapping):
        ratios = ", ".join(f"batch {html.escape(str(b))}: {_fmt(v, '×')}" for b, v in speedup.items())
        notes.append(f"Compact vs dense: {_fmt(inference.get('mac_reduction'), '×')} fewer MACs; speed-up at {ratios}.")
    if isinstance(compact, Mapping) and "skipped" in compact:
        notes.append(f"No compact model: {html.escape(str(compact['skipped']))}")
    elif isinstance(compact, Mapping):
        notes.append(f"Compact model vs sparse model: max |Δlogit| {_fmt(compact.get('max_abs_diff'))}.")
        if compact.get("channels_skipped"):
            notes.append(f"Units and channels kept whole: {html.escape(str(compact['channels_skipped']))}")
        if compact.get("selected_inputs_skipped"):
            notes.append(f"Input columns kept whole: {html.escape(str(compact['selected_inputs_skipped']))}")
        int8 = compact.get("int8")
        if isinstance(int8, Mapping) and "skipped" in int8:
            notes.append(f"No int8 model: {html.escape(str(int8['skipped']))}")
        elif isinstance(int8, Mapping):
            notes.append(
                f"int8 (static quantization): test accuracy {_pct(int8.get('test_accuracy'))} vs "
                f"{_pct(int8.get('float_test_accuracy'))} in float."
            )
    if "skipped" in inference:
        notes.append(html.escape(str(inference["skipped"])))
    return f"<h2>Inference</h2><table>{head}{''.join(rows)}</table><p>{' '.join(notes)}</p>"

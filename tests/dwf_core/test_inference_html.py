"""report.html's Inference section: drawn from metrics.json alone, with the compaction's outcome."""

from __future__ import annotations

from dwf_core.inference_html import inference_html


def _entry(file: str, macs: int, ms1: float, ms64: float) -> dict[str, object]:
    return {"file": file, "macs": macs, "params": 10, "nonzero_params": 5, "bytes": 1000,
            "latency_ms": {"1": ms1, "64": ms64}}  # fmt: skip


def test_section_shows_both_models_and_the_speedup() -> None:
    metrics = {
        "inference": {
            "runtime": "onnxruntime 1.0 CPU",
            "batches": [1, 64],
            "dense": _entry("model.onnx", 266200, 0.03, 0.4),
            "compact": _entry("model.compact.onnx", 20000, 0.01, 0.05),
            "compact_int8": _entry("model.compact.int8.onnx", 0, 0.008, 0.03),
            "mac_reduction": 13.31,
            "speedup": {"1": 3.0, "64": 8.0},
        },
        "compact": {"max_abs_diff": 2e-6, "int8": {"test_accuracy": 0.9801, "float_test_accuracy": 0.9812}},
    }
    page = inference_html(metrics)
    assert "266,200" in page and "20,000" in page and "0.05 ms" in page
    assert "13.3× fewer MACs" in page and "batch 64: 8×" in page and "2e-06" in page
    assert "model.compact.int8.onnx" in page and "98.01% vs 98.12%" in page


def test_section_says_why_there_is_no_compact_model_and_is_absent_without_numbers() -> None:
    metrics = {
        "inference": {"batches": [1, 64], "dense": _entry("model.onnx", 5, 0.1, 0.2)},
        "compact": {"skipped": "the model returns <tuple>"},
    }
    page = inference_html(metrics)
    assert "No compact model: the model returns &lt;tuple&gt;" in page and "model.compact.onnx" not in page
    assert inference_html({"test_accuracy": 0.9}) == ""


def test_section_says_what_the_compaction_kept_whole_and_why() -> None:
    metrics = {
        "inference": {"batches": [1, 64], "dense": _entry("model.onnx", 5, 0.1, 0.2)},
        "compact": {
            "max_abs_diff": 0.0,
            "channels_skipped": "dependency graph failed: ZeroDivisionError: <division>",
            "selected_inputs_skipped": None,
        },
    }
    page = inference_html(metrics)
    assert "Units and channels kept whole: dependency graph failed: ZeroDivisionError: &lt;division&gt;" in page
    assert "Input columns kept whole" not in page
    metrics["compact"] = {"max_abs_diff": 0.0, "channels_skipped": None, "selected_inputs_skipped": "it broke"}
    page = inference_html(metrics)
    assert "Input columns kept whole: it broke" in page and "Units and channels kept whole" not in page

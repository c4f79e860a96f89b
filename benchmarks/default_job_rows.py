"""One short default DWF job per architecture, and the table of what each produced.

Shared by benchmarks.hf_model_types (transformers config.json uploads) and benchmarks.image_model_types (torchvision
and timm names): each runs ``job_row`` per model and ``write_results`` once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from benchmarks.stamp import stamp_line

DIFF_NOTE = (
    "Compact max |Δ| is absolute (the compaction accepts 1e-4 × max(1, max |logit|)): after one epoch on random "
    "data some models' logits are huge (torchvision's regnet_x_400mf: 3.3e13, where float32's step is 4e6)."
)


def job_row(label: str, model: str, data: Path, out_dir: Path, *, batch_size: int) -> dict[str, Any]:
    """One short default job (1 epoch, target 90%) on ``model``; what it produced, or the error that stopped it."""
    from dwf_core.config import TrainConfig
    from dwf_core.pipeline import RunSpec, run

    started = time.monotonic()
    row: dict[str, Any] = {"model_type": label}
    try:
        metrics = run(
            RunSpec(
                model=model,
                data=str(data),
                out_dir=out_dir,
                train=TrainConfig(epochs=1, batch_size=batch_size, target_sparsity=0.9, device="cpu", seed=0),
            )
        )
    except Exception as exc:  # the point is to see every failure, whatever its type
        row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
        return row
    compact = metrics.get("compact") or {}
    inference = metrics.get("inference") or {}
    row.update(
        ok=True,
        parameters=metrics["parameters"]["total"],
        factorized_share=metrics["parameters"]["factorized_share"],
        sparsity_all=metrics["sparsity_all"],
        onnx=bool(metrics["onnx"].get("exported")),
        onnx_reason=metrics["onnx"].get("reason"),
        compact_max_abs_diff=compact.get("max_abs_diff"),
        compact_note=compact.get("reason") or compact.get("skipped") or compact.get("channels_skipped"),
        inference=bool(inference.get("dense")),
        seconds=round(time.monotonic() - started, 1),
    )
    return row


def table(rows: list[dict[str, Any]], first: str = "model_type") -> str:
    """Markdown table of the rows."""
    lines = [
        f"| {first} | job | parameters | factorized | sparsity (all) | model.onnx | compact (max \\|Δ\\|) | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r["ok"]:
            lines.append(f"| {r['model_type']} | **failed** | – | – | – | – | – | {r['error']} |")
            continue
        diff = r["compact_max_abs_diff"]
        note = "; ".join(str(n)[:120] for n in (r["onnx_reason"], r["compact_note"]) if n)
        lines.append(
            f"| {r['model_type']} | ok | {r['parameters']:,} | {100 * r['factorized_share']:.1f}% | "
            f"{100 * r['sparsity_all']:.1f}% | {'yes' if r['onnx'] else '**no**'} | "
            f"{'–' if diff is None else f'{diff:.1e}'} | {note} |"
        )
    return "\n".join(lines)


def write_results(
    out: Path, module: str, header: dict[str, Any], rows: list[dict[str, Any]], title: str, first: str
) -> None:
    """rows.json and README.md (title, stamp, table) under ``out``; the README is printed too.

    ``module`` is the benchmark that made the rows (``benchmarks.hf_model_types``): its docstring holds the settings.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
    script = module.replace(".", "/") + ".py"
    text = (
        f"# {title}\n\n{stamp_line(header)}; settings: the module docstring of {script}. {DIFF_NOTE}\n\n"
        f"{table(rows, first=first)}\n"
    )
    (out / "README.md").write_text(text)
    print(text)

"""transformers model types a user may upload as a config.json: does the default job run them end to end?

    python -m benchmarks.hf_model_types [--types gpt2,llama,...] [--out benchmarks/results/hf-model-types]

Each model type gets a tiny config (2 layers, width 32) and one short default DWF job (1 epoch, target 90%, 200
training sequences of a synthetic 3-class token task, no attention mask) through ``dwf_core.pipeline.run``, as an
upload would: build offline, factorize, train, collapse, export ONNX (checked by onnxruntime), compact, measure.
It records what reached each step, the share of parameters factorized (what the sparsity can touch), and why an
artifact is missing where one is. Accuracy after one epoch on 200 samples says nothing and is not reported. Writes
rows.json and README.md (a table) under --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from benchmarks.stamp import stamp, stamp_line

# Tiny configs; each family's own key names (vocab_size 100 is added to all).
CONFIGS: dict[str, dict[str, Any]] = {
    "bert": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
    "roberta": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 40,
    },
    "albert": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "embedding_size": 16,
    },
    "electra": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "embedding_size": 16,
    },
    "deberta-v2": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "mobilebert": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "embedding_size": 16,
        "intra_bottleneck_size": 16,
        "true_hidden_size": 16,
    },
    "mpnet": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 40,
    },
    "funnel": {"d_model": 32, "n_head": 2, "d_head": 16, "d_inner": 64, "block_sizes": [1, 1], "num_decoder_layers": 1},
    "xlnet": {"d_model": 32, "n_layer": 2, "n_head": 2, "d_inner": 64},
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 32},
    "gpt_neo": {
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 2,
        "max_position_embeddings": 32,
        "attention_types": [[["global", "local"], 1]],
    },
    "opt": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "ffn_dim": 64,
        "max_position_embeddings": 32,
        "word_embed_proj_dim": 32,
    },
    "bloom": {"hidden_size": 32, "n_layer": 2, "n_head": 2},
    "phi": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "llama": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "mistral": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 64,
    },
    "qwen2": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 64,
    },
    "gemma": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 64,
        "head_dim": 16,
    },
}


DIFF_NOTE = (
    "Compact max |Δ| is absolute (the compaction accepts 1e-4 × max(1, max |logit|)): after one epoch on random "
    "data some models' logits are huge (torchvision's regnet_x_400mf: 3.3e13, where float32's step is 4e6)."
)


def run_type(model_type: str, data: Path, work: Path) -> dict[str, Any]:
    """One default job on ``model_type``'s tiny config; what it produced, or the error that stopped it."""
    config = work / f"{model_type}.json"
    config.write_text(json.dumps({"model_type": model_type, "vocab_size": 100, **CONFIGS[model_type]}))
    return job_row(model_type, str(config), data, work / model_type, batch_size=64)


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", default=",".join(CONFIGS), help="comma-separated model types")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hf-model-types"))
    args = parser.parse_args(argv)
    from tests.token_helpers import token_npz

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    header = stamp("benchmarks.hf_model_types", argv=argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = token_npz(work / "tokens.npz", n_train=200, n_test=64, mask=False)
        for model_type in args.types.split(","):
            rows.append(run_type(model_type, data, work))
            print(json.dumps(rows[-1]), flush=True)
    write_results(args.out, header, rows, "transformers model types through the default job", "model_type")


def write_results(out: Path, header: dict[str, Any], rows: list[dict[str, Any]], title: str, first: str) -> None:
    """rows.json and README.md (title, stamp, table) under ``out``; the README is printed too."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
    script = header["command"].split("-m ")[-1].split()[0].replace(".", "/") + ".py"
    text = (
        f"# {title}\n\n{stamp_line(header)}; settings: the module docstring of {script}. {DIFF_NOTE}\n\n"
        f"{table(rows, first=first)}\n"
    )
    (out / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

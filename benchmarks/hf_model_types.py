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
import warnings
from pathlib import Path
from typing import Any

from benchmarks.default_job_rows import job_row, write_results
from benchmarks.stamp import stamp

MODULE = "benchmarks.hf_model_types"
# Tiny configs; each family's own key names (vocab_size 100 is added to all).
# The BERT/Llama family's key names at width 32, and the variants built on them.
_SMALL: dict[str, Any] = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
_GROUPED_KV: dict[str, Any] = {**_SMALL, "num_key_value_heads": 1}  # one K/V head for two query heads
CONFIGS: dict[str, dict[str, Any]] = {
    "bert": _SMALL,
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
    "roberta": {**_SMALL, "max_position_embeddings": 40},
    "albert": {**_SMALL, "embedding_size": 16},
    "electra": {**_SMALL, "embedding_size": 16},
    "deberta-v2": _SMALL,
    "mobilebert": {**_SMALL, "embedding_size": 16, "intra_bottleneck_size": 16, "true_hidden_size": 16},
    "mpnet": {**_SMALL, "max_position_embeddings": 40},
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
    "phi": _SMALL,
    "llama": _SMALL,
    "mistral": _GROUPED_KV,
    "qwen2": _GROUPED_KV,
    "gemma": {**_GROUPED_KV, "head_dim": 16},
}


def run_type(model_type: str, data: Path, work: Path) -> dict[str, Any]:
    """One default job on ``model_type``'s tiny config; what it produced, or the error that stopped it."""
    config = work / f"{model_type}.json"
    config.write_text(json.dumps({"model_type": model_type, "vocab_size": 100, **CONFIGS[model_type]}))
    return job_row(model_type, str(config), data, work / model_type, batch_size=64)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", default=",".join(CONFIGS), help="comma-separated model types")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hf-model-types"))
    args = parser.parse_args(argv)
    from tests.token_helpers import token_npz

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    header = stamp(MODULE, argv=argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = token_npz(work / "tokens.npz", n_train=200, n_test=64, mask=False)
        for model_type in args.types.split(","):
            rows.append(run_type(model_type, data, work))
            print(json.dumps(rows[-1]), flush=True)
    write_results(args.out, MODULE, header, rows, "transformers model types through the default job", "model_type")


if __name__ == "__main__":
    main()

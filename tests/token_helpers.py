"""Token datasets and transformers config.json files shared by the dwf_core and service tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

BERT = {
    "model_type": "bert",
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 32,
}
VIT = {
    "model_type": "vit",
    "image_size": 8,
    "patch_size": 4,
    "num_channels": 1,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def token_arrays(
    n_train: int = 300, n_test: int = 100, length: int = 16, *, mask: bool = True, seed: int = 0
) -> dict[str, np.ndarray]:
    """A synthetic 3-class token task: class c puts marker token 10 + c somewhere in a padded sequence."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        ids = rng.integers(20, 100, (n, length))
        ids[:, 0] = 1  # a [CLS]-like first token
        labels = rng.integers(0, 3, n)
        lengths = rng.integers(length // 2, length + 1, n)
        valid = np.arange(length)[None] < lengths[:, None]
        ids[np.arange(n), rng.integers(1, lengths)] = 10 + labels
        ids[~valid] = 0
        arrays[f"input_ids_{split}"], arrays[f"labels_{split}"] = ids, labels
        if mask:
            arrays[f"attention_mask_{split}"] = valid.astype(np.int64)
    return arrays


def token_npz(path: Path, **kwargs: Any) -> Path:
    """``token_arrays`` saved as an .npz."""
    np.savez(path, **token_arrays(**kwargs))
    return path


def image_npz(path: Path, n_train: int = 120, n_test: int = 40, size: int = 8, seed: int = 0) -> Path:
    """A tiny 3-class image task (N, 1, size, size) uint8: the class is the bright quadrant."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, 3, n)
        x = rng.integers(0, 60, (n, 1, size, size)).astype(np.uint8)
        half = size // 2
        for i, c in enumerate(y):
            r, col = divmod(int(c), 2)
            x[i, 0, r * half : (r + 1) * half, col * half : (col + 1) * half] += 150
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    np.savez(path, **arrays)
    return path


def config_json(path: Path, config: dict[str, Any], **changes: Any) -> Path:
    """A config.json with ``changes`` applied."""
    path.write_text(json.dumps({**config, **changes}, indent=2))
    return path

"""The models and datasets of the model suite (benchmarks.model_suite): architectures nobody tuned the defaults on.

Each pair builds its model the way a user would bring it: a PyTorch module (library use), an ONNX export from
either exporter, a timm name, a transformers config.json, or a zoo model with trained weights. Datasets are made
here from MNIST (../shared/data/mnist) or synthesized (seeded), as .npz files, and cached per size.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.transformer_onnx import CLASSES as TOKEN_CLASSES
from benchmarks.transformer_onnx import SEQ as TOKEN_SEQ
from benchmarks.transformer_onnx import VOCAB as TOKEN_VOCAB
from benchmarks.transformer_onnx import make_task as make_token_task
from dwf_core.export import onnx_log_as_asked
from tests.service_helpers import mnist_npz

# ------------------------------------------------------------------------------------------------ datasets


def waves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """1-D signals (N, 1, 128): 4 classes, each a random mix of sines in its own frequency band, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=n)
    t = np.arange(128) / 128
    x = np.zeros((n, 1, 128), dtype=np.float32)
    for i in range(n):
        for _ in range(3):
            freq = rng.uniform(4 + 6 * y[i], 9 + 6 * y[i])
            x[i, 0] += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    x += rng.normal(0, 0.8, size=x.shape).astype(np.float32)
    return x, y.astype(np.int64)


def motifs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sequences (N, 24, 8) of noise holding their class's motif (one of 4 fixed 4-step patterns) somewhere."""
    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(12345).normal(0, 1.5, size=(4, 4, 8)).astype(np.float32)
    y = rng.integers(0, 4, size=n)
    x = rng.normal(0, 1, size=(n, 24, 8)).astype(np.float32)
    for i in range(n):
        start = rng.integers(0, 21)
        x[i, start : start + 4] += patterns[y[i]]
    return x, y.astype(np.int64)


def _save(path: Path, make: Callable[[int, int], tuple[np.ndarray, np.ndarray]], n_train: int, n_test: int) -> Path:
    x, y = make(n_train, 1)
    xt, yt = make(n_test, 2)
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return path


def dataset(name: str, n_train: int, n_test: int, cache: Path) -> Path:
    """The .npz of dataset ``name`` with these sizes, made once into ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{name}-{n_train}-{n_test}.npz"
    if path.exists():
        return path
    # Worker processes make the same dataset at once: each writes its own file, the rename is atomic.
    partial = path.with_name(f"{path.stem}.part-{os.getpid()}.npz")
    if name == "mnist":
        mnist_npz(partial, n_train, n_test)
    elif name == "waves":
        _save(partial, waves, n_train, n_test)
    elif name == "motifs":
        _save(partial, motifs, n_train, n_test)
    elif name == "tokens":  # x_* int64 (N, 16): for ONNX graphs with an integer input
        _save(partial, make_token_task, n_train, n_test)
    elif name == "token-ids":  # the token dataset format of transformers models (input_ids_*, labels_*)
        x, y = make_token_task(n_train, 1)
        xt, yt = make_token_task(n_test, 2)
        np.savez(partial, input_ids_train=x, labels_train=y, input_ids_test=xt, labels_test=yt)
    else:
        raise ValueError(f"unknown dataset {name!r}")
    os.replace(partial, path)
    return path


# ------------------------------------------------------------------------------------------------ models


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, tokens))
        self.channel_mlp = nn.Sequential(nn.Linear(dim, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        out: torch.Tensor = x + self.channel_mlp(self.norm2(x))
        return out


class MLPMixer(nn.Module):
    """MLP-Mixer for 28×28 images: 7×7 patches (16 tokens), width 64, 2 blocks."""

    def __init__(self, classes: int = 10, dim: int = 64, blocks: int = 2) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 7, stride=7)
        self.blocks = nn.Sequential(*[MixerBlock(16, dim, 32, 128) for _ in range(blocks)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        out: torch.Tensor = self.head(self.norm(self.blocks(tokens)).mean(1))
        return out


class TinyViT(nn.Module):
    """ViT for 28×28 images: 7×7 patches, width 64, 2 pre-norm layers of 4 heads, mean pooling."""

    def __init__(self, classes: int = 10, dim: int = 64) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 7, stride=7)
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, 128, dropout=0.0, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        out: torch.Tensor = self.head(self.norm(self.enc(tokens)).mean(1))
        return out


def _separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class DepthwiseCNN(nn.Module):
    """MobileNet-style: a 3×3 stem, then depthwise-separable blocks 16→32→64, global pooling, linear head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(_separable(16, 32, 1), _separable(32, 64, 2), _separable(64, 64, 1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.blocks(self.stem(x)))
        return out


class CNN1d(nn.Module):
    """A 1-D CNN for signals (N, 1, 128): three conv/BN/ReLU stages with pooling, global pooling, linear head."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()

        def stage(cin: int, cout: int, k: int) -> list[nn.Module]:
            return [nn.Conv1d(cin, cout, k, padding=k // 2), nn.BatchNorm1d(cout), nn.ReLU(), nn.MaxPool1d(2)]

        self.features = nn.Sequential(*stage(1, 16, 7), *stage(16, 32, 5), *stage(32, 64, 3))
        self.head = nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


class GRUClassifier(nn.Module):
    """A GRU (8 → 64) over the sequence, its last hidden state into a linear head."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.gru = nn.GRU(8, 64, batch_first=True)
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, hidden = self.gru(x)
        out: torch.Tensor = self.head(hidden[-1])
        return out


class LSTMClassifier(nn.Module):
    """A 2-layer bidirectional LSTM (8 → 32 per direction), both directions' final states into a linear head."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 32, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(x)
        out: torch.Tensor = self.head(torch.cat([hidden[-2], hidden[-1]], dim=1))
        return out


def export_onnx(model: nn.Module, shape: tuple[int, ...], path: Path, exporter: str) -> Path:
    """Export ``model`` (eval mode) at batch 2 without dynamic axes, as users do by default."""
    example = torch.randn(2, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            with onnx_log_as_asked():  # a failed export would print its graph (dwf_core.export)
                torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, opset_version=17)
        else:
            torch.onnx.export(model.eval(), (example,), str(path), dynamo=True, external_data=False)
    return path


HF_CONFIGS: dict[str, dict[str, object]] = {
    # A BERT-style encoder (width 64, 2 layers, 4 heads).
    "bert": {
        "model_type": "bert",
        "vocab_size": TOKEN_VOCAB,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "max_position_embeddings": TOKEN_SEQ,
        "num_labels": TOKEN_CLASSES,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    },
    # A GPT-2-style decoder of the same size: causal attention, its blocks' weights in transformers' Conv1D, and
    # no pad token, as GPT-2's own configs.
    "gpt2": {
        "model_type": "gpt2",
        "vocab_size": TOKEN_VOCAB,
        "n_embd": 64,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": TOKEN_SEQ,
        "num_labels": TOKEN_CLASSES,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    },
}


def hf_config(name: str, path: Path) -> Path:
    """The transformers config.json ``HF_CONFIGS[name]`` for the token task, written to ``path``."""
    config = HF_CONFIGS[name]
    part = path.with_name(f"{path.stem}.part-{os.getpid()}.json")
    part.write_text(json.dumps(config))
    os.replace(part, path)
    return path


# ------------------------------------------------------------------------------------------------ pairs


@dataclass(frozen=True)
class Pair:
    """One architecture/data pair: how its model arrives, its dataset, and what the user tells DWF about it."""

    name: str
    title: str
    data: str
    source: str  # "module", "onnx-torchscript", "onnx-dynamo", "timm", "hf-config", "weights"
    include: tuple[str, ...] = ()
    needs: tuple[str, ...] = field(default_factory=tuple)  # importable packages the pair needs


PAIRS: tuple[Pair, ...] = (
    Pair("mixer", "MLP-Mixer (module), MNIST", "mnist", "module"),
    Pair("vit-ts", "ViT via ONNX (TorchScript exporter), MNIST", "mnist", "onnx-torchscript"),
    Pair("vit-dynamo", "ViT via ONNX (dynamo exporter), MNIST", "mnist", "onnx-dynamo"),
    Pair("resnet-timm", "ResNet-10t with BatchNorm (timm:resnet10t), MNIST", "mnist", "timm", needs=("timm",)),
    Pair("dwcnn", "MobileNet-style depthwise CNN (module), MNIST", "mnist", "module"),
    Pair("cnn1d", "1-D CNN (module), synthetic waveforms", "waves", "module"),
    Pair(
        "gru",
        "GRU classifier (module, include globs), synthetic motifs",
        "motifs",
        "module",
        include=("gru.weight_ih_l0", "gru.weight_hh_l0", "head.weight"),
    ),
    Pair(
        "bert",
        "BERT-style encoder (transformers config.json), token task",
        "token-ids",
        "hf-config",
        needs=("transformers",),
    ),
    Pair("lenet300-trained", "LeNet-300-100 from uploaded trained weights, MNIST", "mnist", "weights"),
    Pair("lstm", "2-layer bidirectional LSTM (module), synthetic motifs", "motifs", "module"),
    Pair(
        "gpt2",
        "GPT-2-style decoder (transformers config.json), token task",
        "token-ids",
        "hf-config",
        needs=("transformers",),
    ),
)
PAIR_BY_NAME = {p.name: p for p in PAIRS}
# Classes of each dataset: chance accuracy is 1 / classes (all are balanced).
CLASSES = {"mnist": 10, "waves": 4, "motifs": 4, "tokens": TOKEN_CLASSES, "token-ids": TOKEN_CLASSES}
MODULES: dict[str, Callable[[], nn.Module]] = {
    "mixer": MLPMixer,
    "vit-ts": TinyViT,
    "vit-dynamo": TinyViT,
    "dwcnn": DepthwiseCNN,
    "cnn1d": CNN1d,
    "gru": GRUClassifier,
    "lstm": LSTMClassifier,
}
INPUT_SHAPES = {"vit-ts": (1, 28, 28), "vit-dynamo": (1, 28, 28)}


def available(pair: Pair) -> bool:
    """Whether the packages ``pair`` needs are installed."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in pair.needs)


def model_for(pair: Pair, seed: int, work: Path) -> str | nn.Module:
    """The model argument of the pair's RunSpec: a fresh module, a file path, or a name."""
    torch.manual_seed(seed)
    if pair.source == "module":
        return MODULES[pair.name]()
    if pair.source.startswith("onnx-"):
        path = work / f"{pair.name}-seed{seed}.onnx"
        if not path.exists():  # written under a name of this process's own, then renamed (atomic)
            part = path.with_name(f"{path.stem}.part-{os.getpid()}.onnx")
            export_onnx(MODULES[pair.name](), INPUT_SHAPES[pair.name], part, pair.source.removeprefix("onnx-"))
            os.replace(part, path)
        return str(path)
    if pair.source == "timm":
        return "timm:resnet10t"
    if pair.source == "hf-config":
        return str(hf_config(pair.name, work / f"{pair.name}-config.json"))
    if pair.source == "weights":
        return "lenet_300_100"
    raise ValueError(f"unknown source {pair.source!r}")


def dense_epochs_share(epochs: int) -> int:
    """Epochs of the dense run that makes the "trained weights" pair's weights: half the budget, at least one."""
    return max(1, math.ceil(epochs / 2))

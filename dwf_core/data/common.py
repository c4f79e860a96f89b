"""Shared types of the dataset readers: limits, the loaded bundle, a reader's raw result, the byte budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt
import torch

from dwf_core.errors import ConfigError, DatasetError

Array = npt.NDArray[Any]
SPLITS = ("train", "val", "test")
# Fraction of the rows carved out as the test split by formats that may lack one (image zip, CSV).
TEST_FRACTION = 0.1


@dataclass(frozen=True)
class DataLimits:
    """Upper bounds a dataset must respect before and while it is decoded."""

    max_file_bytes: int = 2 * 1024**3
    max_uncompressed_bytes: int = 4 * 1024**3
    max_samples: int = 5_000_000
    max_features: int = 50_000_000
    max_archive_members: int = 200_000
    max_compression_ratio: float = 200.0
    max_classes: int = 100_000

    def __post_init__(self) -> None:
        """Refuse non-positive limits, which would make every dataset fail with a confusing reason."""
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"DataLimits.{name} must be > 0, got {value!r}", param=name)


DEFAULT_LIMITS = DataLimits()


@dataclass
class Split:
    """One split held in memory: float32 inputs (int64 for token ids) and int64 class labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        """Number of samples."""
        return int(self.y.shape[0])


@dataclass
class DatasetBundle:
    """A loaded, validated dataset with train/val/test splits."""

    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    source: str
    format: str
    val_from_train: bool
    normalization: dict[str, list[float]] | None
    class_names: list[str] | None = None
    test_from_train: bool = False
    # Token ids (dwf_core.data.tokens): x is int64 (N, L), or (N, 2, L) with the attention mask stacked on the ids.
    tokens: bool = False

    def describe(self) -> dict[str, Any]:
        """JSON-able summary: sizes, shapes, classes, format and normalization."""
        splits = {
            name: {"samples": len(split), "classes_present": int(torch.unique(split.y).numel())}
            for name, split in (("train", self.train), ("val", self.val), ("test", self.test))
        }
        return {
            "source": self.source,
            "format": self.format,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "splits": splits,
            "val_from_train": self.val_from_train,
            "test_from_train": self.test_from_train,
            "normalization": self.normalization,
            "class_names": self.class_names,
            "tokens": self.tokens,
        }


@dataclass
class RawDataset:
    """What a format reader hands back: numpy arrays per split, before validation and conversion."""

    fmt: str
    x: dict[str, Array]
    y: dict[str, Array]
    # Fixed by the format (CIFAR-10 has 10 classes even if a tiny file uses 3); else max label + 1.
    num_classes: int | None = None
    class_names: list[str] | None = None
    # How to name an array in errors, e.g. {"x_train": "train-images.idx3-ubyte.gz"}.
    params: dict[str, str] = field(default_factory=dict)
    # x holds int64 token ids (dwf_core.data.tokens): kept as integers, never normalized.
    tokens: bool = False

    def param(self, kind: str, split: str) -> str:
        """The user-facing name of array `kind` ("x"/"y") of `split`."""
        key = f"{kind}_{split}"
        return self.params.get(key, key)


class ByteBudget:
    """Counts decoded bytes against DataLimits.max_uncompressed_bytes across one load."""

    def __init__(self, limit: int) -> None:
        """Start an empty budget of `limit` bytes."""
        self.limit = limit
        self.used = 0

    def check(self, n: int, param: str) -> None:
        """Fail before allocating if `n` more bytes would exceed the budget."""
        if self.used + n > self.limit:
            raise DatasetError(
                f"{param}: decoding needs {self.used + n} bytes in total, more than the limit of "
                f"{self.limit} bytes (DataLimits.max_uncompressed_bytes)",
                code="too_large",
                param=param,
            )

    def take(self, n: int, param: str) -> None:
        """Record `n` decoded bytes, failing once the budget is exceeded."""
        self.check(n, param)
        self.used += n


def check_counts(n: int, features: int, limits: DataLimits, param: str) -> None:
    """Fail if `n` samples of `features` elements exceed the sample or feature limits."""
    if n > limits.max_samples:
        raise DatasetError(
            f"{param}: {n} samples, more than the limit of {limits.max_samples} (DataLimits.max_samples)",
            code="too_large",
            param=param,
        )
    if features > limits.max_features:
        raise DatasetError(
            f"{param}: {features} elements per sample, more than the limit of {limits.max_features} "
            "(DataLimits.max_features)",
            code="too_large",
            param=param,
        )

"""Turn a reader's raw arrays into a DatasetBundle: validate, carve missing splits, convert, normalize.

Inputs become float32 (uint8 scaled by 1/255), except token ids (RawDataset.tokens), which stay int64 and are
never normalized.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dwf_core.data.common import (
    SPLITS,
    TEST_FRACTION,
    Array,
    DataLimits,
    DatasetBundle,
    RawDataset,
    Split,
    check_counts,
)
from dwf_core.errors import ConfigError, DatasetError

# Samples per chunk when computing normalization statistics in float64 (bounds the temporary copy).
_STATS_CHUNK = 4096
# Beyond this many channels (1-D samples count each feature as one) a per-channel histogram loop is slower
# than the float path.
_HISTOGRAM_MAX_CHANNELS = 1024


def _check_x(raw: RawDataset, split: str, limits: DataLimits) -> None:
    """Check one input array's dtype, rank, size and finiteness."""
    x = raw.x[split]
    param = raw.param("x", split)
    if x.dtype.kind not in "biuf":
        raise DatasetError(
            f"{param}: dtype {x.dtype} is not a real numeric type; expected bool, int, uint or float",
            code="bad_dtype",
            param=param,
        )
    if x.ndim < 2:
        raise DatasetError(
            f"{param}: shape {x.shape} has no per-sample dimensions; expected (N, ...) with ndim >= 2",
            code="shape_mismatch",
            param=param,
        )
    if x.shape[0] == 0:
        raise DatasetError(f"{param}: split is empty; expected at least 1 sample", code="empty_split", param=param)
    check_counts(int(x.shape[0]), math.prod(x.shape[1:]), limits, param)
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if x.dtype.itemsize > 4:
            # float64 values beyond float32's range would silently become inf on conversion.
            bad |= np.abs(x) > np.finfo(np.float32).max
        if bad.any():
            first = int(np.argmax(bad.reshape(x.shape[0], -1).any(axis=1)))
            raise DatasetError(
                f"{param}: sample {first} contains NaN, inf or a value beyond float32 range; expected finite values",
                code="non_finite",
                param=param,
            )


def _labels(raw: RawDataset, split: str, n: int) -> Array:
    """Validate one label array and return it as int64 of shape (N,)."""
    y = raw.y[split]
    param = raw.param("y", split)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise DatasetError(
            f"{param}: labels have shape {y.shape}; expected class indices of shape (N,)",
            code="bad_labels",
            param=param,
        )
    if y.shape[0] != n:
        raise DatasetError(
            f"{param}: {y.shape[0]} labels for {n} samples in {raw.param('x', split)}; expected equal N",
            code="shape_mismatch",
            param=param,
        )
    kind = y.dtype.kind
    if kind not in "biuf":
        raise DatasetError(
            f"{param}: label dtype {y.dtype} is not numeric; expected integer class indices",
            code="bad_labels",
            param=param,
        )
    if kind == "f":
        bad = ~np.isfinite(y) | (y != np.floor(y))
        if bad.any():
            i = int(np.argmax(bad))
            raise DatasetError(
                f"{param}: label {i} is {y[i].item()!r}, not a whole number; expected integer class indices",
                code="bad_labels",
                param=param,
            )
    if kind in "if" and n and (neg := y < 0).any():
        i = int(np.argmax(neg))
        raise DatasetError(
            f"{param}: label {i} is {y[i].item()!r}; expected class indices >= 0", code="bad_labels", param=param
        )
    # Cap before casting so huge uint64/float labels cannot wrap around in int64.
    if n and float(y.max()) >= 2**62:
        raise DatasetError(
            f"{param}: largest label is {y.max().item()!r}; expected class indices below 2**62",
            code="bad_labels",
            param=param,
        )
    return np.asarray(y, dtype=np.int64)


def carve_size(n: int, fraction: float) -> int:
    """How many of `n` samples a carved split of `fraction` takes (at least one)."""
    return max(1, round(n * fraction))


def carve(n: int, k: int, gen: torch.Generator, what: str, param: str) -> tuple[Array, Array]:
    """Split range(n) into (kept, carved) sorted index arrays with `k` carved, chosen by `gen`."""
    if n - k < 1:
        raise DatasetError(
            f"{param}: only {n} samples; cannot carve {k} for a {what} split and keep any for "
            "training; expected more samples",
            code="empty_split",
            param=param,
        )
    perm = torch.randperm(n, generator=gen).numpy()
    return np.sort(perm[k:]), np.sort(perm[:k])


def _to_tensor(x: Array) -> torch.Tensor:
    """Convert inputs to float32, scaling uint8 by 1/255."""
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(255.0)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _channels_view(x: torch.Tensor) -> torch.Tensor:
    """View x as (N, C, rest): 1-D samples are per feature, 2-D one channel, else dim 1 is channels."""
    # view (not reshape) so in-place normalization can never land on a silent copy.
    n, sample = x.shape[0], x.shape[1:]
    if len(sample) == 1:
        return x.view(n, sample[0], 1)
    if len(sample) == 2:
        return x.view(n, 1, -1)
    return x.view(n, sample[0], -1)


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and population std of x in float64, two passes over chunks for accuracy."""
    view = _channels_view(x)
    count = view.shape[0] * view.shape[2]
    total = torch.zeros(view.shape[1], dtype=torch.float64)
    for start in range(0, view.shape[0], _STATS_CHUNK):
        total += view[start : start + _STATS_CHUNK].to(torch.float64).sum(dim=(0, 2))
    mean = total / count
    sq = torch.zeros_like(total)
    for start in range(0, view.shape[0], _STATS_CHUNK):
        chunk = view[start : start + _STATS_CHUNK].to(torch.float64) - mean.view(1, -1, 1)
        sq += chunk.square().sum(dim=(0, 2))
    std = (sq / count).sqrt()
    # A constant channel would divide by zero; leave its spread unchanged instead.
    std = torch.where(std < 1e-12, torch.ones_like(std), std)
    return mean, std


def _uint8_stats(x: Array) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-channel mean and std of uint8 inputs (scaled by 1/255) from 256-bin histograms."""
    n, sample = x.shape[0], x.shape[1:]
    channels = sample[0] if len(sample) != 2 else 1
    view = x.reshape(n, channels, -1)
    values = np.arange(256, dtype=np.float64) / 255.0
    mean = np.empty(channels)
    var = np.empty(channels)
    for c in range(channels):
        counts = np.bincount(view[:, c].ravel(), minlength=256).astype(np.float64)
        mean[c] = counts @ values / counts.sum()
        var[c] = counts @ (values - mean[c]) ** 2 / counts.sum()
    std = np.sqrt(var)
    std[std < 1e-12] = 1.0
    return torch.from_numpy(mean), torch.from_numpy(std)


def _apply_norm(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Standardize x in place with per-channel mean and std."""
    view = _channels_view(x)
    view.sub_(mean.to(torch.float32).view(1, -1, 1)).div_(std.to(torch.float32).view(1, -1, 1))


def finalize(
    raw: RawDataset,
    *,
    source: str,
    val_fraction: float,
    seed: int,
    normalize: str,
    limits: DataLimits,
) -> DatasetBundle:
    """Validate a reader's arrays, carve missing splits, convert to tensors and normalize."""
    present = [s for s in SPLITS if s in raw.x]
    sample_shape: tuple[int, ...] | None = None
    labels: dict[str, Array] = {}
    for split in present:
        _check_x(raw, split, limits)
        x = raw.x[split]
        if sample_shape is None:
            sample_shape = tuple(int(d) for d in x.shape[1:])
        elif tuple(x.shape[1:]) != sample_shape:
            raise DatasetError(
                f"{raw.param('x', split)}: per-sample shape {tuple(x.shape[1:])} differs from "
                f"{sample_shape} in {raw.param('x', present[0])}; expected the same shape in every split",
                code="shape_mismatch",
                param=raw.param("x", split),
            )
        labels[split] = _labels(raw, split, int(x.shape[0]))
    assert sample_shape is not None, "readers always provide a train split"
    total = sum(int(raw.x[s].shape[0]) for s in present)
    check_counts(total, math.prod(sample_shape), limits, "dataset")

    top = max(int(labels[s].max()) for s in present)
    num_classes = raw.num_classes if raw.num_classes is not None else top + 1
    if top >= num_classes:
        split = next(s for s in present if int(labels[s].max()) == top)
        raise DatasetError(
            f"{raw.param('y', split)}: label {top} is out of range for {raw.fmt} with {num_classes} "
            f"classes; expected labels in [0, {num_classes})",
            code="bad_labels",
            param=raw.param("y", split),
        )
    if num_classes > limits.max_classes:
        raise DatasetError(
            f"{num_classes} classes (largest label {top}), more than the limit of {limits.max_classes} "
            "(DataLimits.max_classes)",
            code="too_large",
            param="y",
        )

    xs = {s: raw.x[s] for s in present}
    gen = torch.Generator().manual_seed(seed)
    # Both carved sizes are fractions of the original train rows, so "10% each" means 10% of all.
    n_train = len(labels["train"])
    test_from_train = "test" not in xs
    if test_from_train:
        k = carve_size(n_train, TEST_FRACTION)
        keep, cut = carve(n_train, k, gen, "test", raw.param("x", "train"))
        xs["test"], labels["test"] = xs["train"][cut], labels["train"][cut]
        xs["train"], labels["train"] = xs["train"][keep], labels["train"][keep]
    val_from_train = "val" not in xs
    if val_from_train:
        k = carve_size(n_train, val_fraction)
        keep, cut = carve(len(labels["train"]), k, gen, "validation", raw.param("x", "train"))
        xs["val"], labels["val"] = xs["train"][cut], labels["train"][cut]
        xs["train"], labels["train"] = xs["train"][keep], labels["train"][keep]

    if raw.tokens:
        # Token ids stay int64 and are never normalized: an embedding looks them up.
        if normalize == "standardize":
            raise ConfigError(
                "normalize='standardize' does not apply to token ids (input_ids_*); use 'auto' or 'none'",
                param="normalize",
            )
        tensors = {
            s: Split(torch.from_numpy(np.ascontiguousarray(xs[s], dtype=np.int64)), torch.from_numpy(labels[s]))
            for s in SPLITS
        }
    else:
        tensors = {s: Split(_to_tensor(xs[s]), torch.from_numpy(labels[s])) for s in SPLITS}
    from_uint8 = not raw.tokens and all(x.dtype == np.uint8 for x in xs.values())
    normalization: dict[str, list[float]] | None = None
    if not raw.tokens and (normalize == "standardize" or (normalize == "auto" and from_uint8)):
        # Histograms are exact and much faster than float sums when the source is uint8 images.
        small = len(sample_shape) != 1 or sample_shape[0] <= _HISTOGRAM_MAX_CHANNELS
        if from_uint8 and small:
            mean, std = _uint8_stats(xs["train"])
        else:
            mean, std = _channel_stats(tensors["train"].x)
        for part in tensors.values():
            _apply_norm(part.x, mean, std)
        normalization = {"mean": mean.tolist(), "std": std.tolist()}
    return DatasetBundle(
        train=tensors["train"],
        val=tensors["val"],
        test=tensors["test"],
        num_classes=num_classes,
        input_shape=sample_shape,
        source=source,
        format=raw.fmt,
        val_from_train=val_from_train,
        normalization=normalization,
        class_names=raw.class_names,
        test_from_train=test_from_train,
        tokens=raw.tokens,
    )

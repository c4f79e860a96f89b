"""The accuracy–sparsity frontier of one trained model: several collapsed models from one run.

After training, the collapsed weights are cut at several global magnitude quantiles (one per requested
compression ratio); each cut model is evaluated on validation and test data and, given a folder, saved in
the sparse format so a user can pick the point that suits them without training again. For DWF the
weights below the cut are already tiny (the penalty drove them there), so the frontier is nearly flat up
to the run's natural compression; for a dense model it is exactly magnitude pruning at each ratio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from dwf_core.batchnorm_recalibration import batchnorm_layers, recalibrated
from dwf_core.collapse import apply_threshold, collapse_and_verify, target_threshold
from dwf_core.errors import ConfigError
from dwf_core.evaluate import Labeled, accuracy_of, predict_logits
from dwf_core.export import save_sparse
from dwf_core.report import sparsity_report

DEFAULT_FRONTIER_CRS: tuple[float, ...] = (10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
MAX_FRONTIER_POINTS = 32
FRONTIER_PREFIX = "frontier-cr"


def check_frontier(crs: Sequence[float]) -> list[float]:
    """Sorted unique compression ratios, each finite and > 1, at most ``MAX_FRONTIER_POINTS``.

    Raises:
        ConfigError: param "frontier".
    """
    values = sorted({float(c) for c in crs})
    if len(values) > MAX_FRONTIER_POINTS:
        raise ConfigError(f"frontier takes at most {MAX_FRONTIER_POINTS} compression ratios", param="frontier")
    for value in values:
        if not math.isfinite(value) or value <= 1.0:
            raise ConfigError(f"frontier compression ratios must be finite and > 1, got {value!r}", param="frontier")
    return values


def frontier_file_name(cr: float) -> str:
    """``frontier-cr100.sparse.safetensors`` (``frontier-cr12.5…`` for a non-integer ratio): a flat name, so the
    job service can serve it as an artifact like the others."""
    label = f"{cr:g}" if cr != int(cr) else str(int(cr))
    return f"{FRONTIER_PREFIX}{label}.sparse.safetensors"


def compute_frontier(
    model: nn.Module,
    crs: Sequence[float],
    val: Labeled,
    test: Labeled | None = None,
    *,
    out_dir: Path | None = None,
    batch_size: int = 1000,
    metadata: dict[str, str] | None = None,
    train: Labeled | None = None,
) -> list[dict[str, Any]]:
    """Collapse ``model`` once and cut it at each compression ratio in ``crs``.

    Args:
        model: a factorized model (DWF, or a depth-1 baseline); left unchanged.
        crs: requested compression ratios (total prunable weights ÷ non-zeros), e.g. (10, 100, 500).
        val, test: evaluation splits (test optional).
        out_dir: when given, each point is saved as ``out_dir/frontier-crN.sparse.safetensors``.
        batch_size: inference batch size.
        metadata: extra sparse-file metadata (model name…).
        train: training inputs for a model with BatchNorm: each cut's running statistics are measured again on them
            and kept where validation accuracy rose (dwf_core.batchnorm_recalibration; ``batchnorm_recalibrated``).

    Returns:
        One dict per reachable ratio, in increasing CR: requested_compression_ratio, compression_ratio,
        sparsity, nnz, total, threshold, val_accuracy, test_accuracy (or None), bytes and file (when saved).
        A ratio below what the model already has (a masked baseline's own sparsity) is skipped: cutting
        cannot add weights back.
    """
    ratios = check_frontier(crs)
    base = collapse_and_verify(model, None, 0.0)
    plain = base.model.eval()
    targets = {name: plain.get_parameter(name) for name in base.names}
    dense = {name: p.detach().clone() for name, p in targets.items()}
    weights = list(dense.values())
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    points: list[dict[str, Any]] = []
    for cr in ratios:
        sparsity_goal = 1.0 - 1.0 / cr
        if total == 0 or zeros / total > sparsity_goal + 1e-12:
            continue
        threshold = target_threshold(weights, sparsity_goal)
        apply_threshold(targets, dense, threshold)
        report = sparsity_report(plain, names=base.names)
        cut, val_accuracy, recalibrated = _with_fresh_statistics(plain, val, train, batch_size)
        point: dict[str, Any] = {
            "requested_compression_ratio": cr,
            "compression_ratio": report.compression_ratio,
            "sparsity": report.sparsity,
            "nnz": report.nnz,
            "total": report.total,
            "threshold": threshold,
            "val_accuracy": val_accuracy,
            "test_accuracy": (
                accuracy_of(predict_logits(cut, test.x, batch_size=batch_size), test.y) if test is not None else None
            ),
            "batchnorm_recalibrated": recalibrated,
        }
        if out_dir is not None:
            name = frontier_file_name(cr)
            stats = save_sparse(
                cut,
                Path(out_dir) / name,
                metadata={**(metadata or {}), "threshold": repr(threshold), "frontier_cr": repr(cr)},
            )
            point["file"] = name
            point["bytes"] = stats.file_bytes
        points.append(point)
    return points


def _with_fresh_statistics(
    plain: nn.Module, val: Labeled, train: Labeled | None, batch_size: int
) -> tuple[nn.Module, float, bool]:
    """The cut model (or a copy with its BatchNorm statistics measured again, where that scored higher on
    validation), its validation accuracy, and whether the statistics were replaced."""
    accuracy = accuracy_of(predict_logits(plain, val.x, batch_size=batch_size), val.y)
    if train is None or not batchnorm_layers(plain):
        return plain, accuracy, False
    fresh, fresh_accuracy = recalibrated(plain, train.x, val, batch_size=batch_size)
    if fresh_accuracy > accuracy:
        return fresh, fresh_accuracy, True
    return plain, accuracy, False

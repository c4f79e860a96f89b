"""The pipeline's compaction step: compact model, its two artifacts and its metrics entry; never fails the job."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwf_core.compact.model import CompactionSkipped, CompactResult, compact_model
from dwf_core.compact.spec import save_compact
from dwf_core.export import export_onnx
from dwf_core.inference import count_params

log = logging.getLogger(__name__)
COMPACT_SAFETENSORS = "model.compact.safetensors"
COMPACT_ONNX = "model.compact.onnx"


@dataclass
class CompactOutcome:
    """``metrics["compact"]``, the files written (artifact name -> path) and the model (None when skipped)."""

    info: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    result: CompactResult | None = None


def write_compact(
    plain: nn.Module, example: torch.Tensor, out_dir: Path, *, metadata: dict[str, str], onnx: bool = True
) -> CompactOutcome:
    """Compact ``plain``, write ``model.compact.safetensors`` (and ``model.compact.onnx`` with ``onnx``).

    A model that cannot be compacted gets ``{"skipped": reason}`` and no files: the job still succeeds.
    """
    try:
        result = compact_model(plain, example)
    except CompactionSkipped as exc:
        log.info("no compact model: %s", exc)
        return CompactOutcome({"skipped": str(exc)})
    params, nonzero = count_params(result.model)
    dense_params, _ = count_params(plain)
    info: dict[str, Any] = {
        **result.to_dict(),
        "params": params,
        "nonzero_params": nonzero,
        "dense_params": dense_params,
    }
    files = {COMPACT_SAFETENSORS: out_dir / COMPACT_SAFETENSORS}
    save_compact(result.model, result.spec, files[COMPACT_SAFETENSORS], metadata=metadata)
    if onnx:
        exported = export_onnx(result.model, example[:2].contiguous(), out_dir / COMPACT_ONNX)
        info["onnx"] = {k: v for k, v in exported.to_dict().items() if k != "path"}
        if exported.exported:
            files[COMPACT_ONNX] = out_dir / COMPACT_ONNX
    return CompactOutcome(info, files, result)

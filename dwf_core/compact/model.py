"""Build the compact model: dead channels removed across dependencies, dead inputs gathered away, verified."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dwf_core.compact.groups import ChannelReport, remove_dead_channels
from dwf_core.compact.heads import HeadReport, remove_dead_heads
from dwf_core.compact.inputs import select_live_inputs
from dwf_core.compact.spec import shrink_spec

# Relative to max(1, max |output|), as for the ONNX export check: float32 sums in another order.
ATOL = 1e-4


class CompactionSkipped(Exception):
    """The model cannot be compacted; ``str(exc)`` says why. The job goes on without compact artifacts."""


@dataclass
class CompactResult:
    """The compact model, how to rebuild it from the original architecture, and what changed."""

    model: nn.Module
    spec: dict[str, dict[str, Any]]
    channels: ChannelReport
    inputs: dict[str, tuple[int, int]] = field(default_factory=dict)
    max_abs_diff: float = 0.0
    heads: HeadReport = field(default_factory=HeadReport)
    # Why no Linear reads only its live columns although some could (None: they do, or none could).
    inputs_skipped: str | None = None
    # Why no channel or unit was removed (the dependency graph failed or broke the model; None: it worked).
    channels_skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the model)."""
        return {
            "max_abs_diff": self.max_abs_diff,
            **self.channels.to_dict(),
            **self.heads.to_dict(),
            "selected_inputs": {name: {"before": a, "kept": b} for name, (a, b) in self.inputs.items()},
            "selected_inputs_skipped": self.inputs_skipped,
            "channels_skipped": self.channels_skipped,
        }


def random_like(example: torch.Tensor, batch: int, seed: int) -> torch.Tensor:
    """A seeded random batch shaped like ``example`` per sample (floats ~ N(0, 1), integers in its range)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, *example.shape[1:])
    if example.dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(example.dtype)
    # Integer inputs are usually ids: stay within the example's range so lookups stay valid.
    low, high = int(example.min()), int(example.max())
    return torch.randint(low, high + 1, shape, generator=generator).to(example.dtype)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    if not isinstance(out, torch.Tensor):
        raise CompactionSkipped(f"the model returns {type(out).__name__}, not a tensor of logits")
    return out.detach().double()


def max_abs_diff(reference: nn.Module, model: nn.Module, batches: list[torch.Tensor]) -> tuple[float, float]:
    """(max |model − reference| over the batches, max(1, max |reference|))."""
    worst, scale = 0.0, 1.0
    for x in batches:
        ref, got = _logits(reference, x), _logits(model, x)
        if ref.shape != got.shape:
            return math.inf, scale
        worst = max(worst, float((ref - got).abs().max()) if ref.numel() else 0.0)
        scale = max(scale, float(ref.abs().max()) if ref.numel() else 1.0)
    return worst, scale


def compact_model(model: nn.Module, example: torch.Tensor) -> CompactResult:
    """A physically smaller copy of ``model`` with the same outputs; ``model`` is not changed.

    Removes Linear units and conv channels whose incoming or outgoing weights are all zero, with their
    BatchNorm entries and every coupled layer (Torch-Pruning's dependency graph), folds the constant output of
    units without inputs into the next layer's bias, removes attention heads whose value rows or output columns
    are all zero (``heads``), and makes Linear layers read only their non-zero columns. Where the channel removal
    fails (a graph Torch-Pruning cannot trace, or a coupling it does not see), the heads and input columns, which
    need no graph, are still removed and ``channels_skipped`` says why the channels were not.

    Args:
        model: a plain (collapsed) model.
        example: real inputs, batch first (a few samples); random ones of the same shape are added.

    Returns:
        The compact model (eval mode), its shrink spec relative to ``model``, and what was removed.

    Raises:
        CompactionSkipped: the model returns something other than a tensor, or nothing could be removed without
            changing its outputs by more than ``ATOL`` (relative).
    """
    reference = copy.deepcopy(model).eval()
    batches = [example, random_like(example, max(2, len(example)), seed=0)]
    _logits(reference, example)  # refuse non-tensor outputs before tracing
    check = [*batches, random_like(example, max(2, len(example)), seed=1)]
    try:
        return _compact(reference, batches, check, channels=True)
    except CompactionSkipped as exc:
        channels_failed = exc
    try:
        partial = _compact(reference, batches, check, channels=False)
    except CompactionSkipped:
        raise channels_failed from None
    removed_heads = any(kept < before for before, kept in partial.heads.heads.values())
    if not partial.inputs and not removed_heads:
        raise channels_failed  # nothing else to remove: the channels' reason is the job's
    partial.channels_skipped = str(channels_failed)
    return partial


def _compact(
    reference: nn.Module, batches: list[torch.Tensor], check: list[torch.Tensor], *, channels: bool
) -> CompactResult:
    """One compaction of a copy of ``reference``: dead channels (with ``channels``), heads, input columns; verified."""
    compact = copy.deepcopy(reference).eval()
    try:
        removed = remove_dead_channels(compact, batches) if channels else ChannelReport()
        heads = remove_dead_heads(compact, batches[0])  # before IndexedLinear: it slices plain output columns
        whole_inputs = copy.deepcopy(compact)
        inputs = select_live_inputs(compact)
    except CompactionSkipped:
        raise
    except Exception as exc:  # Torch-Pruning's tracer and pruners raise anything on graphs they do not know
        raise CompactionSkipped(f"dependency graph failed: {type(exc).__name__}: {exc}"[:500]) from exc
    inputs_skipped: str | None = None
    failure = _verify(reference, compact, check)
    if failure is not None and inputs:
        # A forward that hands a Linear's weight to F.linear itself (torchvision's Swin attention:
        # F.linear(x, self.proj.weight)) never calls IndexedLinear.forward, so the gathered columns do not line up:
        # keep every column and check again.
        inputs_skipped = f"reading only live input columns broke the model ({failure})"[:500]
        compact, inputs = whole_inputs, {}
        failure = _verify(reference, compact, check)
    if failure is not None:
        raise CompactionSkipped(failure)
    diff, _ = max_abs_diff(reference, compact, check)
    spec = shrink_spec(reference, compact)
    return CompactResult(compact, spec, removed, inputs, diff, heads, inputs_skipped=inputs_skipped)


def _verify(reference: nn.Module, compact: nn.Module, batches: list[torch.Tensor]) -> str | None:
    """None when ``compact`` (put in eval mode, frozen) gives ``reference``'s outputs within ATOL; else why not."""
    compact.eval()
    for param in compact.parameters():
        param.requires_grad_(False)
    try:
        diff, scale = max_abs_diff(reference, compact, batches)
    except CompactionSkipped:
        raise
    except Exception as exc:  # e.g. a shape mismatch inside a forward the graph did not see
        return f"the compacted model fails to run: {type(exc).__name__}: {exc}"[:500]
    if not diff <= ATOL * scale:
        return (
            f"the compacted model differs from the sparse one by {diff:.3g} (tolerance {ATOL * scale:.3g}); "
            "an operation couples channels in a way the dependency graph does not see"
        )
    return None

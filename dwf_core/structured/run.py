"""The pipeline's structured step: collapse a trained gated model, cut it to its MAC budget, fine-tune if asked.

``collapse_structured`` returns a ``CollapseResult`` like ``collapse_and_verify`` does (so export, reports and the
metrics need no other path) plus a ``structured`` dict for metrics.json: MACs dense and kept, units per layer, the
target and the MAC frontier. ``finetune_units`` is ``finetune_collapsed`` with the removed units' biases held at
zero as well as their rows, so the fine-tuned model still has exact zeros for a compaction to remove.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from dwf_core.collapse import CollapseResult, collapse_and_verify
from dwf_core.config import TrainConfig
from dwf_core.defaults import AUTO_FINETUNE_DROP
from dwf_core.evaluate import Labeled, accuracy_of, predict_logits
from dwf_core.factorize import factorize, select_parameters
from dwf_core.report import sparsity_report
from dwf_core.structured.cut import EPSILON, UnitCutter, plain_copy
from dwf_core.structured.frontier import mac_frontier
from dwf_core.structured.macs import count_macs, probe_input
from dwf_core.structured.settings import MAC_FRONTIER
from dwf_core.train import ProgressEvent, TrainResult


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def _threshold_weights(plain: nn.Module, names: list[str], val: Labeled, cfg: TrainConfig) -> CollapseResult:
    """``structure="both"``: the per-weight cut of DWF (cfg.threshold) on top of the unit cut.

    The plain model is wrapped as depth-1 factors (balanced: values unchanged) so that the existing threshold search
    ("auto" within tolerance, "target" quantile, or a number) runs on it unchanged.
    """
    factorize(plain, 1, "balanced", include=names)
    return collapse_and_verify(
        plain,
        val,
        cfg.threshold,
        tolerance=cfg.tolerance,
        batch_size=cfg.eval_batch_size,
        target_sparsity=cfg.target_sparsity,
    )


def collapse_structured(
    model: nn.Module, val: Labeled, test: Labeled | None, cfg: TrainConfig, *, example: torch.Tensor
) -> tuple[CollapseResult, dict[str, Any]]:
    """Collapse a trained gated ``model`` (left unchanged) into a plain model with removed units.

    Args:
        model: the trained model (gated; factorized too for structure "both").
        val, test: splits for the accuracies (test only for the MAC frontier).
        cfg: the resolved config (structure, target_macs, mac_frontier, threshold for "both").
        example: a few training inputs, for the MAC count's probe shape.

    Returns:
        The collapse (``threshold`` = the relative size of the last unit the budget removed, 0 for none) and the
        ``structured`` metrics.
    """
    bs = cfg.eval_batch_size
    reference = predict_logits(model, val.x, batch_size=bs)
    plain, layers = plain_copy(model)
    plain.eval()
    folded = predict_logits(plain, val.x, batch_size=bs)
    cutter = UnitCutter(plain, layers, probe_input(example.cpu()), cfg.unit_multiple or 1)
    natural = cutter.cut(0)
    natural_acc = accuracy_of(predict_logits(plain, val.x, batch_size=bs), val.y)
    budgets = MAC_FRONTIER if cfg.mac_frontier is None else cfg.mac_frontier
    frontier = mac_frontier(cutter, budgets, val, test, batch_size=bs) if budgets else []
    report = cutter.cut_to(cfg.target_macs)
    names = select_parameters(plain, cfg.include, cfg.exclude)
    threshold = cutter.threshold()
    weight_cut: dict[str, Any] | None = None
    if cfg.structure == "both":
        weighted = _threshold_weights(plain, names, val, cfg)
        plain, names = weighted.model, weighted.names
        report = count_macs(plain, cutter.probe)  # the weight cut may have emptied more rows
        weight_cut = {"threshold": weighted.threshold, "search": weighted.search}
    logits = predict_logits(plain, val.x, batch_size=bs)
    collapsed = CollapseResult(
        model=plain,
        threshold=threshold,
        names=names,
        report=sparsity_report(plain, names=names),
        factorized_accuracy=accuracy_of(reference, val.y),
        collapsed_accuracy=accuracy_of(logits, val.y),
        max_abs_logit_diff=_max_diff(logits, reference),
    )
    info = {
        "structure": cfg.structure,
        "target_macs": cfg.target_macs,
        # Units kept per layer rounded down to this multiple by the budget's cut (None: not rounded).
        "unit_multiple": cfg.unit_multiple,
        **report.to_dict(),
        "target_met": None if cfg.target_macs is None else report.fraction <= cfg.target_macs,
        "gated_layers": list(layers),
        # A BatchNorm gated for the layer that feeds it → that layer (its rows go with the norm's units).
        "gated_norms": {name: producer for name, producer in layers.items() if producer is not None},
        "units_removed": cutter.units_removed(),
        "units_total": sum(len(cutter.saved[n][0]) for n in layers),
        # Units below ε (absolute size) are always removed; the budget then removed units up to this relative size
        # (size ÷ the RMS size of their layer; 0: none).
        "epsilon": EPSILON,
        "relative_size_cut": threshold,
        # What the penalty alone removed (units below ε), before the budget's cut.
        "natural_mac_fraction": natural.fraction,
        "natural_val_accuracy": natural_acc,
        # Folding the gates is exact up to float rounding: the plain model before any removal vs the gated one.
        "fold_max_abs_logit_diff_val": _max_diff(folded, reference),
        "weight_cut": weight_cut,
        "mac_frontier": frontier,
    }
    return collapsed, info


def structured_finetune_epochs(cfg: TrainConfig, collapsed: CollapseResult) -> int:
    """The setting; with None ("auto") 10% of the epochs (≥ 1) when a MAC-budget cut cost more than
    ``AUTO_FINETUNE_DROP`` validation accuracy, else 0."""
    if cfg.finetune_epochs is not None:
        return cfg.finetune_epochs
    if cfg.target_macs is None or collapsed.factorized_accuracy is None or collapsed.collapsed_accuracy is None:
        return 0
    if collapsed.factorized_accuracy - collapsed.collapsed_accuracy <= AUTO_FINETUNE_DROP:
        return 0
    return max(1, round(0.1 * cfg.epochs))


def finetune_units(
    collapsed: CollapseResult,
    train: Labeled,
    val: Labeled,
    cfg: TrainConfig,
    *,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[TrainResult, CollapseResult, dict[str, Any]]:
    """``finetune_collapsed`` with the biases of the reported layers and the affine BatchNorm parameters masked too:
    zeros stay zeros, so a removed unit (zero row and bias, or zero γ and β) still outputs exactly zero."""
    from dwf_core.baselines.run import finetune_collapsed

    model = collapsed.model
    extra = []
    for name in collapsed.names:
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        if attr == "weight" and isinstance(getattr(module, "bias", None), nn.Parameter):
            extra.append(f"{owner}.bias" if owner else "bias")
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and module.affine:
            extra += [f"{name}.weight", f"{name}.bias"]
        elif isinstance(module, nn.MultiheadAttention):  # a cut head's Q/K/V rows live in in_proj_weight and its bias
            prefix = f"{name}." if name else ""
            extra += [prefix + attr for attr in ("in_proj_weight", "in_proj_bias")
                      if isinstance(getattr(module, attr, None), nn.Parameter)]  # fmt: skip
    widened = replace(collapsed, names=collapsed.names + [n for n in extra if n not in collapsed.names])
    plain_cfg = cfg.unstructured()
    ft, after, info = finetune_collapsed(
        widened, train, val, plain_cfg, on_progress=on_progress, should_stop=should_stop
    )
    names = collapsed.names
    return ft, replace(after, names=names, report=sparsity_report(after.model, names=names)), info

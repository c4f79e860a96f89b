"""A model that answers one class for every input: seen at an epoch's end, it restarts training like a NaN loss.

Dead ReLUs or saturated units can freeze a network into a constant output while its loss stays finite (about the
entropy of the labels), so the non-finite-loss restarts of dwf_core.divergence never see it. Measured on a lent
H200 (bf16, benchmarks/results/mnist-table/lenet5-gpu-gradual-cut/): LeNet-5-Caffe's dense training at LR 0.1,
gradient norm clipped at 5, ended at 11.35% test accuracy (one digit for every image) on 1 of 3 seeds after 20
epochs and on another seed after 10, where the other seeds reached 99.2%. The trainer asks ``predicts_one_class``
after each epoch and restarts from the initial weights with a safer setting (dwf_core.divergence.restart_record):
dense training, the baselines and DWF's dense phase; not DWF with a penalty, whose λ can empty a model on the way to
its target (the λ restart's case, dwf_core.train).

Only where one class is clearly wrong: the validation split has at least ``MIN_EXAMPLES`` examples of two or more
classes and its most frequent class is under ``MAX_MAJORITY_SHARE`` of them. On heavily imbalanced data, answering
the majority class can be the best a model does early on, and restarting it with a lower LR would only cost.
"""

from __future__ import annotations

import torch
from torch import nn

from dwf_core.evaluate import Labeled, predict_logits

# The validation examples looked at (the first ones of the split: enough to see two classes, cheap every epoch).
PROBE_EXAMPLES = 1024
MIN_EXAMPLES = 20
MAX_MAJORITY_SHARE = 0.5


def majority_share(y: torch.Tensor) -> float:
    """The share of the most frequent label in ``y`` (1.0 for an empty split)."""
    if y.numel() == 0:
        return 1.0
    return float(torch.bincount(y.flatten().long().cpu()).max()) / y.numel()


def predicts_one_class(model: nn.Module, val: Labeled, *, device: torch.device | str | None = None) -> bool:
    """Whether ``model`` gives every probed validation example the same class where that is clearly wrong."""
    x, y = val.x[:PROBE_EXAMPLES], val.y[:PROBE_EXAMPLES]
    if y.numel() < MIN_EXAMPLES or majority_share(y) >= MAX_MAJORITY_SHARE:
        return False
    logits = predict_logits(model, x, batch_size=PROBE_EXAMPLES, device=device)
    if not bool(torch.isfinite(logits).all()):
        return False  # a non-finite output is the non-finite-loss restart's to catch, at its step
    predicted = logits.argmax(dim=1)
    return bool((predicted == predicted[0]).all())

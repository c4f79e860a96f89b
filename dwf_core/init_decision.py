"""Whether a model that came with weights starts DWF from them, or is only an architecture.

An uploaded ONNX graph or weights file carries weights, but they may be an untrained export (a user who wants
the architecture sparsified). Factorizing random weights with the "balanced" split keeps their function, which
is worth nothing, and throws away VarMatch, the init the DWF paper shows standard training needs (issue 12 saw a
fresh residual CNN reach 93.6% from "balanced" where magnitude pruning reached 97%). So the weights are judged
by what they do on the validation split: a model clearly better than always answering the majority class is
trained and DWF starts from it; otherwise it is an architecture and DWF draws VarMatch factors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from dwf_core.data.common import Split
from dwf_core.evaluate import accuracy_of, predict_logits
from dwf_core.factorize import InitName

# Skill = (accuracy - majority share) / (1 - majority share): 0 for a model no better than the majority class,
# 1 for a perfect one. A quarter of the way from the majority class to perfect is "predicts the data": on 10
# balanced classes that is 32.5% accuracy, far above what random weights give and far below any trained model.
MIN_SKILL = 0.25
# Enough validation samples for the estimate (its standard error at p = 0.3 is under 1.5 pp), few enough to take
# a second on a CPU for the models we train.
MAX_SAMPLES = 2000


@dataclass(frozen=True)
class InitDecision:
    """What the given weights scored and the init chosen from it."""

    init: InitName  # "balanced" (start from the weights) or "varmatch" (architecture only)
    val_accuracy: float
    majority_share: float
    skill: float
    samples: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_init(model: nn.Module, val: Split, *, batch_size: int = 1000) -> InitDecision:
    """Score ``model`` (its current weights) on up to ``MAX_SAMPLES`` validation samples and choose the init."""
    n = min(len(val), MAX_SAMPLES)
    x, y = val.x[:n], val.y[:n]
    accuracy = accuracy_of(predict_logits(model, x, batch_size=batch_size), y) if n else 0.0
    counts = torch.bincount(y) if n else torch.zeros(1)
    majority = float(counts.max()) / n if n else 1.0
    skill = (accuracy - majority) / (1.0 - majority) if majority < 1.0 else 0.0
    init: InitName
    if skill >= MIN_SKILL:
        init, reason = "balanced", "the given weights predict the data: DWF starts from them"
    else:
        init, reason = "varmatch", "the given weights do not predict the data (untrained): VarMatch init"
    return InitDecision(init, accuracy, majority, skill, n, reason)

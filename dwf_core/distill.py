"""Knowledge distillation from the model DWF starts from (``TrainConfig.distill``; on by default from given weights).

A DWF run that starts from a trained model (``dense_epochs``, or uploaded weights that predict the data: init
"balanced") begins with that model's function and then loses part of it to the penalty and the cut. Training the
sparse student toward the frozen starting model's softened outputs as well as the labels (Hinton et al. 2015,
"Distilling the knowledge in a neural network") keeps more of it, as pruning libraries do after a prune:

    objective = (1 − α)·CE(student, labels) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))

(T² keeps the soft term's gradient on the scale of the hard one's as T changes). It helps where the teacher is better
than the sparse student can get on its own, and holds the student back where it is not: α 0.5, T 4 on LeNet-300-100
from a 15-epoch dense model, 3 seeds: +0.25 / +0.36 pp at CR 50 / 100 (98.17 / 97.99%, GMP 98.32 / 97.82%); from
uploaded trained LeNet-300-100 weights (model suite) +2.1 pp at 99%; but from the suite's 5-epoch dense models of
two ViTs −4 to −8 pp (the teacher at 79% validation accuracy, DWF alone reaches 88%). From fully trained models
uploaded as weights (the suite's ``--trained-start``, 2 seeds) it was better on 7 of 11 pair-targets (a 1-D CNN at 99%
54 → 84%) and worse on 4 by at most 0.53 pp. So it is the default where a user brings trained weights (α
``TRAINED_WEIGHTS_ALPHA``, ``automatic_alpha``) and an option after ``dense_epochs``, whose dense phase may be short
(docs/defaults.md, "Distillation from the starting model").

The teacher is a frozen copy of the model as training starts (after a continued run's factors are loaded), in eval
mode (BatchNorm's running statistics, no dropout), with every factorized weight multiplied back into a plain tensor
so that its forward pass costs one dense model's. It is not checkpointed: a resumed run rebuilds it from the same
starting model. The metrics' training loss stays the cross-entropy, so that it compares with runs without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from dwf_core.config import TrainConfig
    from dwf_core.distributed import Comm

# The temperature T of the soft term when the user gives an α but no T (Hinton et al.'s range; T 1 gained nothing on
# LeNet-300-100, where T 4 gained 0.25–0.36 pp).
DEFAULT_TEMPERATURE = 4.0
MAX_TEMPERATURE = 100.0
# α when the user leaves distill unset and DWF starts from given weights judged trained (the value the suite measured).
TRAINED_WEIGHTS_ALPHA = 0.5


def automatic_alpha(cfg: TrainConfig, *, from_given_weights: bool) -> float:
    """α for a run whose ``cfg.distill`` is None (unset): ``TRAINED_WEIGHTS_ALPHA`` when DWF ("weights" structure, the
    one measured) starts from given weights kept as they are (``from_given_weights``: a weights file or an ONNX
    graph whose weights predict the data, init "balanced", no dense phase, not a continued run), else 0."""
    trained_start = from_given_weights and cfg.init == "balanced" and not cfg.dense_epochs
    return TRAINED_WEIGHTS_ALPHA if cfg.method == "dwf" and cfg.structure == "weights" and trained_start else 0.0


def make_teacher(model: nn.Module) -> nn.Module:
    """A frozen, plain (unfactorized) copy of ``model`` in eval mode; ``model`` is left as it is."""
    from dwf_core.collapse import collapse_exact

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.RNNBase):
                # A factorized RNN's list of flat weights holds the factors' products with their autograd history,
                # which deepcopy refuses; rebuilt here without it (its forward rebuilds the list from the factors).
                module._init_flat_weights()
        teacher, _ = collapse_exact(model)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


@dataclass(frozen=True)
class Distillation:
    """The soft term of the objective: weight ``alpha`` in (0, 1], ``temperature`` > 0."""

    alpha: float
    temperature: float
    # "constant": α throughout; "linear": α·(1 − fraction of the steps done), the labels alone at the end.
    schedule: str = "constant"

    def alpha_at(self, fraction: float) -> float:
        """α after ``fraction`` ∈ [0, 1] of the run's steps."""
        return self.alpha * (1.0 - min(max(fraction, 0.0), 1.0)) if self.schedule == "linear" else self.alpha

    def soft_sum(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """T²·KL(teacher_T ‖ student_T) summed over the batch's examples (the caller averages, as for the CE)."""
        t = self.temperature
        kl = nn.functional.kl_div(
            nn.functional.log_softmax(student_logits.float() / t, dim=1),
            nn.functional.log_softmax(teacher_logits.float() / t, dim=1),
            reduction="sum",
            log_target=True,
        )
        return kl * (t * t)

    def mix(self, hard: torch.Tensor, soft: torch.Tensor, fraction: float = 0.0) -> torch.Tensor:
        """(1 − α)·hard + α·soft at ``fraction`` of the steps, both already batch means (or DDP's scaled sums)."""
        alpha = self.alpha_at(fraction)
        return (1.0 - alpha) * hard + alpha * soft


@dataclass(frozen=True)
class Distiller:
    """What a training step needs: the soft term's settings and the frozen teacher."""

    distillation: Distillation
    teacher: nn.Module

    @classmethod
    def for_config(cls, cfg: TrainConfig, model: nn.Module, device: torch.device) -> Distiller | None:
        """The run's distiller when the config asks for one (DWF, ``distill`` > 0), the teacher copied from ``model``
        as it is now; else None."""
        if cfg.method != "dwf" or not cfg.distill:
            return None
        distillation = Distillation(cfg.distill, cfg.distill_temperature, cfg.distill_schedule)
        return cls(distillation, make_teacher(model).to(device))

    def objective(
        self, hard: torch.Tensor, logits: torch.Tensor, xb: torch.Tensor, comm: Comm, fraction: float
    ) -> torch.Tensor:
        """The batch's objective: ``hard`` (the CE as ``comm`` scales it) mixed with the soft term on ``xb``, scaled
        the same way (``Comm.batch_mean``: DDP's average of the ranks' gradients stays the global batch's)."""
        with torch.no_grad():
            teacher_logits = self.teacher(xb)
        soft = comm.batch_mean(self.distillation.soft_sum(logits, teacher_logits), int(xb.shape[0]))
        return self.distillation.mix(hard, soft, fraction)

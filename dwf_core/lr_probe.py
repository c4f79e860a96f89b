"""The learning-rate probe: before a run whose LR the user left open, try the first steps at a ladder of settings
and train with the largest step that learns.

The default LRs (DWF 0.3, baselines 0.1, SGD with momentum 0.9) were measured on LeNet-300-100. Some models cannot
take them: LeNet-5-Caffe diverges within 7–9 steps at 0.3 without clipping, and a BERT-style encoder stays at chance
with SGD at 0.3 or 0.1 and trains at 0.033 or 0.011 with the gradient norm clipped. The restarts of
dwf_core.divergence catch a NaN loss or a one-class model after the fact, an epoch or more in; the probe measures
first, on the user's model and data:

- the ladder is the restarts' own (dwf_core.divergence.restart_record): the configured peak LR and clip, then the
  gradient norm clipped at 5, then the peak LR divided by 3 per rung, ``RUNGS`` settings in all. A rung that only
  adds a clip its unclipped twin never reached is skipped: it would repeat that rung exactly;
- each rung trains the run's first ``probe_steps`` steps from the same initial weights, RNG state and data order,
  with the run's own step (factor decay, masks, the LR schedule's first values), and is scored by its training loss
  over its last quarter of those steps (batch statistics, as training sees them: the validation loss in eval mode
  judged a timm ResNet's BatchNorm running statistics, which lag after 20 steps at a large LR, and sent every
  baseline to LR 0.033–0.011, GMP at 99% from 96.6% to 84.1%);
- a rung *learns* when its loss stayed finite and that score is below ``1 − LEARN_MARGIN`` times the loss of the
  best constant answer (the entropy of the training labels: ln 4 = 1.39 for 4 balanced classes). The first rung
  that learns is chosen and the descent stops there; it stops too, with nothing learned, once a lower LR scores
  more than ``STOP_MARGIN`` above the best rung so far. When none learns, the first finite rung is kept (nothing
  measured speaks against it) and the divergence restarts stay behind it; when none is finite, the safest;
- the optimizer race: when no SGD rung learned and neither the optimizer nor the LR was given (``optimizer_probe``),
  the kept SGD setting and Adam at ``ADAM_LR`` train ``RACE_FACTOR`` times as many steps, SGD first, and the first
  that learns is chosen. SGD stays the default optimizer: under Adam DWF lost on 7 of 8 suite pairs (docs/defaults.md);
  Adam only wins where SGD does not learn at all (README's token task: 100% where SGD ended at 40%).

Why "the largest step that learns" and not the lowest loss: the first version chose the largest step within 10% of
the best probe loss, and on the model suite's LeNet-300-100 from trained weights it took LR 0.033–0.011 (a smaller
step disturbs trained weights less in 20 steps), which cost every method at 99% sparsity (DWF 87.3% → 74.7%, GMP
87.6% → 80.4%): a few steps' loss favours small steps that the rest of the run pays for (short-horizon bias), and DWF
prunes through its large LR (LeNet-300-100, 40 epochs: LR 0.1 → CR 3.7, 0.3 → CR 97). docs/defaults.md, "The LR
probe", has the runs.

Training then starts over from the initial state at the chosen setting: the run is the run a user would get by
passing that LR and clip (tested), and the divergence restarts still guard it. The record
(``TrainResult.extra["lr_probe"]``, metrics.json ``lr_probe``) lists every rung's setting and score, the choice and
the probe's cost in steps and seconds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from dwf_core import defaults
from dwf_core.distributed import SINGLE
from dwf_core.divergence import NonFiniteLoss

if TYPE_CHECKING:
    from dwf_core.train import Trainer

# Settings tried: the configured one and up to RUNGS − 1 safer ones (clip, then ÷ 3 per rung). 5 rungs reach the
# configured LR ÷ 27: 0.011 from DWF's 0.3, 0.0037 from the baselines' 0.1.
RUNGS = 5
# Steps per rung: this share of the run's steps, within [MIN_STEPS, MAX_STEPS] and at most the run itself.
STEPS_FRACTION = 0.03
MIN_STEPS = 20
MAX_STEPS = 200
# A rung learns when its training loss is below (1 − LEARN_MARGIN) × the loss of the best constant answer.
LEARN_MARGIN = 0.10
# When no rung has learned yet, a lower LR scoring this much above the best rung so far ends the descent: on the model
# suite every lower rung then scored worse still (GRU 1.31 at 0.3, 1.38 at 0.1, 1.46 at 0.033 with chance 1.39).
STOP_MARGIN = 0.05
# When no SGD rung learns (and the optimizer was left open), the kept SGD setting and Adam at ADAM_LR race for
# RACE_FACTOR times the probe's steps. 3e-3: the better of Adam's 1e-3 and 3e-3 on the model suite (BERT-style config
# 100% vs 54%, ViT, Mixer) and on README's token task (100% vs 66% at 90% sparsity; SGD at any LR ≤ 40%).
RACE_FACTOR = 3
ADAM_LR = 3e-3
# A rung is scored by its training loss over its last steps: a quarter of them, at least MIN_WINDOW.
MIN_WINDOW = 5


@dataclass(frozen=True)
class Setting:
    """A peak LR, gradient-norm clip (None: no clipping) and optimizer."""

    lr: float
    max_grad_norm: float | None
    optimizer: str = "sgd"

    def safer(self) -> Setting:
        """The next rung down, as a divergence restart would go: clip if off, else the peak LR ÷ 3."""
        if self.max_grad_norm is None:
            return Setting(self.lr, defaults.DIVERGENCE_MAX_GRAD_NORM, self.optimizer)
        return Setting(self.lr / defaults.DIVERGENCE_LR_FACTOR, self.max_grad_norm, self.optimizer)


def ladder(start: Setting, rungs: int = RUNGS) -> list[Setting]:
    """``start`` and the ``rungs`` − 1 safer settings below it."""
    settings = [start]
    while len(settings) < rungs:
        settings.append(settings[-1].safer())
    return settings


def probe_steps(total_steps: int) -> int:
    """Steps each rung trains: STEPS_FRACTION of the run within [MIN_STEPS, MAX_STEPS], never more than the run."""
    return max(1, min(total_steps, MAX_STEPS, max(MIN_STEPS, round(STEPS_FRACTION * total_steps))))


def constant_loss(y: torch.Tensor) -> float:
    """Cross-entropy of the best constant answer (the label frequencies): the entropy of ``y`` in nats."""
    if y.numel() == 0:
        return 0.0
    p = torch.bincount(y.flatten().long().cpu()).double() / y.numel()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def learns(score: float, chance: float) -> bool:
    """Whether a rung's training loss shows learning: finite and clearly below the constant answer's loss."""
    return math.isfinite(score) and score < (1.0 - LEARN_MARGIN) * chance


def choose(scores: list[float], chance: float) -> tuple[int, str]:
    """The rung to train with and why: the first that learns; else the first finite one; else the last (safest)."""
    for i, score in enumerate(scores):
        if learns(score, chance):
            return i, "learns"
    for i, score in enumerate(scores):
        if math.isfinite(score):
            return i, "none learned: the first finite setting"
    return len(scores) - 1, "none stayed finite: the safest setting"


@dataclass
class _Outcome:
    """What one rung's steps gave: the training loss and accuracy of its last steps, why it failed (None: finite),
    and the largest gradient norm the optimizer was handed (after clipping, when on)."""

    train_loss: float
    train_accuracy: float
    failed: str | None
    max_grad_norm_seen: float


def _try(trainer: Trainer, setting: Setting, steps: int) -> _Outcome:
    """Train ``steps`` steps at ``setting`` from the initial state and score them."""
    trainer.lr, trainer.max_grad_norm, trainer.optimizer_name = setting.lr, setting.max_grad_norm, setting.optimizer
    trainer._restart()
    seen = [0.0]

    def watch_norm(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            seen[0] = max(seen[0], float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    hook = trainer.optimizer.register_step_pre_hook(watch_norm)
    try:
        return _train_and_score(trainer, steps, seen)
    finally:
        hook.remove()


def _train_and_score(trainer: Trainer, steps: int, seen: list[float]) -> _Outcome:
    """The run's first ``steps`` steps at the trainer's current setting, scored by the last quarter's loss."""
    n = int(trainer.x_train.shape[0])
    trainer.model.train()
    window = max(1, min(steps, max(MIN_WINDOW, steps // 4)))
    sums, examples = torch.zeros(2, device=trainer.device), 0
    for step in range(steps):
        if step % trainer.steps_per_epoch == 0:  # each epoch reshuffled, as the run itself does
            order = torch.randperm(n, generator=trainer.shuffle_rng)
        xb, yb = trainer._batch(order, step % trainer.steps_per_epoch)
        try:
            result = trainer._step(xb, yb, trainer._scheduled_lr())
        except NonFiniteLoss as err:
            return _Outcome(math.inf, 0.0, f"loss {err.loss} at step {step + 1}", seen[0])
        trainer.global_step += 1
        if step >= steps - window:
            sums += result.detach()
            examples += int(yb.shape[0])
    loss, accuracy = float(sums[0]) / max(examples, 1), float(sums[1]) / max(examples, 1)
    return _Outcome(loss, accuracy, None, seen[0])


def _clip_changes_nothing(previous: tuple[Setting, _Outcome] | None, setting: Setting) -> bool:
    """Whether ``setting`` only adds a clip to the previous rung (same LR, unclipped, finite) that its steps never
    reached: clipping would then change no step, and the rung would repeat the previous one exactly."""
    if previous is None or setting.max_grad_norm is None:
        return False
    before, outcome = previous
    return (
        before.max_grad_norm is None
        and before.lr == setting.lr
        and outcome.failed is None
        and outcome.max_grad_norm_seen <= setting.max_grad_norm
    )


def _slower_still(rungs: list[dict[str, Any]], scores: list[float]) -> bool:
    """Whether the last rung lowered the LR (not only clipped) and scored worse than the best finite rung so far by
    more than STOP_MARGIN. A clip alone may score worse by chance (the BERT-style suite pair: 1.50 → 1.66 at LR 0.1,
    then 1.40 at 0.033 and 0.10 at 0.011), so only a lower LR ends the descent."""
    last = scores[-1]
    if len(rungs) < 2 or not math.isfinite(last) or rungs[-1]["lr"] >= rungs[-2]["lr"]:
        return False
    best = min(s for s in scores if math.isfinite(s))
    return last > (1.0 + STOP_MARGIN) * best


def run_probe(trainer: Trainer) -> dict[str, Any]:
    """Probe the ladder from the trainer's configured setting, leave the trainer at the chosen one (restarted from
    its initial state) and return the record. Rank 0 of a distributed run probes alone; the other ranks take the
    chosen setting when they follow rank 0 (``Trainer._follow_rank0``).
    """
    t0 = time.monotonic()
    comm, net = trainer.comm, trainer.net
    trainer.comm, trainer.net = SINGLE, trainer.model  # one process, the plain model: no collective to wait for
    steps = probe_steps(trainer.total_steps)
    chance = constant_loss(trainer.y_train)
    rungs: list[dict[str, Any]] = []
    scores: list[float] = []
    try:
        previous: tuple[Setting, _Outcome] | None = None
        tried: list[Setting] = []
        for setting in ladder(Setting(trainer.lr, trainer.max_grad_norm, trainer.optimizer_name)):
            if _clip_changes_nothing(previous, setting):
                continue
            outcome = _try(trainer, setting, steps)
            previous = (setting, outcome)
            tried.append(setting)
            rungs.append(_rung(setting, outcome, steps))
            scores.append(outcome.train_loss)
            if learns(outcome.train_loss, chance):
                break  # the largest step that learns: smaller ones are not tried
            if _slower_still(rungs, scores):
                break  # nothing learned, and a smaller step did clearly worse: smaller ones would too
        index, reason = choose(scores, chance)
        if reason != "learns" and trainer.config.optimizer_probe and trainer.config.optimizer == "sgd":
            index, reason = _race(trainer, tried[index], steps, chance, rungs, scores, index, reason)
            tried += [Setting(r["lr"], r["max_grad_norm"], r["optimizer"]) for r in rungs[len(tried) :]]
        pick = tried[index]
        trainer.lr, trainer.max_grad_norm, trainer.optimizer_name = pick.lr, pick.max_grad_norm, pick.optimizer
        trainer._restart()
    finally:
        trainer.comm, trainer.net = comm, net
    return {
        "steps": steps,
        "constant_loss": chance,
        "learns_below": (1.0 - LEARN_MARGIN) * chance,
        "rungs": rungs,
        "chosen": index,
        "reason": reason,
        "lr": trainer.lr,
        "max_grad_norm": trainer.max_grad_norm,
        "optimizer": trainer.optimizer_name,
        "seconds": time.monotonic() - t0,
    }


def _rung(setting: Setting, outcome: _Outcome, steps: int) -> dict[str, Any]:
    return {
        "lr": setting.lr,
        "max_grad_norm": setting.max_grad_norm,
        "optimizer": setting.optimizer,
        "steps": steps,
        "train_loss": outcome.train_loss if outcome.failed is None else None,
        "train_accuracy": outcome.train_accuracy,
        "failed": outcome.failed,
        "max_grad_norm_seen": outcome.max_grad_norm_seen,
    }


def _race(
    trainer: Trainer,
    kept: Setting,
    steps: int,
    chance: float,
    rungs: list[dict[str, Any]],
    scores: list[float],
    index: int,
    reason: str,
) -> tuple[int, str]:
    """No SGD rung learned in ``steps``: train the kept SGD setting and Adam at ``ADAM_LR`` for RACE_FACTOR times as
    many steps (within the run), SGD first; the first that learns is chosen, else the kept setting stays. Appends
    the rungs it ran to ``rungs`` and ``scores``; returns the chosen index and why."""
    long = min(trainer.total_steps, RACE_FACTOR * steps)
    if long <= steps:
        return index, reason  # the probe already ran the whole run
    candidates = [Setting(ADAM_LR, None, "adam")]
    if math.isfinite(scores[index]):
        candidates.insert(0, kept)
    for setting in candidates:
        outcome = _try(trainer, setting, long)
        rungs.append(_rung(setting, outcome, long))
        scores.append(outcome.train_loss)
        if learns(outcome.train_loss, chance):
            return len(rungs) - 1, f"learns in {long} steps (no setting learned in {steps})"
    return index, reason


def probe_message(record: dict[str, Any]) -> str:
    """One line for a user: what the probe tried and what the run trains with."""
    tried = ", ".join(
        f"{r.get('optimizer', 'sgd')} lr {r['lr']:.3g}{_clip_suffix(r['max_grad_norm'])}"
        + ("" if r.get("steps") in (None, record["steps"]) else f" ({r['steps']} steps)")
        + ": "
        + (f"failed ({r['failed']})" if r["failed"] else f"training loss {r['train_loss']:.3g}")
        for r in record["rungs"]
    )
    clip = "no gradient clipping" if record["max_grad_norm"] is None else "gradient norm clipped at "
    clip += "" if record["max_grad_norm"] is None else f"{record['max_grad_norm']:g}"
    return (
        f"learning-rate probe ({record['steps']} steps per setting, learning below training loss "
        f"{record['learns_below']:.3g}; {tried}): training with {record.get('optimizer', 'sgd')}, peak lr "
        f"{record['lr']:.3g} and {clip} "
        f"({record['reason']})"
    )


def _clip_suffix(max_grad_norm: float | None) -> str:
    return "" if max_grad_norm is None else f" clip {max_grad_norm:g}"

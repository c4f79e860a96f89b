"""Restarts after a non-finite training loss (or a model stuck on one class, dwf_core.one_class): what each changes,
how it is told, and the error once none is left.

A loss that turns NaN or ±inf means a step too large for the model: LeNet-5-Caffe diverges within 7 steps at DWF's
default LR 0.3, a transformer with SGD at LR 0.3 after ~50. Failing the run would leave the user to guess a safer
setting, so ``Trainer.fit`` starts over from the same initial weights, RNG state and data order (the machinery of
the λ restart), at most ``defaults.MAX_DIVERGENCE_RESTARTS`` times, each time with a safer setting:

- gradient clipping off: clip the gradient norm at ``defaults.DIVERGENCE_MAX_GRAD_NORM``, same peak LR. DWF prunes
  through its large LR (LeNet-300-100, 40 epochs: LR 0.1 → CR 3.7, LR 0.3 → CR 97), and clipping alone trains
  LeNet-5-Caffe at LR 0.3 (2 epochs: 98.48% / 98.58% test on seeds 0 / 1, vs 98.40% / 98.25% at LR 0.1 and
  98.27% / 98.00% at LR 0.075, each clipped; docs/defaults.md);
- clipping on (the user's or an earlier restart's): the peak LR divided by ``defaults.DIVERGENCE_LR_FACTOR``.

Each restart is a record in metrics.json (``divergence_restarts``) and in the checkpoints, so a resumed run trains
with the setting the uninterrupted one had reached.
"""

from __future__ import annotations

from typing import Any

from dwf_core import defaults
from dwf_core.errors import TrainingError


class NonFiniteLoss(TrainingError):
    """A step's training loss was NaN or ±inf (code ``non_finite_loss``); ``fit`` restarts while it may."""

    def __init__(self, loss: float, lr: float, lam: float, global_step: int) -> None:
        super().__init__(
            f"training loss became {loss} at step {global_step} (lr={lr:.4g}, λ={lam:.3g})",
            code="non_finite_loss",
            param="lr",
        )
        self.loss = loss


# Why an attempt was abandoned: its loss became NaN/inf at a step, or (dwf_core.one_class) at an epoch's end the model
# answered one class for every validation example.
NON_FINITE_LOSS = "non_finite_loss"
ONE_CLASS = "one_class"


def restart_record(
    *,
    epoch: int,
    step: int,
    global_step: int,
    loss: float,
    lr: float,
    max_grad_norm: float | None,
    restart: int,
    reason: str = NON_FINITE_LOSS,
) -> dict[str, Any]:
    """What attempt ``restart`` (1-based) ran into and the setting the next attempt gets: clipping if it was off,
    else the peak LR / DIVERGENCE_LR_FACTOR.

    ``step`` is 1-based within ``epoch``, ``global_step`` counts the attempt's steps before the failing one; the
    LRs are peak LRs (the schedule's value at step 0), and the loss a string since JSON has no NaN.
    """
    clipped = max_grad_norm is not None
    return {
        "reason": reason,
        "restart": restart,
        "epoch": epoch,
        "step": step,
        "global_step": global_step,
        "loss": str(loss),
        "lr_before": lr,
        "lr_after": lr / defaults.DIVERGENCE_LR_FACTOR if clipped else lr,
        "max_grad_norm_before": max_grad_norm,
        "max_grad_norm_after": max_grad_norm if clipped else defaults.DIVERGENCE_MAX_GRAD_NORM,
    }


def setting_after(lr: float, max_grad_norm: float | None, restarts: list[dict[str, Any]]) -> tuple[float, float | None]:
    """Peak LR and gradient-norm clip of the attempt that follows ``restarts`` (the configured ones without)."""
    if not restarts:
        return lr, max_grad_norm
    last = restarts[-1]
    return float(last["lr_after"]), last["max_grad_norm_after"]


def _clip_text(max_grad_norm: float | None) -> str:
    return "no gradient clipping" if max_grad_norm is None else f"gradient norm clipped at {max_grad_norm:g}"


def restart_message(record: dict[str, Any]) -> str:
    """One line for a user: what went wrong where (a non-finite loss, or one class for every input) and what the
    next attempt changes."""
    if record["max_grad_norm_before"] is None:
        changes = f"the gradient norm clipped at {record['max_grad_norm_after']:g}"
    else:
        changes = f"peak lr {record['lr_after']:.3g}"
    if "lam_after" in record:  # DWF's one-class restart lowers λ too
        changes += f" and λ {record['lam_after']:.3g}"
    if record.get("reason") == ONE_CLASS:
        what = (
            f"the model answered one class for every validation example after epoch {record['epoch']} "
            f"(training loss {float(record['loss']):.3g})"
        )
    else:
        what = f"training loss became {record['loss']} at epoch {record['epoch']}, step {record['step']}"
    return (
        f"{what} (peak lr {record['lr_before']:.3g}, {_clip_text(record['max_grad_norm_before'])}): restart "
        f"{record['restart']} of at most {defaults.MAX_DIVERGENCE_RESTARTS} from the initial weights with {changes}"
    )


def diverged_error(restarts: list[dict[str, Any]], last: dict[str, Any], lam: float) -> TrainingError:
    """The ``non_finite_loss`` error once the restarts are used up, naming every attempt's setting and failure."""
    attempts = [*restarts, last]
    tried = "; ".join(
        f"peak lr {a['lr_before']:.3g} with {_clip_text(a['max_grad_norm_before'])}: "
        f"{a['loss']} at epoch {a['epoch']}, step {a['step']}"
        for a in attempts
    )
    advice = "lower the learning rate or λ"
    if last["max_grad_norm_before"] is None:
        advice += ", clip gradients (max_grad_norm, e.g. 5)"
    which = "the only attempt" if len(attempts) == 1 else f"each of {len(attempts)} attempts from the initial weights"
    return TrainingError(
        f"training loss became non-finite in {which} (λ={lam:.3g}; {tried}); {advice}, or check the data for "
        "extreme values",
        code="non_finite_loss",
        param="lr",
    )

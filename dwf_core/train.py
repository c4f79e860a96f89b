"""The DWF trainer: factorize, optimise with the factor decay, evaluate and checkpoint every epoch.

Data are in-memory tensors (a dataset split), shuffled by a dedicated seeded generator, so a run is
deterministic on CPU and a resumed run repeats the uninterrupted one exactly: the checkpoint holds the
factors, the optimizer state, the step count (the LR schedule is a pure function of it) and both RNG states.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwf_core import defaults
from dwf_core.augment import BatchAugmenter, check_images, parse_augment
from dwf_core.checkpoint import (
    Checkpoint,
    load_checkpoint,
    optimizer_from_parts,
    optimizer_to_parts,
    save_checkpoint,
)
from dwf_core.config import TrainConfig
from dwf_core.continuation import apply_start_state
from dwf_core.controller import ControllerSettings, next_lam, scheduled_sparsity, target_met
from dwf_core.denormals import flush_denormals, flushing
from dwf_core.distill import Distiller
from dwf_core.distributed import SINGLE, Comm
from dwf_core.divergence import ONE_CLASS, NonFiniteLoss, diverged_error, restart_record, setting_after
from dwf_core.errors import DwfError, TrainingError
from dwf_core.evaluate import Labeled, evaluate
from dwf_core.factorize import factorize, init_stats, is_factorized
from dwf_core.gradual_cut import GradualCut
from dwf_core.lr_probe import run_probe
from dwf_core.masking import GrowingMasks
from dwf_core.one_class import predicts_one_class
from dwf_core.penalty import factor_penalty, factor_weight_decay, misalignment, param_groups
from dwf_core.precision import autocast_dtype, precision_name
from dwf_core.report import sparsity_report
from dwf_core.schedule import lr_at
from dwf_core.state_dict import load_tensors
from dwf_core.structured.control import control_lam
from dwf_core.structured.gates import attach_gates, has_gates
from dwf_core.structured.unit_cut import GradualUnitCut


class TrainingCancelled(DwfError):
    """Raised between two steps when ``should_stop`` says so; the last checkpoint stays valid."""

    code = "cancelled"


@dataclass(frozen=True)
class ProgressEvent:
    """What the progress callback receives: every ``progress_every`` steps ("step"), per epoch ("epoch", with
    ``metrics``; ``metrics["restart"]`` when λ over-pruned and training starts over) and when a non-finite loss
    restarts training ("restart", with ``restart``: the record listed in metrics.json ``divergence_restarts``)."""

    kind: str
    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int
    global_step: int
    total_steps: int
    loss: float
    lr: float
    elapsed_s: float
    metrics: dict[str, Any] | None = None
    restart: dict[str, Any] | None = None
    # The running attempt: 1, plus one per restart (λ or divergence). Its steps and seconds in this process (counted
    # from the restart, or from the resume of a resumed run) are what the ETA extrapolates.
    attempt: int = 1
    attempt_steps: int = 0
    attempt_elapsed_s: float = 0.0
    # kind "probe": the LR probe's record (dwf_core.lr_probe), sent once before the first epoch.
    probe: dict[str, Any] | None = None

    @property
    def fraction(self) -> float:
        """Fraction of the running attempt's training steps done (back to 0 after a restart)."""
        return self.global_step / self.total_steps if self.total_steps else 1.0

    @property
    def eta_s(self) -> float | None:
        """Seconds the running attempt still needs at its pace so far (None before its first step): abandoned
        attempts and the epochs a resumed run skipped count neither as time spent nor as progress made."""
        if self.global_step >= self.total_steps:
            return 0.0
        if self.attempt_steps <= 0:
            return None
        return self.attempt_elapsed_s * (self.total_steps - self.global_step) / self.attempt_steps


@dataclass
class TrainResult:
    """A trained factorized model and what happened on the way."""

    model: nn.Module
    config: TrainConfig
    history: list[dict[str, Any]]
    init_stats: dict[str, dict[str, float]]
    device: str
    train_seconds: float
    resumed_from_epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """ "auto" picks CUDA, then Apple MPS, then CPU; an explicit device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(
            "device 'cuda' requested but CUDA is not available", code="device_unavailable", param="device"
        )
    return device


def initial_lam(cfg: TrainConfig, total_steps: int | None = None) -> float:
    """λ of the first epoch: the setting; with a target sparsity the measured map's λ for it (scaled to the
    run's number of optimizer steps when given); else the default for the depth."""
    if cfg.lam is not None:
        return cfg.lam
    if cfg.target_sparsity is not None and cfg.method == "dwf":
        return defaults.lam_for_target(cfg.effective_depth, cfg.target_sparsity, total_steps)
    return defaults.default_lam(cfg.effective_depth)


def set_lam(optimizer: torch.optim.Optimizer, lam: float) -> None:
    """Give every factor group the coupled decay 2λ/D for its depth."""
    for group in optimizer.param_groups:
        if group.get("dwf") == "factors":
            group["weight_decay"] = factor_weight_decay(lam, int(group["depth"]))


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, lam: float | None = None, name: str | None = None
) -> torch.optim.Optimizer:
    """SGD or Adam (``name``, else the config's) with the DWF parameter groups (coupled decay 2λ/D on factors; λ
    defaults to the config's)."""
    assert cfg.lr is not None
    groups = param_groups(model, initial_lam(cfg) if lam is None else lam, other_weight_decay=cfg.weight_decay)
    # The fused kernels update parameter, gradient and state in one pass per group: on LeNet-5 (CPU) they take
    # DWF's step from 1.12× to 1.04–1.07× the dense step, since the factors triple the optimizer's work
    # (benchmarks/results/overhead.md). CPU and CUDA only; other devices keep the default implementation.
    devices = {p.device.type for group in groups for p in group["params"]}
    fused: bool | None = True if devices and devices <= {"cpu", "cuda"} else None
    if (name or cfg.optimizer) == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, fused=fused)
    return torch.optim.SGD(
        groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, fused=fused
    )


class Trainer:
    """Train one model with DWF. ``fit()`` factorizes the model (unless it already is) and trains it.

    Args:
        model: the network; factorized in place per ``config`` if it is not yet.
        train: training split (``x``, ``y`` tensors).
        val: validation split, evaluated after every epoch (never the test split).
        config: settings; ``None`` fields take the measured defaults.
        checkpoint_dir: where a checkpoint is written after every epoch; if it already holds one, training
            resumes from it.
        on_progress: called with a ``ProgressEvent`` (steps, throttled, and epochs).
        should_stop: polled before every step; when it returns True training raises ``TrainingCancelled``.
        start_state: a continued run (dwf_core.continuation): the factorized model's tensors by name, loaded over
            the fresh init after factorization; a restart goes back to them, a resume overwrites them.

    With ``config.devices`` > 1, ``fit()`` trains in that many processes (dwf_core.distributed): this one is rank 0
    and alone evaluates, decides (restarts, λ), checkpoints and calls ``on_progress``/``should_stop``.
    """

    # Whether fit() may spread the run over config.devices processes (the trainer must pickle: no closures).
    distributable = True
    # Distillation from the starting model (dwf_core.distill; set in _fit when the config asks for it).
    distiller: Distiller | None = None

    def __init__(
        self,
        model: nn.Module,
        train: Labeled,
        val: Labeled,
        config: TrainConfig | None = None,
        *,
        checkpoint_dir: str | Path | None = None,
        on_progress: Callable[[ProgressEvent], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        start_state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.config = (config or TrainConfig()).resolved()
        self.start_state = start_state
        self.model = model
        self.train_data = train
        self.val_data = val
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.history: list[dict[str, Any]] = []
        # The other ranks of a distributed run (set by dwf_core.distributed); alone by default. ``net`` is what the
        # training step calls: the model, or its DDP wrapper (evaluation and checkpoints use ``model``).
        self.comm: Comm = SINGLE
        self.net: nn.Module = model

    # -- setup -----------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        if cfg.structure != "units" and not is_factorized(self.model):
            factorize(
                self.model,
                cfg.effective_depth,
                cfg.init or "varmatch",
                cfg.include,
                cfg.exclude,
                variant=cfg.varmatch_variant,
                epsilon=cfg.epsilon,
                seed=cfg.seed,
            )
        if cfg.method == "dwf" and cfg.structure != "weights" and not has_gates(self.model):
            # D-Gating: gates on unit outputs; their decay joins the factor groups (penalty.param_groups).
            attach_gates(self.model, cfg.effective_depth, self.train_data.x[:2], cfg.include, cfg.exclude)
        self.init_stats = init_stats(self.model)
        # Restarts: λ over-pruned (_restart_if_over_pruned), loss became non-finite (_restart_after_divergence).
        self.restarts: list[dict[str, Any]] = []
        self.divergence_restarts: list[dict[str, Any]] = []
        # The peak LR and gradient-norm clip of the running attempt: the config's (or the LR probe's choice) until a
        # divergence restart.
        assert cfg.lr is not None and cfg.optimizer is not None
        self.lr, self.max_grad_norm = cfg.lr, cfg.max_grad_norm
        # The optimizer: the config's, or Adam when the LR probe found that only Adam learns (dwf_core.lr_probe).
        self.optimizer_name: str = cfg.optimizer
        self.lr_probe: dict[str, Any] | None = None
        self.device = self.comm.local_device(resolve_device(cfg.device))
        self.model.to(self.device)
        n = int(self.train_data.x.shape[0])
        if n == 0:
            raise TrainingError("the training split is empty", code="empty_dataset", param="dataset")
        if cfg.augment is not None:
            check_images(self.train_data.x, parse_augment(cfg.augment))
        self.steps_per_epoch = math.ceil(n / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        # DWF with a target: the weights beyond it are masked during training (dwf_core.gradual_cut).
        self.cut: GradualCut | None = None
        if cfg.cut == "gradual" and cfg.target_sparsity is not None:
            self.cut = GradualCut(self.model, cfg.target_sparsity, self.total_steps)
        # Structured DWF with a MAC budget: whole units masked during training (dwf_core.structured.unit_cut).
        self.unit_cut: GradualUnitCut | None = None
        if cfg.unit_cut == "gradual" and cfg.target_macs is not None:
            self.unit_cut = GradualUnitCut(
                self.model, cfg.target_macs, self.total_steps, self.train_data.x[:2], cfg.unit_multiple or 1
            )
        # Current λ: fixed, or the controller's state when a target sparsity is given (saved in checkpoints).
        self.lam0 = initial_lam(cfg, self.total_steps)
        self.lam = self.lam0
        self.controller = ControllerSettings.from_extra(cfg.extra)
        self.start_epoch = 0
        self.resumed_from: int | None = None
        self.warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.autocast_dtype = autocast_dtype(cfg.precision, self.device)
        self._start_optimization()
        # Keep the training tensors on the accelerator when they fit comfortably: no per-batch copies.
        x, y = self.train_data.x, self.train_data.y
        if self.device.type != "cpu" and x.element_size() * x.numel() < 2 * 1024**3:
            x, y = x.to(self.device), y.to(self.device)
        self.x_train, self.y_train = x, y

    def _cuts(self) -> list[GrowingMasks]:
        """The masks that grow during training: weights (gradual cut) and whole units (gradual unit cut)."""
        return [cut for cut in (self.cut, self.unit_cut) if cut is not None]

    def _keep_initial_state(self) -> None:
        """Remember what every restart starts from: taken after a subclass's preparation (e.g. masks applied) and
        before a resume loads a checkpoint, on the CPU so that an accelerator holds one copy of the weights."""
        self.initial_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        self.initial_rng = torch.get_rng_state()
        self.initial_cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None

    def _restart(self) -> None:
        """Start training over from the initial weights, RNG state and data order, at the λ₀, peak LR and clip
        the caller has set (a λ or a divergence restart); the history of the abandoned attempt is dropped."""
        load_tensors(self.model, self.initial_state)
        torch.set_rng_state(self.initial_rng)
        if self.initial_cuda_rng is not None:
            torch.cuda.set_rng_state(self.initial_cuda_rng, self.device)
        self.lam = self.lam0
        for cut in self._cuts():
            cut.reset()
        self._start_optimization()
        self.history = []
        self._start_attempt_clock()

    def _start_attempt_clock(self) -> None:
        """The ETA's reference: the attempt's (or the resumed run's) step count and time now."""
        self.attempt_t0, self.attempt_step0 = time.monotonic(), self.global_step

    def _start_optimization(self) -> None:
        """Optimizer, loss scaler, data order and step count of a run starting at step 0 (also after a restart)."""
        self.optimizer = build_optimizer(self.model, self.config, self.lam, self.optimizer_name)
        # float16 autocast needs a loss scaler; bfloat16 has float32's range and does not.
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None
        # A generator of its own keeps the shuffling order independent of anything else that draws numbers.
        self.shuffle_rng = torch.Generator().manual_seed(self.config.seed + 1)
        # Training batches' random transforms (dwf_core.augment), with their own generator for the same reason.
        augment = self.config.augment
        self.augmenter = BatchAugmenter(parse_augment(augment), self.config.seed + 2) if augment is not None else None
        self.global_step = 0

    def _maybe_resume(self) -> None:
        assert self.checkpoint_dir is not None
        ckpt = load_checkpoint(self.checkpoint_dir)
        if ckpt is None:
            return
        state = ckpt.state
        # The number of processes does not change the run (same global batch): a resume may use another.
        # A setting added since the checkpoint was written (e.g. lr_probe) takes the running config's value: the saved
        # run did not have it, and it is resumed with the state it reached (its probe record, if any).
        current = self.config.to_dict()
        saved_dict = {**{k: v for k, v in current.items() if k not in state["config"]}, **state["config"]}
        saved = replace(TrainConfig.from_dict(saved_dict), devices=self.config.devices)
        if saved != self.config:
            diff = [k for k, v in self.config.to_dict().items() if saved.to_dict().get(k) != v]
            raise TrainingError(
                f"checkpoint was made with different settings ({', '.join(diff)}); use a new "
                "checkpoint directory or the same settings",
                code="checkpoint_mismatch",
                param=diff[0] if diff else None,
            )
        model_state = {k[len("model/") :]: v for k, v in ckpt.tensors.items() if k.startswith("model/")}
        try:
            load_tensors(self.model, model_state)
        except RuntimeError as exc:  # same settings, other tensors: e.g. a default selection that changed since
            raise TrainingError(
                "checkpoint does not fit the model (its tensors differ: another architecture, or weights selected "
                "for factorization by an older version); use a new checkpoint directory",
                code="checkpoint_mismatch",
                param="model",
            ) from exc
        self.model.to(self.device)
        self.lr_probe = state.get("lr_probe")
        if self.lr_probe is not None:  # the probe's choice is what the restarts started from
            self.lr, self.max_grad_norm = float(self.lr_probe["lr"]), self.lr_probe["max_grad_norm"]
            chosen = str(self.lr_probe.get("optimizer", self.optimizer_name))
            if chosen != self.optimizer_name:  # the probe raced Adam in: its state is what the checkpoint holds
                self.optimizer_name = chosen
                self.optimizer = build_optimizer(self.model, self.config, self.lam, chosen)
        self.optimizer.load_state_dict(optimizer_from_parts(ckpt.tensors, state["optimizer"]))
        self.lam = float(state.get("lam", self.lam))
        self.lam0 = float(state.get("lam0", self.lam0))
        self.restarts = list(state.get("restarts", []))
        self.divergence_restarts = list(state.get("divergence_restarts", []))
        self.lr, self.max_grad_norm = setting_after(self.lr, self.max_grad_norm, self.divergence_restarts)
        set_lam(self.optimizer, self.lam)
        torch.set_rng_state(ckpt.tensors["rng/torch"])
        self.shuffle_rng.set_state(ckpt.tensors["rng/shuffle"])
        if self.augmenter is not None and "rng/augment" in ckpt.tensors:
            self.augmenter.generator.set_state(ckpt.tensors["rng/augment"])
        if self.device.type == "cuda" and "rng/cuda" in ckpt.tensors:
            torch.cuda.set_rng_state(ckpt.tensors["rng/cuda"], self.device)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.global_step = int(state["global_step"])
        self.start_epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.init_stats = state.get("init_stats", self.init_stats)
        self.resumed_from = self.start_epoch
        if self.cut is not None:
            self.cut.load(ckpt.tensors, int(state.get("cut_events", 0)))
        if self.unit_cut is not None:
            self.unit_cut.load(ckpt.tensors, int(state.get("unit_cut_events", 0)))

    def _save(self, epoch: int) -> None:
        assert self.checkpoint_dir is not None
        opt_tensors, opt_meta = optimizer_to_parts(self.optimizer.state_dict())
        tensors = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        tensors.update(opt_tensors)
        tensors["rng/torch"] = torch.get_rng_state()
        tensors["rng/shuffle"] = self.shuffle_rng.get_state()
        if self.augmenter is not None:
            tensors["rng/augment"] = self.augmenter.generator.get_state()
        if self.device.type == "cuda":
            tensors["rng/cuda"] = torch.cuda.get_rng_state(self.device)
        for cut in self._cuts():
            tensors.update(cut.state_tensors())
        state = {
            "epoch": epoch,
            "global_step": self.global_step,
            "lam": self.lam,
            "lam0": self.lam0,
            "restarts": self.restarts,
            "divergence_restarts": self.divergence_restarts,
            "lr_probe": self.lr_probe,
            "config": self.config.to_dict(),
            "optimizer": opt_meta,
            "history": self.history,
            "init_stats": self.init_stats,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "cut_events": self.cut.events if self.cut is not None else 0,
            "unit_cut_events": self.unit_cut.events if self.unit_cut is not None else 0,
        }
        save_checkpoint(self.checkpoint_dir, epoch, Checkpoint(tensors, state))

    # -- the loop --------------------------------------------------------------------------------------
    def _batch(self, order: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``step`` of an epoch's shuffled ``order`` (this rank's share with DDP), on the training device, with
        the config's random transforms (``augment``) applied."""
        size = self.config.batch_size
        idx = self.comm.shard(order[step * size : (step + 1) * size])
        if self.x_train.device != torch.device("cpu"):
            idx = idx.to(self.x_train.device)
        xb, yb = self.x_train[idx], self.y_train[idx]
        xb, yb = xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
        return (self.augmenter(xb) if self.augmenter is not None else xb), yb

    def _scheduled_lr(self) -> float:
        """The LR of the next step: the running attempt's peak LR on the schedule at ``global_step``."""
        cfg = self.config
        return lr_at(self.global_step, self.total_steps, self.lr, schedule=cfg.schedule, warmup_steps=self.warmup_steps)

    def _step(self, xb: torch.Tensor, yb: torch.Tensor, lr: float) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        ctx = torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        with ctx:
            logits = self.net(xb)
            # The batch's mean loss; with DDP this rank's share of it (dwf_core.distributed.ProcessGroupComm.loss).
            loss, loss_sum = self.comm.loss(logits.float(), yb)
            if self.distiller is not None:
                done = self.global_step / max(self.total_steps, 1)
                loss = self.distiller.objective(loss, logits, xb, self.comm, done)
        if self.comm.any(not bool(torch.isfinite(loss))):
            raise NonFiniteLoss(float(loss.detach()), lr, self.lam, self.global_step)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()  # type: ignore[no-untyped-call]
        if self.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        for cut in self._cuts():
            cut.after_step(self.global_step + 1)
        correct = (logits.detach().argmax(dim=1) == yb).sum()
        return torch.stack([loss_sum, correct.float()])

    def _epoch_metrics(self, epoch: int, sums: torch.Tensor, seen: int, lr: float, seconds: float) -> dict[str, Any]:
        cfg = self.config
        val_loss, val_acc = evaluate(self.model, self.val_data, batch_size=cfg.eval_batch_size, device=self.device)
        monitored = sparsity_report(self.model, threshold=cfg.monitor_threshold)
        exact = sparsity_report(self.model, threshold=0.0)
        dead = sparsity_report(self.model, threshold=defaults.DEAD_THRESHOLD)
        return {
            "epoch": epoch,
            "lr": lr,
            "train_loss": float(sums[0]) / max(seen, 1),
            "train_accuracy": float(sums[1]) / max(seen, 1),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "monitor_threshold": cfg.monitor_threshold,
            "sparsity": monitored.sparsity,
            "compression_ratio": monitored.compression_ratio,
            "nnz": monitored.nnz,
            "exact_zero_sparsity": exact.sparsity,
            "dead_sparsity": dead.sparsity,
            "factor_penalty": float(factor_penalty(self.model, self.lam)),
            "misalignment": misalignment(self.model),
            "lam": self.lam,
            "epoch_seconds": seconds,
        }

    def _control(self, epoch: int, metrics: dict[str, Any]) -> None:
        """Adapt λ for the next epoch toward the sparsity schedule; records what it saw in ``metrics``."""
        cfg = self.config
        assert cfg.target_sparsity is not None
        current = float(metrics["sparsity"])  # monitored: |w| < monitor_threshold
        goal = scheduled_sparsity(cfg.target_sparsity, epoch, cfg.epochs, self.controller.ramp)
        if epoch > self.controller.hold * cfg.epochs:
            self.lam = next_lam(self.lam, current, goal, self.lam0, self.controller)
        set_lam(self.optimizer, self.lam)
        metrics.update(controller_sparsity=current, scheduled_sparsity=goal, next_lam=self.lam)

    def _restart_after_divergence(self, epoch: int, step: int, err: NonFiniteLoss) -> dict[str, Any]:
        """Restart from the initial weights with the peak LR / DIVERGENCE_LR_FACTOR and gradient clipping (if it
        was off) after a non-finite loss at ``step`` (1-based) of ``epoch``; returns the restart's record.

        Raises:
            TrainingError: ``non_finite_loss`` naming every attempt, once MAX_DIVERGENCE_RESTARTS are used up.
        """
        record = restart_record(
            epoch=epoch,
            step=step,
            global_step=self.global_step,
            loss=err.loss,
            lr=self.lr,
            max_grad_norm=self.max_grad_norm,
            restart=len(self.divergence_restarts) + 1,
        )
        if len(self.divergence_restarts) >= defaults.MAX_DIVERGENCE_RESTARTS:
            raise diverged_error(self.divergence_restarts, record, self.lam) from err
        self.divergence_restarts.append(record)
        self.lr, self.max_grad_norm = record["lr_after"], record["max_grad_norm_after"]
        self._restart()
        return record

    def _restart_if_one_class(self, epoch: int, metrics: dict[str, Any]) -> dict[str, Any] | None:
        """Restart with the safer setting of a divergence restart when the model answers one class for every
        validation example (dwf_core.one_class; the loss stayed finite); the restart's record, or None.

        Once MAX_DIVERGENCE_RESTARTS are used up, training goes on: unlike a NaN loss, a constant model still has
        weights to save, and the data may be what keeps it there. DWF with a penalty also gets λ₀ / LAM_RESTART_FACTOR:
        a λ too large for the model answers one class from the first epoch too, before any weight is dead
        (tests/dwf_core/test_lam_restart.py), and nothing seen here tells the two causes apart. Not once most weights
        are dead (masked by a pruning schedule, ``ONE_CLASS_MAX_DEAD``): such a model may answer one class for lack of
        weights, which a lower LR does not bring back.
        """
        if len(self.divergence_restarts) >= defaults.MAX_DIVERGENCE_RESTARTS:
            return None
        if float(metrics["dead_sparsity"]) >= defaults.ONE_CLASS_MAX_DEAD:
            return None
        if not predicts_one_class(self.model, self.val_data, device=self.device):
            return None
        record = restart_record(
            epoch=epoch,
            step=self.steps_per_epoch,
            global_step=self.global_step,
            loss=float(metrics["train_loss"]),
            lr=self.lr,
            max_grad_norm=self.max_grad_norm,
            restart=len(self.divergence_restarts) + 1,
            reason=ONE_CLASS,
        )
        record["val_accuracy"] = metrics["val_accuracy"]
        if self.config.method == "dwf" and self.lam0 > 0:
            record["lam_before"], record["lam_after"] = self.lam0, self.lam0 / defaults.LAM_RESTART_FACTOR
            self.lam0 = record["lam_after"]
        self.divergence_restarts.append(record)
        self.lr, self.max_grad_norm = record["lr_after"], record["max_grad_norm_after"]
        self._restart()
        return record

    def _may_restart(self) -> bool:
        """Whether an over-pruning λ may still be lowered by a restart: DWF with a target, restarts left."""
        cfg = self.config
        targeted = cfg.method == "dwf" and cfg.target_sparsity is not None
        return targeted and len(self.restarts) < defaults.MAX_LAM_RESTARTS

    def _restart_if_over_pruned(self, epoch: int, metrics: dict[str, Any]) -> bool:
        """Restart training from the initial weights with λ / LAM_RESTART_FACTOR when more weights are dead
        (|w| ≤ DEAD_THRESHOLD) than the target allows beyond its band; True when it did.

        Dead weights never come back, so the final cut at the target's quantile could only keep zeros: the run
        would miss its target and lose accuracy it cannot regain. Catching it at the first epoch where it shows
        costs those epochs, not a wasted run. The record lands in ``metrics["restart"]`` and ``self.restarts``.
        """
        cfg = self.config
        target, dead = cfg.target_sparsity, float(metrics["dead_sparsity"])
        if not self._may_restart() or target is None:
            return False
        if dead <= target or target_met(target, dead):
            return False
        record = {
            "epoch": epoch,
            "lam": self.lam,
            "dead_sparsity": dead,
            "val_accuracy": metrics["val_accuracy"],
            "next_lam": self.lam0 / defaults.LAM_RESTART_FACTOR,
        }
        self.restarts.append(record)
        metrics["restart"] = record
        self.lam0 = record["next_lam"]
        self._restart()
        return True

    def _emit(
        self,
        kind: str,
        epoch: int,
        step: int,
        loss: float,
        lr: float,
        t0: float,
        metrics: dict[str, Any] | None = None,
        restart: dict[str, Any] | None = None,
        probe: dict[str, Any] | None = None,
    ) -> None:
        if self.on_progress is not None:
            now = time.monotonic()
            self.on_progress(
                ProgressEvent(
                    kind,
                    epoch,
                    self.config.epochs,
                    step,
                    self.steps_per_epoch,
                    self.global_step,
                    self.total_steps,
                    loss,
                    lr,
                    now - t0,
                    metrics,
                    restart,
                    attempt=1 + len(self.restarts) + len(self.divergence_restarts),
                    attempt_steps=self.global_step - self.attempt_step0,
                    attempt_elapsed_s=now - self.attempt_t0,
                    probe=probe,
                )
            )

    def _end_epoch(self, epoch: int, sums: torch.Tensor, seen: int, lr: float, t0: float, epoch_start: float) -> bool:
        """Evaluate, restart or adapt λ, checkpoint and report the finished ``epoch`` (rank 0 alone with DDP);
        True when training starts over from epoch 1."""
        cfg = self.config
        metrics = self._epoch_metrics(epoch, sums, seen, lr, time.monotonic() - epoch_start)
        restart = self._restart_if_one_class(epoch, metrics)
        if restart is not None:
            self._emit("restart", epoch, self.steps_per_epoch, metrics["train_loss"], lr, t0, restart=restart)
            return True
        if cfg.target_sparsity is not None:
            self._control(epoch, metrics)
        elif cfg.target_macs is not None:
            # Structured DWF: λ follows the MACs of the live units toward the budget (dwf_core.structured.control).
            self.lam, mac_seen = control_lam(
                self.model, self.x_train[:2], cfg.target_macs, epoch, cfg.epochs, self.lam, self.lam0
            )
            set_lam(self.optimizer, self.lam)
            metrics.update(mac_seen)
        if self._restart_if_over_pruned(epoch, metrics):
            # The epoch event still goes out (with metrics["restart"]): a watcher sees why epochs start over.
            self._emit("epoch", epoch, self.steps_per_epoch, metrics["train_loss"], lr, t0, metrics)
            return True
        self.history.append(metrics)
        if self.checkpoint_dir is not None:
            self._save(epoch)
        self._emit("epoch", epoch, self.steps_per_epoch, metrics["train_loss"], lr, t0, metrics)
        return False

    def _follow_rank0(self, restarted: bool) -> bool:
        """DDP: the other ranks take rank 0's decision at an epoch's end (restart, λ, LR, clip), then its weights
        and gradual-cut masks, so every rank starts the next epoch from the same state; returns the decision. Also
        called before the first step, so that λ₀ and a resumed state are rank 0's from the start.

        The ranks' weights stay equal anyway (the same averaged gradients); the copy keeps a difference in the
        last bits (GPU kernels) from growing into different masks.
        """
        if not self.comm.distributed:
            return restarted
        mine: dict[str, Any] = {
            "restarted": restarted,
            "lam": self.lam,
            "lam0": self.lam0,
            "lr": self.lr,
            "max_grad_norm": self.max_grad_norm,
            "optimizer": self.optimizer_name,
            "restarts": self.restarts,
            "divergence_restarts": self.divergence_restarts,
        }
        decision = self.comm.share(mine)
        if not self.comm.is_main:
            self.lam0, self.lr, self.max_grad_norm = decision["lam0"], decision["lr"], decision["max_grad_norm"]
            if decision["optimizer"] != self.optimizer_name:  # the probe chose another optimizer on rank 0
                self.optimizer_name = decision["optimizer"]
                self.optimizer = build_optimizer(self.model, self.config, self.lam, self.optimizer_name)
            self.restarts, self.divergence_restarts = decision["restarts"], decision["divergence_restarts"]
            if decision["restarted"]:
                self._restart()
            self.lam = decision["lam"]
            set_lam(self.optimizer, self.lam)
        self.comm.sync_tensors(list(self.model.state_dict().values()))
        for cut in self._cuts():
            cut.masks = self.comm.share({k: v.cpu() for k, v in cut.masks.items()})
            cut.masks = {k: v.to(self.device) for k, v in cut.masks.items()}
            cut.events = self.comm.share(cut.events)
        return bool(decision["restarted"])

    def fit(self) -> TrainResult:
        """Run (or resume) training for ``config.epochs`` epochs and return the factorized model.

        Subnormal floats are flushed to zero on this thread while it trains (dwf_core.denormals: pruned weights
        sink below 1e-38, where CPU arithmetic is many times slower); the thread's setting is restored after.

        Raises:
            TrainingError: non-finite loss, a checkpoint made with other settings, an unavailable device.
            TrainingCancelled: when ``should_stop`` returned True.
            ConfigError: invalid settings.
        """
        if self.config.devices > 1 and not self.comm.distributed and self.distributable:
            from dwf_core.distributed import can_spread, fit_distributed

            # A factorized model (fine-tuning after the cut) trains in this process alone: extra["processes"] says so.
            if can_spread(self.model):
                return fit_distributed(self, resolve_device(self.config.device))
        was_flushing = flushing()
        flush_denormals(True)
        try:
            return self._fit()
        finally:
            if not was_flushing:
                flush_denormals(False)

    def _fit(self) -> TrainResult:
        self._prepare()
        if self.start_state is not None:
            apply_start_state(self.model, self.start_state)
            self.init_stats = init_stats(self.model)
        # The teacher is the model as training starts (after a continued run's factors are loaded).
        self.distiller = Distiller.for_config(self.config, self.model, self.device)
        self._keep_initial_state()
        if self.checkpoint_dir is not None:
            self._maybe_resume()  # every rank reads the same checkpoint
        t0 = time.monotonic()
        if self.config.lr_probe and self.resumed_from is None and self.comm.is_main:
            # Before DDP wraps the model: rank 0 probes alone, the others take its choice in _follow_rank0.
            self.lr_probe = run_probe(self)
            self._emit("probe", 0, 0, 0.0, self.lr, t0, probe=self.lr_probe)
        self.net = self.comm.wrap(self.model, self.device)
        self._follow_rank0(restarted=False)
        cfg = self.config
        self._start_attempt_clock()
        n = int(self.x_train.shape[0])
        lr = lr_at(self.global_step, self.total_steps, self.lr, schedule=cfg.schedule, warmup_steps=self.warmup_steps)
        epoch = self.start_epoch
        while epoch < cfg.epochs:
            epoch += 1
            self.model.train()
            epoch_start = time.monotonic()
            order = torch.randperm(n, generator=self.shuffle_rng)
            sums = torch.zeros(2, device=self.device)
            seen = 0
            restart: dict[str, Any] | None = None
            for step in range(self.steps_per_epoch):
                if self.comm.any(self.should_stop is not None and self.should_stop()):
                    raise TrainingCancelled(f"training cancelled at epoch {epoch}, step {step}")
                xb, yb = self._batch(order, step)
                lr = self._scheduled_lr()
                try:
                    sums += self._step(xb, yb, lr)
                except NonFiniteLoss as err:
                    restart = self._restart_after_divergence(epoch, step + 1, err)
                    break
                seen += int(yb.shape[0])
                self.global_step += 1
                if (step + 1) % cfg.progress_every == 0:
                    total, count = self.comm.total(sums, seen)
                    self._emit("step", epoch, step + 1, float(total[0]) / max(count, 1), lr, t0)
            if restart is not None:
                # Told at once (the abandoned epoch has no metrics): a watcher sees why epochs start over.
                self._emit("restart", epoch, restart["step"], float(restart["loss"]), lr, t0, restart=restart)
                epoch = 0
                continue
            sums, seen = self.comm.total(sums, seen)
            restarted = self.comm.is_main and self._end_epoch(epoch, sums, seen, lr, t0, epoch_start)
            if self._follow_rank0(restarted):
                epoch = 0
        return TrainResult(
            self.model,
            cfg,
            self.history,
            self.init_stats,
            str(self.device),
            time.monotonic() - t0,
            self.resumed_from,
            extra={
                "lam": self.lam,
                "lam_restarts": self.restarts,
                "lr": self.lr,
                "max_grad_norm": self.max_grad_norm,
                "optimizer": self.optimizer_name,
                "precision": precision_name(self.autocast_dtype),
                "divergence_restarts": self.divergence_restarts,
                "lr_probe": self.lr_probe,
                "cut": self.cut.describe() if self.cut is not None else None,
                "unit_cut": self.unit_cut.describe() if self.unit_cut is not None else None,
                # How many processes trained the run (config.devices, or 1 for a trainer that cannot spread).
                "processes": self.comm.world_size,
            },
        )


def train(
    model: nn.Module, train: Labeled, val: Labeled, config: TrainConfig | None = None, **kwargs: Any
) -> TrainResult:
    """Shorthand for ``Trainer(model, train, val, config, **kwargs).fit()``."""
    return Trainer(model, train, val, config, **kwargs).fit()

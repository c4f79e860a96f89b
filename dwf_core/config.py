"""TrainConfig: every training setting with its default and its allowed range, JSON round-trippable."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from dwf_core import defaults
from dwf_core.augment import parse_augment
from dwf_core.baselines import METHODS, PRUNING_METHODS
from dwf_core.distill import DEFAULT_TEMPERATURE, MAX_TEMPERATURE
from dwf_core.distributed import MAX_DEVICES
from dwf_core.errors import ConfigError
from dwf_core.factorize import MAX_DEPTH
from dwf_core.precision import PRECISIONS, Precision

MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_UNIT_MULTIPLE = 1024


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one DWF training run; ``None`` means "use the measured default" (see defaults.py)."""

    # "dwf", or a baseline trained by the same Trainer at depth 1 (dwf_core.baselines): "dense", "magnitude",
    # "magnitude-ft", "gmp", "snip", "synflow", "random". Pruning baselines need target_sparsity and take λ
    # as their L2 strength (default: the D = 1 value); their depth is always 1.
    method: str = "dwf"
    # None: defaults.depth_for_target (3, or 4 for a target sparsity ≥ 0.995).
    depth: int | None = None
    epochs: int = defaults.DEFAULT_EPOCHS
    lam: float | None = None
    # Instead of λ: the sparsity to reach. λ comes from the measured λ→CR map (divided by 4 and training restarted
    # when more weights die than the target allows) and the collapse zeroes the smallest-magnitude weights up to
    # this fraction (threshold "target"). Mutually exclusive with ``lam``.
    target_sparsity: float | None = None
    lr: float | None = None
    # Measure the peak LR (and gradient clipping) on the model before training (dwf_core.lr_probe): a few steps at
    # each rung of a ladder down from ``lr``, the largest step that learns (training loss clearly below a constant
    # answer's). None: on when ``lr`` is not given (the default LRs were measured on LeNet-300-100), off when it is.
    lr_probe: bool | None = None
    # None: SGD, unless the LR probe finds that no SGD setting learns and Adam does (``optimizer_probe``).
    optimizer: Literal["sgd", "adam"] | None = None
    # Let the LR probe race Adam when no SGD setting learns in its steps (dwf_core.lr_probe). None: on when neither the
    # optimizer nor the LR is given (and the probe runs); never without the probe.
    optimizer_probe: bool | None = None
    momentum: float = defaults.DEFAULT_MOMENTUM
    nesterov: bool = False
    batch_size: int = defaults.DEFAULT_BATCH_SIZE
    weight_decay: float = 0.0
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = 0.0
    # None: "varmatch" for a fresh model, "balanced" when pretrained weights are given (the pipeline decides).
    init: Literal["varmatch", "balanced"] | None = None
    varmatch_variant: Literal["published", "exact"] = "exact"
    epsilon: float = 0.25
    # "target" (the global magnitude quantile at target_sparsity) needs target_sparsity; "auto" becomes
    # "target" when a target is given.
    threshold: float | Literal["auto", "target"] = "auto"
    tolerance: float = defaults.DEFAULT_TOLERANCE
    monitor_threshold: float = defaults.MONITOR_THRESHOLD
    include: list[str] | None = None
    exclude: list[str] | None = None
    seed: int = 0
    device: str = "auto"
    # Processes training the run with DistributedDataParallel (dwf_core.distributed): GPUs base..base+N-1 on CUDA,
    # N gloo processes on CPU; batch_size stays the global batch, split over them. Checked against the GPUs present
    # by pipeline.prepare on the machine that trains (the service's API has none to count).
    devices: int = 1
    # Training arithmetic (dwf_core.precision): "auto" (bf16 autocast on CUDA, float32 on a CPU), "fp32", "bf16".
    precision: Precision = "auto"
    # None: no clipping, until a non-finite loss restarts training with the norm clipped at 5 (dwf_core.divergence).
    max_grad_norm: float | None = None
    eval_batch_size: int = 1000
    progress_every: int = 20
    # Epochs of fine-tuning with the zeros fixed, after the prune (magnitude-ft; None: 10% of epochs, at least 1)
    # or after DWF's collapse. DWF with None ("auto"): only when a target-sparsity cut cost more than
    # defaults.AUTO_FINETUNE_DROP validation accuracy, for 10% of the epochs (at least 1); 0: never.
    finetune_epochs: int | None = None
    # Compression ratios at which the trained model is also cut and saved (dwf_core.frontier): several
    # collapsed models along the accuracy–sparsity curve from this one run. None or []: no frontier.
    frontier: list[float] | None = None
    # DWF only: train the plain model this many epochs first (the dense baseline's settings), then factorize its
    # weights (balanced init) and run DWF from there. LeNet-300-100 at CR 100: 98.17% from 30 dense + 30 DWF
    # epochs vs 97.63% from scratch (benchmarks/results/mnist-table/lenet300-full/). 0: start from the given
    # weights (or a fresh init).
    dense_epochs: int = 0
    # DWF from a trained model (dense_epochs, or given weights that predict the data): the weight α of distillation
    # from it (dwf_core.distill), the objective then being (1 − α)·CE + α·T²·KL(starting model's outputs at
    # temperature T ‖ the student's). 0: off. None: automatic, decided by dwf_core.pipeline.prepare: on
    # (distill.TRAINED_WEIGHTS_ALPHA) when DWF starts from given weights judged trained, off otherwise (it helps from
    # a well-trained model and holds the student back from an under-trained one, docs/defaults.md); resolved()
    # turns a None left undecided into 0.
    distill: float | None = None
    distill_temperature: float = DEFAULT_TEMPERATURE
    # "constant": α throughout; "linear": α decays to 0 over the DWF steps (the labels alone at the end).
    distill_schedule: Literal["constant", "linear"] = "constant"
    # "weights": DWF, every selected weight factorized. "units": D-Gating (dwf_core.structured): each Linear neuron
    # and conv output channel gets D−1 scalar gates on its output, and L2 on gates and weights equals a group
    # L_{2/D} penalty that removes whole units. "both": factorized weights and gated units.
    structure: Literal["weights", "units", "both"] = "weights"
    # Structured runs: the fraction of the dense model's Linear/Conv MACs the collapsed model may keep. λ (from lam or
    # the default) then follows the live units' MACs toward it each epoch (dwf_core.structured.control) and the
    # collapse removes the weakest units until it fits. None: fixed λ, only units that reached zero are removed.
    target_macs: float | None = None
    # DWF with a target sparsity: how the weights beyond the target go. "gradual" (dwf_core.gradual_cut): the smallest
    # collapsed weights are masked to zero during training on GMP's cubic schedule (10%–75% of the steps), so the
    # network trains around them; "final": only the cut after training. None: "gradual" where it applies (DWF,
    # a target, structure "weights"). Model suite, 10 epochs: MLP-Mixer at 99% 57% -> 80%, the depthwise CNN at
    # 90% 61% -> 90% (docs/defaults.md, "The gradual cut").
    cut: Literal["gradual", "final"] | None = None
    # Structured runs with target_macs: how units beyond the budget go. "gradual" (dwf_core.structured.unit_cut):
    # whole units are masked during training on GMP's cubic schedule of kept MACs (10%–60% of the steps); "final":
    # λ follows the MACs and the collapse cuts the rest after training. None: "final".
    unit_cut: Literal["gradual", "final"] | None = None
    # Structured runs with target_macs: keep each Linear's and conv's units a multiple of this (a layer with fewer
    # keeps what it has), the budget's cut removing a layer's next-smallest units to get there, as Torch-Pruning's
    # round_to does. CPU GEMMs compute output units in blocks (onnxruntime's MLAS on this machine: 16; 54 units ran
    # as slowly as 64, benchmarks/results/structured/README.md) and GPU kernels favour multiples of 8. None: any count.
    unit_multiple: int | None = None
    # Structured runs: MAC fractions at which the trained model is also cut and evaluated (metrics "mac_frontier");
    # None: dwf_core.structured.settings.MAC_FRONTIER, []: none.
    mac_frontier: list[float] | None = None
    # Random transforms of every training batch, for image inputs (dwf_core.augment): "shift", "shift:N", "flip" or a
    # comma-separated combination. Every phase of a job trains on them (dense first, DWF, baselines, fine-tuning);
    # validation and test never do. None: the data as given.
    augment: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def effective_depth(self) -> int:
        """The depth the run factorizes to: the setting, else the default for the target; 1 for a baseline."""
        if self.method != "dwf":
            return 1
        return self.depth if self.depth is not None else defaults.depth_for_target(self.target_sparsity)

    def resolved(self) -> TrainConfig:
        """A copy with defaults filled in and every value range-checked.

        Raises:
            ConfigError: naming the first invalid field.
        """
        self.validate()
        dwf = self.method == "dwf"
        targeted = self.target_sparsity is not None
        optimizer: Literal["sgd", "adam"] = self.optimizer or defaults.DEFAULT_OPTIMIZER
        lr_probe = self.lr is None if self.lr_probe is None else self.lr_probe
        depth = self.effective_depth
        cfg = replace(
            self,
            depth=depth,
            # With a target, λ is the controller's state (it starts from the default for the depth), not a setting;
            # a baseline keeps λ as its L2 strength whatever its target.
            lam=None if targeted and dwf else (self._default_lam(depth) if self.lam is None else self.lam),
            # "units" trains plain weights times gates: DWF's 0.3 made LeNet-5's loss explode in the first epoch, the
            # baselines' 0.1 trains it (benchmarks/results/structured/README.md).
            optimizer=optimizer,
            lr=(defaults.DEFAULT_LR if dwf and self.structure != "units" else defaults.DEFAULT_BASELINE_LR)[optimizer]
            if self.lr is None
            else self.lr,
            lr_probe=lr_probe,
            optimizer_probe=(self.optimizer is None and self.lr is None and lr_probe)
            if self.optimizer_probe is None
            else self.optimizer_probe and lr_probe,
            init=self.init or "varmatch",
            threshold="target" if targeted and self.threshold == "auto" else self.threshold,
            cut=self.cut or ("gradual" if self._gradual_cut_applies() else None),
            distill=self.distill or 0.0,
        )
        cfg.validate()
        return cfg

    def unstructured(self) -> TrainConfig:
        """This config with every structured setting off (plain weights, no MAC budget, its cut or rounding): for the
        phases that train the plain model (a dense start, a fine-tuning after the units' cut)."""
        return replace(
            self, structure="weights", target_macs=None, mac_frontier=None, unit_cut=None, unit_multiple=None
        )

    def _gradual_cut_applies(self) -> bool:
        return self.method == "dwf" and self.target_sparsity is not None and self.structure == "weights"

    def _gradual_cut_allowed(self) -> bool:
        # Structure "both" may mask its weights gradually too, when asked (not the default: not measured there yet).
        return self.method == "dwf" and self.target_sparsity is not None and self.structure in ("weights", "both")

    def _default_lam(self, depth: int) -> float:
        # "both" keeps DWF's per-weight λ: its factor penalty acts on every weight and would prune far too hard at
        # the group λ; "units" needs the larger group λ.
        if self.method == "dwf" and self.structure == "units":
            from dwf_core.structured.settings import structured_lam

            return structured_lam(depth)
        return defaults.default_lam(depth)

    def validate(self) -> None:
        """Check ranges; raises ConfigError with ``param`` set to the field name."""

        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"{name} must be {rule}, got {getattr(self, name)!r}", param=name)

        def finite(v: Any) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

        need(self.method in METHODS, "method", "one of " + ", ".join(METHODS))
        if self.method in PRUNING_METHODS and self.target_sparsity is None:
            raise ConfigError(
                f"method {self.method!r} needs target_sparsity (the fraction of weights to prune)",
                param="target_sparsity",
            )
        need(
            self.finetune_epochs is None
            or (isinstance(self.finetune_epochs, int) and 0 <= self.finetune_epochs <= MAX_EPOCHS),
            "finetune_epochs",
            f"None or in [0, {MAX_EPOCHS}]",
        )
        need(
            self.depth is None or (isinstance(self.depth, int) and 1 <= self.depth <= MAX_DEPTH),
            "depth",
            f"None or an integer in [1, {MAX_DEPTH}]",
        )
        need(isinstance(self.epochs, int) and 1 <= self.epochs <= MAX_EPOCHS, "epochs", f"in [1, {MAX_EPOCHS}]")
        need(
            isinstance(self.dense_epochs, int) and 0 <= self.dense_epochs <= MAX_EPOCHS,
            "dense_epochs",
            f"in [0, {MAX_EPOCHS}]",
        )
        if self.dense_epochs and self.method != "dwf":
            raise ConfigError("dense_epochs applies to method 'dwf' only", param="dense_epochs")
        need(self.distill is None or (finite(self.distill) and 0 <= self.distill <= 1), "distill", "None or in [0, 1]")
        if self.distill and self.method != "dwf":
            raise ConfigError("distill applies to method 'dwf' only", param="distill")
        need(self.distill_schedule in ("constant", "linear"), "distill_schedule", "'constant' or 'linear'")
        need(
            finite(self.distill_temperature) and 0 < self.distill_temperature <= MAX_TEMPERATURE,
            "distill_temperature",
            f"in (0, {MAX_TEMPERATURE:g}]",
        )
        need(self.lam is None or (finite(self.lam) and 0 <= self.lam <= 1), "lam", "in [0, 1]")
        if self.augment is not None:
            parse_augment(self.augment)
        need(self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
        need(
            self.target_sparsity is None or (finite(self.target_sparsity) and 0 < self.target_sparsity < 1),
            "target_sparsity",
            "in (0, 1)",
        )
        if self.method == "dwf" and self.target_sparsity is not None and self.lam is not None:
            raise ConfigError(
                "target_sparsity and lam are mutually exclusive: give one (the target sets λ itself)",
                param="target_sparsity",
            )
        need(self.cut in (None, "gradual", "final"), "cut", "None, 'gradual' or 'final'")
        if self.cut is not None and not self._gradual_cut_allowed():
            raise ConfigError(
                f"cut {self.cut!r} applies to method 'dwf' with target_sparsity and structure 'weights' or 'both' only",
                param="cut",
            )
        need(self.unit_cut in (None, "gradual", "final"), "unit_cut", "None, 'gradual' or 'final'")
        if self.unit_cut is not None and self.target_macs is None:
            raise ConfigError(
                f"unit_cut {self.unit_cut!r} needs target_macs (the MAC budget the units are cut to)", param="unit_cut"
            )
        multiple = self.unit_multiple
        need(
            multiple is None
            or (isinstance(multiple, int) and not isinstance(multiple, bool) and 1 <= multiple <= MAX_UNIT_MULTIPLE),
            "unit_multiple",
            f"None or an integer in [1, {MAX_UNIT_MULTIPLE}]",
        )
        if self.unit_multiple is not None and self.target_macs is None:
            raise ConfigError(
                "unit_multiple needs target_macs (the MAC budget whose cut rounds the units)", param="unit_multiple"
            )
        need(self.lr is None or (finite(self.lr) and 0 < self.lr <= 100), "lr", "in (0, 100]")
        need(self.optimizer in (None, "sgd", "adam"), "optimizer", "'sgd' or 'adam'")
        need(finite(self.momentum) and 0 <= self.momentum < 1, "momentum", "in [0, 1)")
        need(
            isinstance(self.batch_size, int) and 1 <= self.batch_size <= MAX_BATCH_SIZE,
            "batch_size",
            f"in [1, {MAX_BATCH_SIZE}]",
        )
        need(finite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "≥ 0")
        need(self.schedule in ("cosine", "constant"), "schedule", "'cosine' or 'constant'")
        need(
            finite(self.warmup_epochs) and 0 <= self.warmup_epochs <= self.epochs,
            "warmup_epochs",
            "in [0, epochs]",
        )
        need(self.init in (None, "varmatch", "balanced"), "init", "'varmatch' or 'balanced'")
        need(self.varmatch_variant in ("published", "exact"), "varmatch_variant", "'published' or 'exact'")
        need(finite(self.epsilon) and 0 < self.epsilon < 2, "epsilon", "in (0, 2)")
        need(
            self.threshold in ("auto", "target")
            or (finite(self.threshold) and not isinstance(self.threshold, str) and self.threshold >= 0),
            "threshold",
            "'auto', 'target' or ≥ 0",
        )
        need(
            self.threshold != "target" or self.target_sparsity is not None,
            "threshold",
            "'auto' or a number unless target_sparsity is given ('target')",
        )
        need(finite(self.tolerance) and 0 <= self.tolerance < 1, "tolerance", "in [0, 1)")
        need(finite(self.monitor_threshold) and self.monitor_threshold >= 0, "monitor_threshold", "≥ 0")
        need(isinstance(self.seed, int) and 0 <= self.seed < 2**63, "seed", "an integer in [0, 2^63)")
        need(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
            "device",
            "auto/cpu/cuda/mps",
        )
        need(
            isinstance(self.devices, int) and not isinstance(self.devices, bool) and 1 <= self.devices <= MAX_DEVICES,
            "devices",
            f"an integer in [1, {MAX_DEVICES}]",
        )
        if self.devices > 1 and self.device.startswith("mps"):
            raise ConfigError("devices > 1 needs CUDA GPUs or CPU processes; MPS runs one process", param="devices")
        need(
            self.max_grad_norm is None or (finite(self.max_grad_norm) and self.max_grad_norm > 0),
            "max_grad_norm",
            "> 0",
        )
        need(
            isinstance(self.eval_batch_size, int) and 1 <= self.eval_batch_size <= MAX_BATCH_SIZE,
            "eval_batch_size",
            f"in [1, {MAX_BATCH_SIZE}]",
        )
        need(isinstance(self.progress_every, int) and self.progress_every >= 1, "progress_every", "≥ 1")
        if self.frontier is not None:
            need(
                isinstance(self.frontier, list) and all(finite(v) for v in self.frontier),
                "frontier",
                "a list of compression ratios",
            )
            from dwf_core.frontier import check_frontier

            check_frontier(self.frontier)
        from dwf_core.structured.settings import check_structure

        check_structure(self)
        for name in ("include", "exclude"):
            value = getattr(self, name)
            need(
                value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value)),
                name,
                "a list of glob strings",
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict, refusing unknown keys (a typo must not silently fall back to a default)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}", param=unknown[0])
        return cls(**data)

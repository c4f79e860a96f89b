"""Default hyperparameters, each backed by a measurement (see docs/defaults.md for the runs behind them).

A user who gives only the model, the data and the epochs (or a target sparsity) gets these. λ depends on D because the
same λ prunes more at larger D (the induced penalty λ·Σ|w|^{2/D} is steeper near zero).
"""

from __future__ import annotations

from typing import Literal

# SGD with momentum 0.9 and a large LR is what sparsifies (docs/defaults.md, D = 3, λ = 2e-4, 40 epochs):
# LR 0.1 → CR 3.7, LR 0.3 → CR 97 at 97.80%, LR 0.5 → CR 143 at 97.71%; without momentum even LR 1.0 → CR 1.9.
# 0.3 keeps the accuracy margin.
DEFAULT_OPTIMIZER: Literal["sgd", "adam"] = "sgd"
DEFAULT_MOMENTUM = 0.9
DEFAULT_BATCH_SIZE = 128
DEFAULT_EPOCHS = 40
DEFAULT_DEPTH = 3
# With a target sparsity and no depth given, D follows the target. The MNIST tables
# (benchmarks/results/mnist-table/, docs/defaults.md): D = 3 and D = 4 tie up to CR 100, D = 4 is ahead from
# CR 200 (LeNet-5 on a GPU: 98.58% vs 98.18%) and far ahead at CR 500 (LeNet-300-100: 94.96% vs 92.55%;
# LeNet-5: 96.09% vs 75.49%). D = 2 leads only at mild ratios (CR ≤ 50) and is never chosen automatically.
HIGH_TARGET_SPARSITY = 0.995  # CR 200
HIGH_TARGET_DEPTH = 4

# LR per optimizer. Adam needs a much smaller step; its value is a conservative starting point.
DEFAULT_LR = {"sgd": 0.3, "adam": 1e-3}
# Baselines train the plain (depth-1) network, where DWF's large step diverges: dense LeNet-300-100 with SGD
# momentum 0.9 at LR 0.3 sat at chance (11.35%) for 40 epochs, at LR 0.1 it reached 98.20% and at 0.05 98.15%
# after 5 epochs (docs/defaults.md).
DEFAULT_BASELINE_LR = {"sgd": 0.1, "adam": 1e-3}

# λ per depth D: the largest λ of the sweep {1e-4, 2e-4, 3e-4, 5e-4} whose sparse LeNet-300-100 kept ≥ 97.6% test
# accuracy (docs/defaults.md): D = 2 → CR 87 at 97.92%, D = 3 → CR 97 at 97.80%, D = 4 → CR 149 at 97.66%.
# D = 1 is the dense baseline (L2 weight decay 2λ), not swept.
DEFAULT_LAM = {1: 5e-4, 2: 5e-4, 3: 2e-4, 4: 2e-4}
FALLBACK_LAM = 2e-4

DEFAULT_INIT = "varmatch"
DEFAULT_VARMATCH_VARIANT = "exact"
DEFAULT_THRESHOLD = "auto"
DEFAULT_TOLERANCE = 0.001
# Fixed threshold used only for the per-epoch sparsity/CR shown while training.
MONITOR_THRESHOLD = 1e-3
# A weight at or below this magnitude has all D factors decayed: it contributes nothing measurable and never comes
# back (its gradient is the product of the other, equally tiny factors; in float32 they end as exact zeros).
DEAD_THRESHOLD = 1e-8
# With a target sparsity, λ comes from a map measured on one model (LeNet-300-100) and can be far too large for
# another (or for a short run, after the step scaling): LeNet-5 at D = 2 asked for CR 500 ended at CR 1,010–1,139
# in 20 epochs; LeNet-300-100 at D = 2 asked for CR 500 in 5 epochs lost every weight by epoch 3 (11.35%).
# When more weights are dead than the target allows (beyond the promised band), training restarts from its
# initial weights with λ divided by LAM_RESTART_FACTOR, at most MAX_LAM_RESTARTS times (docs/defaults.md).
LAM_RESTART_FACTOR = 4.0
MAX_LAM_RESTARTS = 3
# A non-finite training loss (a step too large for the model: LeNet-5-Caffe at the default LR 0.3 within 7 steps)
# restarts training from its initial weights and data order, at most MAX_DIVERGENCE_RESTARTS times, then the run
# fails with non_finite_loss. A restart turns on gradient-norm clipping at DIVERGENCE_MAX_GRAD_NORM (the MNIST
# table's setting for LeNet-5) at the same LR if it was off, else divides the peak LR by DIVERGENCE_LR_FACTOR:
# LeNet-5, 2 epochs, seeds 0 / 1, clipped at 5: LR 0.3 98.48% / 98.58%, 0.1 (÷3) 98.40% / 98.25%, 0.075 (÷4)
# 98.27% / 98.00% (docs/defaults.md, dwf_core.divergence).
DIVERGENCE_LR_FACTOR = 3.0
DIVERGENCE_MAX_GRAD_NORM = 5.0
MAX_DIVERGENCE_RESTARTS = 3
# A model answering one class for every input restarts like a NaN loss (dwf_core.one_class), unless at least this
# share of its weights is dead (|w| ≤ DEAD_THRESHOLD, e.g. masked by a pruning schedule): then
# it may lack the weights to do better, and a lower LR would only repeat the run (measured on the model suite at
# 99.5%: GMP and magnitude + FT on the 1-D and depthwise CNNs restarted 3 times each and stayed at chance).
ONE_CLASS_MAX_DEAD = 0.5


def depth_for_target(target_sparsity: float | None) -> int:
    """The depth used when none is given: DEFAULT_DEPTH, or HIGH_TARGET_DEPTH for a target ≥ HIGH_TARGET_SPARSITY."""
    high = target_sparsity is not None and target_sparsity >= HIGH_TARGET_SPARSITY
    return HIGH_TARGET_DEPTH if high else DEFAULT_DEPTH


def default_lam(depth: int) -> float:
    """λ for a depth without a measured value falls back to the D = 3 value."""
    return DEFAULT_LAM.get(depth, FALLBACK_LAM)


# Fixed-λ compression ratios measured at the default LR/momentum, 40 epochs, LeNet-300-100 on MNIST
# (benchmarks/results/defaults-main.md): (λ, CR) per depth. A target sparsity starts from the λ this map
# interpolates for it (log–log), since DWF's pruning is decided early and is nearly irreversible: a λ that
# is wrong during the first high-LR epochs cannot be corrected later (docs/defaults.md, "Target sparsity").
LAM_CR_MAP: dict[int, tuple[tuple[float, float], ...]] = {
    2: ((1e-4, 18.0), (2e-4, 45.0), (3e-4, 59.8), (5e-4, 86.7)),
    3: ((1e-4, 15.1), (2e-4, 96.9), (3e-4, 173.2), (5e-4, 239.0)),
    4: ((1e-4, 16.1), (2e-4, 149.4), (3e-4, 222.8), (5e-4, 365.7)),
}


# The map's runs took 40 epochs × 422 steps. The shrinkage of a factor over a run grows with λ·ΣLR, i.e. with
# λ × steps at a fixed schedule, so a run with fewer steps starts from a proportionally larger λ (bounded).
LAM_CR_MAP_STEPS = 40 * 422
MAX_LAM_STEP_SCALE = 16.0


def lam_for_target(depth: int, target_sparsity: float, total_steps: int | None = None) -> float:
    """The starting λ for a target sparsity: log–log interpolation of ``LAM_CR_MAP`` (end slopes beyond it),
    times LAM_CR_MAP_STEPS / total_steps clipped to [1/MAX_LAM_STEP_SCALE, MAX_LAM_STEP_SCALE] when given."""
    import math

    points = LAM_CR_MAP.get(depth) or LAM_CR_MAP[3 if depth < 3 else 4]
    log_cr = math.log(1.0 / max(1.0 - target_sparsity, 1e-12))
    xs = [math.log(cr) for _, cr in points]
    ys = [math.log(lam) for lam, _ in points]
    i = 0 if log_cr <= xs[1] else len(xs) - 2
    for j in range(len(xs) - 1):
        if xs[j] <= log_cr <= xs[j + 1]:
            i = j
            break
    slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
    lam = math.exp(ys[i] + slope * (log_cr - xs[i]))
    if total_steps:
        lam *= min(max(LAM_CR_MAP_STEPS / total_steps, 1.0 / MAX_LAM_STEP_SCALE), MAX_LAM_STEP_SCALE)
    return min(lam, 1.0)


# DWF with a target sparsity and finetune_epochs=None: when the cut at the target costs more validation accuracy
# than this (a λ that under-pruned, e.g. too few epochs), the surviving weights are fine-tuned with the zeros
# fixed for 10% of the epochs (at least 1). Within it, the method's no-fine-tuning result is kept.
AUTO_FINETUNE_DROP = 0.005

"""Initial values for the D factors of one weight tensor: balanced split and VarMatch sampling.

VarMatch (paper, Appendix D.1, as read by a third-party implementation): every factor entry is drawn from
N(0, s²) with s = σw^{1/D} and re-drawn until ε^{1/D} < |ω| < min(1, (2σw)^{1/D}), signs independent, with
ε = 0.25·σw. The truncation shrinks the variance, so the collapsed weight's std ends at ~0.8·σw
("published"). An "exact" variant would solve for the pre-truncation scale s so that E[ω²]^D = σw² holds for
the truncated distribution, i.e. the collapsed weight has exactly the target variance. That is impossible
inside the window for D ≥ 2 (its upper edge caps E[ω²]), so "exact" multiplies the truncated draws by the
analytic factor √(σw^{2/D} / E[ω²]) instead: the window stretches by that factor and the collapsed variance
is σw² in expectation.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from dwf_core.errors import ConfigError

VarMatchVariant = Literal["published", "exact"]
TargetStd = Literal["kaiming", "torch_default"]

_MAX_REDRAWS = 200


def fan_in(shape: torch.Size | tuple[int, ...]) -> int:
    """Fan-in of a Linear/Conv weight (dim 1 times the kernel size); 1-D tensors count their length."""
    if len(shape) == 0:
        return 1
    if len(shape) == 1:
        return int(shape[0])
    return int(shape[1]) * math.prod(int(s) for s in shape[2:])


def target_std(
    shape: torch.Size | tuple[int, ...], rule: TargetStd = "kaiming", *, known_fan_in: int | None = None
) -> float:
    """The std σw a standard init gives this tensor: Kaiming-normal for ReLU or torch's default uniform.

    ``known_fan_in`` replaces the one read from the shape (Linear/Conv layout), e.g. for a MatMul weight stored
    (in, out).
    """
    fi = max(known_fan_in or fan_in(shape), 1)
    if rule == "kaiming":
        return math.sqrt(2.0 / fi)
    if rule == "torch_default":
        # nn.Linear/Conv default: kaiming_uniform(a=√5) = U(±1/√fan_in), whose std is 1/√(3·fan_in).
        return 1.0 / math.sqrt(3.0 * fi)
    raise ConfigError(f"unknown target std rule {rule!r}; use 'kaiming' or 'torch_default'", param="init")


def balanced_factors(weight: torch.Tensor, depth: int) -> tuple[torch.Tensor, ...]:
    """Split w into D factors with |ω_d| = |w|^{1/D} and the sign on the first, so ∏ω_d = w (to rounding).

    Exact zeros stay exact zeros in every factor: such a weight is already pruned and stays so.
    """
    if depth == 1:
        return (weight.detach().clone(),)
    root = weight.detach().abs().pow(1.0 / depth)
    first = torch.sign(weight.detach()) * root
    return (first, *(root.clone() for _ in range(depth - 1)))


def _truncated_second_moment(scale: float, low: float, high: float) -> float:
    """E[ω²] of N(0, scale²) conditioned on low < |ω| < high."""
    a, b = low / scale, high / scale
    pdf_a, pdf_b = (
        math.exp(-a * a / 2) / math.sqrt(2 * math.pi),
        math.exp(-b * b / 2) / math.sqrt(2 * math.pi),
    )
    mass = 0.5 * (math.erf(b / math.sqrt(2)) - math.erf(a / math.sqrt(2)))
    if mass <= 1e-300:
        # Numerically empty window: the distribution sits at whichever edge is nearer the bulk.
        return low * low if a > 0 else high * high
    return scale * scale * (1.0 + (a * pdf_a - b * pdf_b) / mass)


def varmatch_bounds(sigma_w: float, depth: int, epsilon: float) -> tuple[float, float]:
    """The truncation window (ε^{1/D}, min(1, (2σw)^{1/D})) on |ω| for ε given relative to σw."""
    low = (epsilon * sigma_w) ** (1.0 / depth)
    high = min(1.0, (2.0 * sigma_w) ** (1.0 / depth))
    if not low < high:
        raise ConfigError(
            f"VarMatch window is empty (low {low:.3g} ≥ high {high:.3g}); epsilon {epsilon} is too large",
            param="init",
        )
    return low, high


def varmatch_factors(
    shape: torch.Size | tuple[int, ...],
    depth: int,
    *,
    sigma_w: float,
    variant: VarMatchVariant = "published",
    epsilon: float = 0.25,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, ...]:
    """Draw D factors by VarMatch with absolute-value truncation (see module docstring).

    Args:
        shape: shape of the weight (and of each factor).
        depth: number of factors D ≥ 1.
        sigma_w: std the collapsed weight should have (a standard init's std for this layer).
        variant: "published" (s = σw^{1/D}) or "exact" (draws rescaled so the collapsed variance is σw²).
        epsilon: lower truncation as a fraction of σw (|ω| > (ε·σw)^{1/D}).
        generator: torch RNG for reproducibility.
        dtype, device: of the returned factors.

    Returns:
        A tuple of D tensors of ``shape``.

    Raises:
        ConfigError: on an unknown variant or an empty truncation window.
    """
    if variant not in ("published", "exact"):
        raise ConfigError(f"unknown VarMatch variant {variant!r}; use 'published' or 'exact'", param="init")
    low, high = varmatch_bounds(sigma_w, depth, epsilon)
    scale = sigma_w ** (1.0 / depth)
    # The window's upper edge (2σw)^{1/D} caps E[ω²] below σw^{2/D} for D ≥ 2, so no pre-truncation scale
    # can match the variance; "exact" instead rescales the truncated draws by the analytic factor.
    rescale = 1.0
    if variant == "exact":
        rescale = math.sqrt(sigma_w ** (2.0 / depth) / _truncated_second_moment(scale, low, high))
    factors = []
    for _ in range(depth):
        # Sample on CPU in float64 so the result does not depend on the device's RNG, then cast.
        values = torch.randn(tuple(shape), generator=generator, dtype=torch.float64) * scale
        for _ in range(_MAX_REDRAWS):
            bad = (values.abs() <= low) | (values.abs() >= high)
            n_bad = int(bad.sum())
            if n_bad == 0:
                break
            values[bad] = torch.randn(n_bad, generator=generator, dtype=torch.float64) * scale
        else:
            # Pathological window: place the stragglers uniformly inside it instead of looping forever.
            bad = (values.abs() <= low) | (values.abs() >= high)
            n_bad = int(bad.sum())
            mags = low + (high - low) * torch.rand(n_bad, generator=generator, dtype=torch.float64)
            values[bad] = mags * torch.sign(torch.randn(n_bad, generator=generator, dtype=torch.float64))
        factors.append((values * rescale).to(dtype=dtype, device=device))
    return tuple(factors)


def moments(weight: torch.Tensor) -> dict[str, float]:
    """Std and (non-excess) kurtosis of a tensor's entries: the paper's diagnostic at init."""
    w = weight.detach().double().flatten()
    if w.numel() == 0:
        return {"std": 0.0, "kurtosis": 0.0}
    centered = w - w.mean()
    var = float(centered.pow(2).mean())
    kurt = float(centered.pow(4).mean() / var**2) if var > 0 else 0.0
    return {"std": math.sqrt(var), "kurtosis": kurt}

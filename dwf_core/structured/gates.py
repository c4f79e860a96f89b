"""D−1 scalar gates per unit: attach them to a model, list their optimizer groups, fold them into the weights.

A gate multiplies a unit's *output* (a forward hook), so it scales the unit's weight row and its bias alike:
a unit whose gate product is zero outputs exactly zero, and folding the gates gives a zero row and a zero bias,
which is what a compaction can remove. The gates live as a parameter ``dwf_gates`` of shape (D−1, units) on the
module itself, so the model's classes, forward and other state_dict keys stay as they are, checkpoints carry the
gates, and ``copy.deepcopy`` keeps them working (the hook reads them from the module it is called on).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from dwf_core.errors import ConfigError
from dwf_core.structured.heads import (
    attach_head_gates,
    fold_head_gates,
    gateable_attention,
    head_group_parameters,
    is_head_gated,
    projection_layers,
)
from dwf_core.structured.trace import trace_layers

GATES_ATTR = "dwf_gates"
# On a BatchNorm gated for the layer that feeds it: that layer's name, whose rows go with the norm's units.
PRODUCER_ATTR = "dwf_gated_producer"
GATED_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def units_of(module: nn.Module) -> int:
    """Output units of a Linear (features), a conv (channels) or a BatchNorm (features)."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, _BatchNorm):
        return module.num_features
    return int(module.out_channels)  # type: ignore[arg-type]


def weight_of(module: nn.Module) -> torch.Tensor:
    """``module.weight`` (computed from its factors when factorized), typed."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def bias_of(module: nn.Module) -> torch.Tensor | None:
    """``module.bias`` or None, typed."""
    bias = getattr(module, "bias", None)
    return bias if isinstance(bias, torch.Tensor) else None


def unit_shape(module: nn.Module, output: torch.Tensor | None = None) -> tuple[int, ...]:
    """Shape that broadcasts one value per unit over the module's output (channels before the spatial dims)."""
    if isinstance(module, _BatchNorm) and output is not None:
        spatial = max(output.dim() - 2, 0)  # (N, C) or (N, C, *spatial)
    else:
        spatial = len(getattr(module, "kernel_size", ()))
    return (-1, *([1] * spatial))


def gate_product(module: nn.Module) -> torch.Tensor:
    """γ_1·…·γ_{D−1} per unit (with gradient tracking)."""
    gates: torch.Tensor = getattr(module, GATES_ATTR)
    return gates.prod(dim=0)


def _gate_output(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    product = gate_product(module).to(output.dtype)
    return output * product.view(unit_shape(module, output))


def _candidates(model: nn.Module, include: Sequence[str] | None, exclude: Sequence[str] | None) -> dict[str, nn.Module]:
    """Linear/Conv modules whose ``<name>.weight`` passes the include/exclude globs (the factorization's)."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not isinstance(module, GATED_TYPES):
            continue
        full = f"{name}.weight" if name else "weight"
        if include and not any(fnmatch.fnmatchcase(full, p) for p in include):
            continue
        if exclude and any(fnmatch.fnmatchcase(full, p) for p in exclude):
            continue
        found[name] = module
    return found


def attach_gates(
    model: nn.Module,
    depth: int,
    example: torch.Tensor,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[str]:
    """Give every chosen Linear/Conv module D−1 gates per output unit, all at 1 (the function is unchanged).

    Args:
        model: the network (plain or factorized); changed in place.
        depth: D ≥ 2; each unit's effective weights are γ_1·…·γ_{D−1}·ω.
        example: a few real inputs; one forward pass finds which modules run and which one runs last.
        include, exclude: globs on ``<module>.weight`` names, as for factorization.

    Returns:
        The gated module names, in call order, then the attention modules gated per head. Skipped: modules the
        forward pass never calls (e.g. the out_proj of ``nn.MultiheadAttention``, whose weights are read directly)
        and the last one called, whose units are the model's outputs (logits) and cannot be removed. A layer whose
        output goes straight into an affine BatchNorm is gated on the norm's output instead (the norm would undo a
        gate before it): the norm's name is listed, its γ and β form the unit's group, and removing the unit zeroes
        them and the layer's row. Attention modules with a known head layout (``nn.MultiheadAttention``, timm's
        ``Attention``, BERT-style self-attention; their V weight passing the globs) get D−1 gates per head instead
        (``dwf_core.structured.heads``), and the Linears holding their Q, K and V rows get none of their own.

    Raises:
        ConfigError: depth < 2, gates already attached, or no module left to gate.
    """
    if not isinstance(depth, int) or depth < 2:
        raise ConfigError(f"structured DWF needs depth ≥ 2 (D − 1 gates per unit), got {depth!r}", param="depth")
    if has_gates(model):
        raise ConfigError("the model already has gates", param="structure")
    attention = gateable_attention(model, include, exclude)
    projections = projection_layers(attention)  # their units are heads (gated below), not single rows
    candidates = {n: m for n, m in _candidates(model, include, exclude).items() if m not in projections}
    trace = trace_layers(model, candidates, example)
    order = trace.order[:-1]
    if not order and not attention:
        raise ConfigError(
            "no Linear/Conv layer to gate: structured DWF needs at least one besides the output layer",
            param="structure",
        )
    gated = []
    for name in order:
        module, target = candidates[name], name
        norm = trace.normalized_by.get(name)
        if norm is not None:
            module, target = model.get_submodule(norm), norm
            if hasattr(module, GATES_ATTR):  # one norm fed by two layers: gated once, for the first
                continue
            setattr(module, PRODUCER_ATTR, name)
        weight = weight_of(module)  # a factorized weight is computed here once; only its dtype/device are used
        gates = torch.ones(depth - 1, units_of(module), dtype=weight.dtype, device=weight.device)
        module.register_parameter(GATES_ATTR, nn.Parameter(gates))
        module.register_forward_hook(_gate_output)
        gated.append(target)
    return gated + attach_head_gates(attention, depth)


def gated_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every gated module."""
    return [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, GATES_ATTR, None), nn.Parameter)]


def has_gates(model: nn.Module) -> bool:
    """Whether any module of ``model`` carries gates."""
    return bool(gated_modules(model))


def gate_depth(module: nn.Module) -> int:
    """D of a gated module: its number of gates plus one (the weight)."""
    return int(getattr(module, GATES_ATTR).shape[0]) + 1


def group_parameters(model: nn.Module) -> list[tuple[int, nn.Parameter]]:
    """(D, parameter) for every parameter of a gated unit that takes the decay 2λ/D: gates, bias, and the weight
    unless it is factorized (its factors are in the DWF groups already, at the same D); for heads, the attention's Q,
    K and V weights and biases."""
    found: list[tuple[int, nn.Parameter]] = []
    for name, module in gated_modules(model):
        depth = gate_depth(module)
        found.append((depth, getattr(module, GATES_ATTR)))
        if is_head_gated(module):
            found.extend((depth, param) for param in head_group_parameters(model, name))
            continue
        if not parametrize.is_parametrized(module, "weight"):
            found.append((depth, module.get_parameter("weight")))
        if bias_of(module) is not None:
            found.append((depth, module.get_parameter("bias")))
    return found


def gate_penalty(model: nn.Module, lam: float) -> float:
    """(λ/D)·Σγ² over all gates (the gates' share of what the decay minimises)."""
    with torch.no_grad():
        return sum(
            float(lam / gate_depth(m) * getattr(m, GATES_ATTR).double().pow(2).sum()) for _n, m in gated_modules(model)
        )


def fold_gates(model: nn.Module) -> dict[str, str | None]:
    """Multiply each unit's gate product into its weight row and bias, then drop the gates and their hook (in place).

    The model must have plain weights (collapse a factorized one first). A head-gated attention gets each head's
    product in its V rows and V bias (``heads.fold_head_gates``). Returns the names of the modules that were gated,
    in order, each with the layer that feeds it when it is a BatchNorm gated for that layer (else None); the
    function is unchanged up to float rounding.
    """
    names: dict[str, str | None] = {}
    with torch.no_grad():
        for name, module in gated_modules(model):
            if is_head_gated(module):
                fold_head_gates(model, name)
                names[name] = None
                continue
            if parametrize.is_parametrized(module, "weight"):
                raise ConfigError(f"{name}.weight is still factorized; collapse the factors first", param="model")
            product = gate_product(module).detach()
            weight, bias = weight_of(module), bias_of(module)
            weight.mul_(product.view(-1, *([1] * (weight.dim() - 1))).to(weight.dtype))
            if bias is not None:
                bias.mul_(product.to(bias.dtype))
            delattr(module, GATES_ATTR)
            producer = getattr(module, PRODUCER_ATTR, None)
            if producer is not None:
                delattr(module, PRODUCER_ATTR)
            for key, hook in list(module._forward_hooks.items()):
                if hook is _gate_output:
                    del module._forward_hooks[key]
                    module._forward_hooks_with_kwargs.pop(key, None)
                    module._forward_hooks_always_called.pop(key, None)
            names[name] = producer
    return names

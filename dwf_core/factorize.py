"""Reparametrize chosen weights of any nn.Module as the elementwise product of D factors.

Built on ``torch.nn.utils.parametrize``: each selected tensor ``module.weight`` becomes
``module.parametrizations.weight.original0 … original{D-1}``, and reading ``module.weight`` returns
ω1⊙…⊙ωD. Because the module class and forward are untouched, this works on any module, including graphs
converted from ONNX, and ``collapse`` can later turn the model back into its original classes and keys.
"""

from __future__ import annotations

import fnmatch
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from dwf_core.errors import ConfigError
from dwf_core.init import (
    TargetStd,
    VarMatchVariant,
    balanced_factors,
    moments,
    target_std,
    varmatch_factors,
)

InitName = Literal["varmatch", "balanced"]
MAX_DEPTH = 8
DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    # Decoders, upsampling heads and U-Nets; the fan-in read from their shape is the one torch's own init uses.
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Bilinear,
)
# Recurrent layers hold their matrices under per-layer names (weight_ih_l0, weight_hh_l1_reverse, the LSTM
# projection weight_hr_l0; a cell's weight_ih / weight_hh), laid out (out, in) like a Linear: every ``weight_*``
# of these is factorized by default. Left out, an LSTM classifier kept >99% of its parameters dense.
RECURRENT_TYPES: tuple[type[nn.Module], ...] = (nn.RNNBase, nn.RNNCellBase)
# Weight matrices held by modules that are no Linear/Conv, factorized by default too (fan-in read from the shape):
# nn.MultiheadAttention's Q/K/V projections (packed, or separate when kdim/vdim differ; its out_proj is a Linear) and
# embedding tables, often the largest matrices of a language model (BERT-base: 23M of its 110M parameters).
DEFAULT_MATRICES: tuple[tuple[type[nn.Module], tuple[str, ...]], ...] = (
    (nn.MultiheadAttention, ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")),
    (nn.Embedding, ("weight",)),
    (nn.EmbeddingBag, ("weight",)),
)
# transformers attention classes that hold their projections as raw (d_model, n_head, d_head) parameters used in
# einsum calls instead of Linear layers: class (module path, name) → {parameter: the dims its einsum sums over, whose
# sizes multiply to its fan-in}. XLNet's q/k/v/r read d_model ("ibh,hnd->ibnd": dim 0), its output o reads
# n_head·d_head ("ibnd,hnd->ibh": dims 1, 2); Funnel's positional r_kernel reads d_model ("td,dnh->tnh"). Left out,
# XLNet had 53% of its parameters factorized, Funnel 87%. Their (n_head, d_head) biases and segment embeddings stay
# dense, as every bias does. Looked up only once transformers is imported, like its Conv1D below.
_D_MODEL, _HEADS = (0,), (1, 2)
EINSUM_ATTENTION_WEIGHTS: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {
    ("transformers.models.xlnet.modeling_xlnet", "XLNetRelativeAttention"): {
        "q": _D_MODEL, "k": _D_MODEL, "v": _D_MODEL, "r": _D_MODEL, "o": _HEADS,
    },
    ("transformers.models.funnel.modeling_funnel", "FunnelRelMultiheadAttention"): {"r_kernel": _D_MODEL},
}  # fmt: skip
# Any module may list its own parameters that are weight matrices under this attribute, as a dict name → fan-in
# (None: read from the shape as for a Linear): they are factorized by default too, and VarMatch draws them with
# that fan-in. The ONNX intake sets it for MatMul/Gemm/Einsum weights (dwf_core.intake.onnx_trainable).
WEIGHT_FAN_IN_ATTR = "dwf_weight_fan_in"


class Product(nn.Module):
    """The parametrization w = ω1⊙…⊙ωD; ``right_inverse`` gives the balanced split so assignment works."""

    def __init__(self, depth: int, parameter_order: list[str] | None = None) -> None:
        super().__init__()
        self.depth = depth
        # The owning module's parameter names in their original order, so unfactorizing can restore the
        # exact state_dict key order (removing a parametrization appends the tensor at the end).
        self.parameter_order = list(parameter_order or [])

    def forward(self, *factors: torch.Tensor) -> torch.Tensor:
        """Multiply the factors elementwise, left to right (collapse uses the very same order)."""
        out = factors[0]
        for factor in factors[1:]:
            out = out * factor
        return out

    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Balanced factors of ``weight``; called by register_parametrization and on ``module.weight = w``."""
        return balanced_factors(weight, self.depth)

    def extra_repr(self) -> str:
        """Show D in the module repr."""
        return f"depth={self.depth}"


@dataclass(frozen=True)
class FactorizedTensor:
    """One factorized weight: its name in the original state_dict, owning module and its factors."""

    name: str
    module: nn.Module
    attr: str
    depth: int

    def factors(self) -> list[nn.Parameter]:
        """The D factor parameters, in multiplication order."""
        # right_inverse returns a tuple even for D = 1, so the factors are always original0…original{D-1}.
        plist = self.module.parametrizations[self.attr]  # type: ignore[index]
        return [getattr(plist, f"original{d}") for d in range(self.depth)]

    def weight(self) -> torch.Tensor:
        """The collapsed weight ω1⊙…⊙ωD (computed now, with gradient tracking as usual)."""
        return getattr(self.module, self.attr)  # type: ignore[no-any-return]


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_parameters(
    model: nn.Module, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> list[str]:
    """Names of the parameters ``factorize`` would choose.

    Default: the ``weight`` of every Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d and Bilinear (subclasses
    included) and of transformers' ``Conv1D``, every ``weight_*`` matrix of recurrent layers (RNN, LSTM, GRU and
    their cells), the matrices of ``DEFAULT_MATRICES`` (attention Q/K/V projections, embedding tables), the raw
    einsum projections of ``EINSUM_ATTENTION_WEIGHTS`` (XLNet's, Funnel's) and the
    parameters a module lists under ``WEIGHT_FAN_IN_ATTR`` (weight matrices of converted ONNX graphs, their
    embedding tables included). With
    ``include``, any directly owned parameter whose full name matches one of the globs (``"*.weight"``, ``"head.*"``);
    ``exclude`` globs then remove names.
    """
    chosen: list[str] = []
    for mod_name, module in model.named_modules():
        for attr, param in module.named_parameters(recurse=False):
            if param is None:
                continue
            full = f"{mod_name}.{attr}" if mod_name else attr
            selected = _matches(full, include) if include else _is_default_weight(module, attr)
            if selected and not (exclude and _matches(full, exclude)):
                chosen.append(full)
    return chosen


def _listed_weights(module: nn.Module) -> dict[str, int | None]:
    listed = getattr(module, WEIGHT_FAN_IN_ATTR, None)
    return listed if isinstance(listed, dict) else {}


def _is_transformers_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2, GPT, CTRL, …): a Linear whose weight is stored transposed, (in, out).

    Looked up only when transformers is already imported: a model of that class cannot exist otherwise, and
    dwf_core does not depend on transformers.
    """
    utils = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(utils, "Conv1D", None)
    return isinstance(conv1d, type) and isinstance(module, conv1d)


def _einsum_attention_weights(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """The raw einsum projections of a transformers attention module (``EINSUM_ATTENTION_WEIGHTS``), or {}."""
    for (path, name), attrs in EINSUM_ATTENTION_WEIGHTS.items():
        kind = getattr(sys.modules.get(path), name, None)
        if isinstance(kind, type) and isinstance(module, kind):
            return attrs
    return {}


def _is_default_weight(module: nn.Module, attr: str) -> bool:
    """Whether ``module.attr`` is a weight matrix the default selection factorizes."""
    if getattr(module, "sparse", False):  # a sparse gradient cannot flow into the factors
        return False
    if attr == "weight" and (isinstance(module, DEFAULT_LAYER_TYPES) or _is_transformers_conv1d(module)):
        return True
    if isinstance(module, RECURRENT_TYPES) and attr.startswith("weight_"):
        return True
    if attr in _einsum_attention_weights(module) and getattr(module, attr).dim() == 3:
        return True
    return attr in _listed_weights(module) or any(
        isinstance(module, kind) and attr in attrs for kind, attrs in DEFAULT_MATRICES
    )


def _known_fan_in(module: nn.Module, attr: str) -> int | None:
    """The fan-in of ``module.attr`` where its shape does not say it (None: read it from the shape)."""
    if attr == "weight" and _is_transformers_conv1d(module):
        return int(getattr(module, attr).shape[0])  # (in, out)
    summed = _einsum_attention_weights(module).get(attr)
    if summed is not None:
        shape = getattr(module, attr).shape  # (d_model, n_head, d_head)
        return math.prod(int(shape[d]) for d in summed)
    return _listed_weights(module).get(attr)


def _resolve(model: nn.Module, full_name: str) -> tuple[nn.Module, str]:
    mod_name, _, attr = full_name.rpartition(".")
    return (model.get_submodule(mod_name) if mod_name else model), attr


def _check_selection(model: nn.Module, names: list[str], include: Sequence[str] | None) -> None:
    if not names:
        what = (
            f"include={list(include)}"
            if include
            else "the default (weights of Linear, Conv, recurrent and attention layers, embedding tables)"
        )
        raise ConfigError(f"no parameter matched {what}; nothing to factorize", param="include")
    seen: dict[int, str] = {}
    for full, param in model.named_parameters(remove_duplicate=False):
        if full in names or id(param) in seen:
            if id(param) in seen and (full in names or seen[id(param)] in names):
                raise ConfigError(
                    f"parameter {full!r} is shared with {seen[id(param)]!r} (tied weights); factorizing one "
                    "copy would untie them — exclude both or neither",
                    param="exclude",
                )
            seen.setdefault(id(param), full)
    for name in names:
        module, attr = _resolve(model, name)
        param = getattr(module, attr)
        if isinstance(param, nn.parameter.UninitializedParameter):
            raise ConfigError(f"{name!r} is a lazy, uninitialized parameter; run one forward pass first", param=name)
        if not param.dtype.is_floating_point:
            raise ConfigError(f"{name!r} has dtype {param.dtype}; only floating tensors can be factorized", param=name)
        if parametrize.is_parametrized(module, attr):
            raise ConfigError(f"{name!r} is already parametrized; factorize a plain model", param=name)


def factorize(
    model: nn.Module,
    depth: int = 3,
    init: InitName = "varmatch",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    variant: VarMatchVariant = "exact",
    epsilon: float = 0.25,
    target: TargetStd = "kaiming",
    seed: int | None = 0,
) -> nn.Module:
    """Replace each selected weight w of ``model`` (in place) by D factors with w = ω1⊙…⊙ωD.

    Args:
        model: any module; its classes, forward and non-selected parameters are untouched.
        depth: D ≥ 1 (D = 1 is the dense model with the same code path: one "factor", L2 penalty).
        init: "balanced" keeps the current weights (function preserved; use with pretrained weights);
            "varmatch" draws fresh factors by the paper's VarMatch with absolute-value truncation.
        include: parameter-name globs to factorize instead of the default selection (``select_parameters``).
        exclude: parameter-name globs removed from the selection.
        variant: VarMatch reading, "published" or "exact" (variance matched after truncation).
        epsilon: VarMatch lower truncation relative to σw.
        target: which standard init's std the collapsed weights match ("kaiming" or "torch_default").
        seed: seed of the VarMatch draws (None: torch's global RNG).

    Returns:
        The same ``model`` object, now parametrized.

    Raises:
        ConfigError: bad depth/init, empty selection, tied, lazy, non-float or already parametrized weights.
            On error the model is left exactly as it was.
    """
    if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= MAX_DEPTH:
        raise ConfigError(f"depth must be an integer in [1, {MAX_DEPTH}], got {depth!r}", param="depth")
    if init not in ("varmatch", "balanced"):
        raise ConfigError(f"init must be 'varmatch' or 'balanced', got {init!r}", param="init")
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ConfigError(
            "model is already parametrized; factorize a plain model (or collapse it first)", param="model"
        )
    names = select_parameters(model, include, exclude)
    _check_selection(model, names, include)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    done: list[tuple[nn.Module, str]] = []
    try:
        for name in names:
            module, attr = _resolve(model, name)
            weight = getattr(module, attr)
            parametrize.register_parametrization(module, attr, Product(depth, _parameter_order(module)))
            done.append((module, attr))
            if init == "varmatch":
                fresh = varmatch_factors(
                    weight.shape,
                    depth,
                    sigma_w=target_std(weight.shape, target, known_fan_in=_known_fan_in(module, attr)),
                    variant=variant,
                    epsilon=epsilon,
                    generator=generator,
                    dtype=weight.dtype,
                    device=weight.device,
                )
                plist = module.parametrizations[attr]  # type: ignore[index]
                with torch.no_grad():
                    for d, value in enumerate(fresh):
                        getattr(plist, f"original{d}").copy_(value)
    except Exception:
        # Roll back so a failure never leaves a half-factorized model behind.
        for module, attr in reversed(done):
            unfactorize(module, attr)
        raise
    return model


def _parameter_order(module: nn.Module) -> list[str]:
    """``module``'s parameter names in their order before any of its tensors was factorized.

    A module with several factorized tensors (an LSTM's eight matrices) has lost the earlier ones from
    ``_parameters`` when the later ones are registered: they take the order the first one recorded.
    """
    if parametrize.is_parametrized(module):
        plists: nn.ModuleDict = getattr(module, "parametrizations")  # noqa: B009 (typed as a Tensor | Module)
        for plist in plists.values():
            if isinstance(plist[0], Product) and plist[0].parameter_order:  # type: ignore[index]
                return list(plist[0].parameter_order)  # type: ignore[index]
    return list(module._parameters)


def unfactorize(module: nn.Module, attr: str) -> None:
    """Replace the parametrization of ``module.attr`` by its current product, keeping the original key order."""
    product = module.parametrizations[attr][0]  # type: ignore[index]
    order = product.parameter_order if isinstance(product, Product) else []
    parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    if order:
        # Tensors still factorized are missing here; they return to their places when they are unfactorized.
        params = dict(module._parameters)
        ranked = [key for key in order if key in params] + [key for key in params if key not in order]
        module._parameters.clear()
        for key in ranked:
            module._parameters[key] = params[key]


def factorized_tensors(model: nn.Module) -> list[FactorizedTensor]:
    """Every tensor of ``model`` parametrized by ``Product``, with its original state_dict name."""
    found: list[FactorizedTensor] = []
    for mod_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for attr, plist in module.parametrizations.items():
            if len(plist) == 1 and isinstance(plist[0], Product):
                full = f"{mod_name}.{attr}" if mod_name else attr
                found.append(FactorizedTensor(full, module, attr, plist[0].depth))
    return found


def is_factorized(model: nn.Module) -> bool:
    """Whether any tensor of ``model`` is DWF-factorized."""
    return bool(factorized_tensors(model))


def factor_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """All factor parameters of ``model`` (each once)."""
    for tensor in factorized_tensors(model):
        yield from tensor.factors()


def init_stats(model: nn.Module) -> dict[str, dict[str, float]]:
    """Per factorized tensor: std and kurtosis of the collapsed weight (the paper's init diagnostic)."""
    with torch.no_grad():
        return {t.name: moments(t.weight()) for t in factorized_tensors(model)}

"""Sparse execution for PyTorch users: Linear layers as CSR matrices, only where that measured faster here.

A dense runtime executes every zero (onnxruntime even densifies ONNX sparse initializers when it loads them);
a CSR matrix product skips them, but pays for its indirection, so whether it wins depends on the layer's
shape, its density, the batch size, the thread count and the CPU. ``choose_layers`` therefore times each
Linear both ways on an input of the shape it really receives and keeps CSR only where it is faster by a
margin; ``load_runtime`` does that for a dwf artifact (``model.compact.safetensors``, ``model.sparse.safetensors``
or ``model.safetensors``) read into the caller's architecture, without pickle.

    model = dwf_core.build_model("lenet_300_100", num_classes=10, in_channels=1, input_shape=(1, 28, 28))
    rt = dwf_core.load_runtime(model, "out/model.compact.safetensors", example=torch.randn(1, 1, 28, 28),
                               batch_size=64)
    logits = rt.model(x)        # same outputs as the dense model, CSR layers where they were faster

Inference only: ``CsrLinear`` has no parameters and its weight is a sparse buffer, so the returned model is
not for training or for ``save_dense``; save the dense model instead.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.nn.utils import parametrize

from dwf_core.compact.inputs import IndexedLinear
from dwf_core.compact.spec import FORMAT_KEY as COMPACT_FORMAT_KEY
from dwf_core.compact.spec import load_compact
from dwf_core.errors import ConfigError, ModelError, WeightsError
from dwf_core.export import load_sparse
from dwf_core.intake import detect_model_format, load_weights
from dwf_core.sparse_format import FORMAT_NAME as SPARSE_FORMAT
from dwf_core.state_dict import load_tensors

Choice = Literal["csr", "dense"]
Source = Literal["compact", "sparse", "dense"]

# CSR must beat dense by this factor to be kept: below it, timing noise decides, and dense is the safe default.
MIN_SPEEDUP = 1.1
# Outputs of the swapped model may differ from the dense one by float summation order only.
_RTOL = 1e-4
_INT32_MAX = 2**31 - 1


def _to_csr(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out, in) as a CSR tensor with int32 indices (MKL's native width: ~5-15% faster than int64)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Sparse CSR tensor support is in beta state"
        csr = weight.detach().to_sparse_csr()
        if csr.values().numel() <= _INT32_MAX:
            csr = torch.sparse_csr_tensor(
                csr.crow_indices().to(torch.int32),
                csr.col_indices().to(torch.int32),
                csr.values(),
                csr.shape,
                check_invariants=False,  # built by to_sparse_csr above, valid by construction
            )
    return csr


class CsrLinear(nn.Module):
    """``y = x Wᵀ + b`` with W stored as a sparse CSR matrix; inference only (no parameters, no gradient).

    Computed as ``addmm(b, W, xᵀ)ᵀ``: CSR times a dense matrix is what torch (MKL on x86) runs fastest; the
    other forms measured slower on LeNet-300-100's fc1 at 99% zeros, one thread (``x @ CSR(Wᵀ)`` 3-15×,
    COO 2-6×). The product wants ``xᵀ`` contiguous: from a row-major ``x`` it is copied first (most of the
    time at batch 256: fc1 0.18 ms, against 0.042 ms when ``xᵀ`` is already contiguous). The result is returned
    as the transposed view of the contiguous ``W xᵀ``, so a following CSR layer gets its ``xᵀ`` for free
    (elementwise ops such as ReLU keep that layout). An ``IndexedLinear``'s live-column gather is kept
    (``input_index``) and done on the rows of ``xᵀ``, which also makes it contiguous.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    input_index: torch.Tensor | None

    def __init__(self, linear: nn.Linear) -> None:
        """The CSR copy of ``linear`` (an ``nn.Linear`` or ``IndexedLinear``); ``linear`` is not changed."""
        super().__init__()
        self.in_features = int(linear.in_features)
        self.out_features = int(linear.out_features)
        self.register_buffer("weight", _to_csr(linear.weight))
        bias = None if linear.bias is None else linear.bias.detach().clone().unsqueeze(1)
        self.register_buffer("bias", bias)  # (out, 1): broadcast over the batch columns of W xᵀ
        index = linear.input_index.clone() if isinstance(linear, IndexedLinear) else None
        self.register_buffer("input_index", index)

    @property
    def nnz(self) -> int:
        """Stored (non-zero) weight entries."""
        return int(self.weight.values().numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``linear(x)`` for any leading shape (``(..., in)`` → ``(..., out)``)."""
        rows = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
        cols = rows.t()
        if self.input_index is not None:
            cols = cols.index_select(0, self.input_index)
        out = (torch.mm(self.weight, cols) if self.bias is None else torch.addmm(self.bias, self.weight, cols)).t()
        return out if x.dim() == 2 else out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        """Shape and density, as ``print(model)`` shows them."""
        total = self.out_features * int(self.weight.shape[1])
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"nnz={self.nnz} ({self.nnz / max(1, total):.2%})"
        )


@dataclass
class LayerChoice:
    """One Linear layer: its shape, density, both timings at the captured input shape and what was kept."""

    name: str
    shape: tuple[int, int]  # the stored weight (out, in): for an IndexedLinear, its live columns only
    density: float
    input_shape: tuple[int, ...]
    dense_ms: float
    csr_ms: float
    chosen: Choice
    note: str | None = None  # why a layer CSR won stayed dense

    @property
    def speedup(self) -> float:
        """dense time ÷ CSR time (above 1: CSR is faster)."""
        return self.dense_ms / self.csr_ms if self.csr_ms > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """The choice as a JSON-ready dict."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "density": self.density,
            "input_shape": list(self.input_shape),
            "dense_ms": self.dense_ms,
            "csr_ms": self.csr_ms,
            "speedup": self.speedup,
            "chosen": self.chosen,
            "note": self.note,
        }


@dataclass
class RuntimeResult:
    """The model with CSR layers where they were faster, and the per-layer report that decided it."""

    model: nn.Module
    layers: list[LayerChoice] = field(default_factory=list)
    batch_size: int = 0
    threads: int = 0
    max_abs_diff: float = 0.0  # swapped vs dense model on the timing batch
    source: Source | None = None  # which artifact ``load_runtime`` read

    @property
    def csr_layers(self) -> list[str]:
        """Names of the layers now running as CSR."""
        return [layer.name for layer in self.layers if layer.chosen == "csr"]

    def to_dict(self) -> dict[str, Any]:
        """The report (without the model) as a JSON-ready dict."""
        return {
            "source": self.source,
            "batch_size": self.batch_size,
            "threads": self.threads,
            "max_abs_diff": self.max_abs_diff,
            "layers": [layer.to_dict() for layer in self.layers],
        }


def _candidates(model: nn.Module) -> dict[str, nn.Linear]:
    """Linear layers whose own forward computes their output, so a CsrLinear can stand in for them.

    Subclasses with another forward, parametrized layers (their weight is computed) and layers whose parent
    reads ``.weight`` directly instead of calling them (``nn.MultiheadAttention.out_proj``: its forward hook
    never fires, see ``_capture_inputs``) are left alone.
    """
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and type(module).forward in (nn.Linear.forward, IndexedLinear.forward)
        and not parametrize.is_parametrized(module)
        and module.weight.dim() == 2
        and module.weight.layout == torch.strided
    }


def _capture_inputs(model: nn.Module, layers: dict[str, nn.Linear], batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each layer receives (its first call) when ``model`` runs ``batch``."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, layer in layers.items():

        def hook(_module: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            if name not in seen and args and isinstance(args[0], torch.Tensor):
                seen[name] = args[0].detach().clone()

        handles.append(layer.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _median_ms(
    dense: nn.Module, csr: nn.Module, x: torch.Tensor, repeats: int, min_time_s: float
) -> tuple[float, float]:
    """Median milliseconds per call of each on ``x``, measured alternately so drifting load hits both alike."""
    for fn in (dense, csr, dense, csr):  # warm-up: first calls allocate and load code
        fn(x)
    start = time.perf_counter()
    dense(x)
    csr(x)
    once = max(time.perf_counter() - start, 1e-7)
    inner = max(1, math.ceil(min_time_s / once))  # each sample long enough for the clock
    samples: dict[int, list[float]] = {0: [], 1: []}
    for repeat in range(repeats):
        order = (0, 1) if repeat % 2 == 0 else (1, 0)
        for which in order:
            fn = (dense, csr)[which]
            start = time.perf_counter()
            for _ in range(inner):
                fn(x)
            samples[which].append((time.perf_counter() - start) * 1e3 / inner)
    return statistics.median(samples[0]), statistics.median(samples[1])


def _tensors(output: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a model output (a tensor, or tuples/lists/dicts of them)."""
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, (tuple, list)):
        for item in output:
            yield from _tensors(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from _tensors(item)


def _max_diff(reference: Any, output: Any) -> tuple[float, float]:
    """Largest |difference| between two outputs and the largest |reference| value."""
    pairs = list(zip(_tensors(reference), _tensors(output), strict=True))
    diff = max((float((a.float() - b.float()).abs().max()) for a, b in pairs if a.numel()), default=0.0)
    scale = max((float(a.float().abs().max()) for a, _ in pairs if a.numel()), default=0.0)
    return diff, scale


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def _batch(example: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    """``example``'s rows repeated to ``batch_size`` rows (``example`` itself when None)."""
    if not isinstance(example, torch.Tensor) or example.dim() == 0 or example.shape[0] == 0:
        raise ConfigError("example must be a non-empty tensor with a batch axis", param="example")
    if batch_size is None:
        return example
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}", param="batch_size")
    return example[torch.arange(batch_size) % example.shape[0]]


def _problem(model: nn.Module, batch: torch.Tensor, reference: Any) -> str | None:
    """Why ``model`` no longer reproduces ``reference`` on ``batch``, or None when it does."""
    try:
        output = model(batch)
    except Exception as exc:  # any failure of the user's forward with a CSR layer: keep that layer dense
        return f"the model fails with it as CSR: {type(exc).__name__}: {exc}"[:300]
    diff, scale = _max_diff(reference, output)
    if diff > _RTOL * (1.0 + scale):
        return f"with it as CSR the outputs change by {diff:.3g} (a module reads its weight directly?)"
    return None


def _decide(
    model: nn.Module,
    name: str,
    layer: nn.Linear,
    batch: torch.Tensor,
    reference: Any,
    settings: tuple[Choice | None, float, int, float],
) -> LayerChoice:
    """Time one layer on the input it now receives, swap it if CSR wins (or is forced) and the model still agrees."""
    force, min_speedup, repeats, min_time_ms = settings
    # Captured with the layers before it already chosen: a CSR layer's output is a transposed view, which the
    # next CSR layer reads without copying (fc2 of LeNet-300-100 at 99%, batch 256: 0.014 ms vs 0.051 ms).
    x = _capture_inputs(model, {name: layer}, batch)[name]
    csr = CsrLinear(layer)
    dense_ms, csr_ms = _median_ms(layer, csr, x, repeats, min_time_ms / 1e3)
    chosen: Choice = force or ("csr" if dense_ms >= min_speedup * csr_ms else "dense")
    note = None
    if chosen == "csr":
        _set(model, name, csr)
        note = _problem(model, batch, reference)
        if note is not None:
            _set(model, name, layer)
            chosen = "dense"
    return LayerChoice(
        name=name,
        shape=(csr.out_features, int(csr.weight.shape[1])),
        density=csr.nnz / max(1, layer.weight.numel()),
        input_shape=tuple(int(d) for d in x.shape),
        dense_ms=dense_ms,
        csr_ms=csr_ms,
        chosen=chosen,
        note=note,
    )


def choose_layers(
    model: nn.Module,
    example: torch.Tensor,
    *,
    batch_size: int | None = None,
    threads: int | None = None,
    force: Choice | None = None,
    min_speedup: float = MIN_SPEEDUP,
    repeats: int = 7,
    min_time_ms: float = 1.0,
) -> RuntimeResult:
    """Time every Linear dense and as CSR and replace it by ``CsrLinear`` where CSR is ``min_speedup``× faster.

    Layers are decided one after the other in the order the model calls them, each timed on the input it
    receives (shape and memory layout) when the model, with the earlier layers as chosen, runs the timing batch
    (``example``'s rows repeated to ``batch_size``): ``repeats`` samples each way, alternating, medians kept. A
    layer put to CSR stays so only if the model still gives the dense outputs on that batch (a module that
    reads its ``.weight`` directly, or ``.view`` on its output, would not); otherwise it is kept dense with a
    ``note``. CPU only: the timings use no device synchronisation.

    Args:
        model: Any module, changed in place (and set to eval mode).
        example: Model input with a batch axis first.
        batch_size: Rows to time at (the batch size you will run); None: ``example``'s own.
        threads: torch intra-op threads to time with (the count you will run with); None: the current setting.
            The setting is restored afterwards.
        force: ``"csr"`` or ``"dense"`` for every layer regardless of the timings (they are still measured).
        min_speedup: dense time ÷ CSR time at or above which CSR is kept.
        repeats: Timed samples per layer and form.
        min_time_ms: Each sample repeats the call until it lasts at least this long.

    Returns:
        The model and one ``LayerChoice`` per replaceable Linear the batch reached, in call order.

    Raises:
        ConfigError: a bad ``example``, ``batch_size``, ``threads``, ``force`` or ``repeats``.
        ModelError: ``sparse_runtime_mismatch`` when the CSR layers together change the outputs although each
            alone did not (every layer is then put back).
    """
    if force not in (None, "csr", "dense"):
        raise ConfigError(f"force must be 'csr', 'dense' or None, got {force!r}", param="force")
    if repeats < 1:
        raise ConfigError(f"repeats must be at least 1, got {repeats}", param="repeats")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}", param="threads")
    batch = _batch(example, batch_size)
    model.eval()
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        layers = _candidates(model)
        # Layers never called through their forward are left out: nothing to gain, and maybe unsafe.
        order = list(_capture_inputs(model, layers, batch))
        with torch.inference_mode():
            reference = model(batch)
            settings = (force, min_speedup, repeats, min_time_ms)
            choices = [_decide(model, name, layers[name], batch, reference, settings) for name in order]
            diff, scale = _max_diff(reference, model(batch))
        if diff > _RTOL * (1.0 + scale):
            swapped = [choice.name for choice in choices if choice.chosen == "csr"]
            for name in swapped:
                _set(model, name, layers[name])
            raise ModelError(
                f"with CSR layers ({', '.join(swapped)}) the model's outputs differ from the dense model's by "
                f"{diff:.3g}; the model was left dense",
                code="sparse_runtime_mismatch",
                param="model",
            )
        return RuntimeResult(
            model=model,
            layers=choices,
            batch_size=int(batch.shape[0]),
            threads=torch.get_num_threads(),
            max_abs_diff=diff,
        )
    finally:
        torch.set_num_threads(previous_threads)


def _metadata(path: Path) -> dict[str, str]:
    """The safetensors header metadata of ``path`` (safetensors only: anything else is refused unopened)."""
    try:
        found = detect_model_format(path)
    except ModelError as exc:
        raise WeightsError(exc.message, code=exc.code, param=exc.param) from exc
    if found != "safetensors":
        raise WeightsError(
            f"{path.name!r} is not a safetensors file (detected: {found}); the sparse runtime reads dwf's "
            "model.compact.safetensors, model.sparse.safetensors or model.safetensors",
            code="unsupported_format",
            param="path",
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise WeightsError(
            f"{path.name!r} is not a readable safetensors file: {exc}", code="corrupt_file", param="path"
        ) from exc


def _load_sparse_into(model: nn.Module, path: Path) -> None:
    """Decode a dwf-sparse file and load it strictly, with a WeightsError naming the first misfit."""
    state = load_sparse(path)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"{path.name} does not match the model's state_dict keys: missing {missing[:5]}, "
            f"not in the model {unexpected[:5]}",
            code="missing_keys" if missing else "unexpected_keys",
            param=(missing or unexpected)[0],
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise WeightsError(
                f"tensor {key!r} is {list(tensor.shape)} in {path.name} but {list(expected[key].shape)} in the model",
                code="shape_mismatch",
                param=key,
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise WeightsError(f"tensor {key!r} has NaN/inf values", code="non_finite", param=key)
    load_tensors(model, state)


def load_weights_any(model: nn.Module, path: str | Path) -> Source:
    """Fill ``model`` from a dwf artifact, whichever of the three it is; returns which.

    ``model.compact.safetensors`` shrinks ``model`` first (``load_compact``); ``model.sparse.safetensors`` is
    decoded bit for bit; any other safetensors file goes through ``load_weights``' strict checks.

    Raises:
        WeightsError: not a safetensors file (pickle and the like are refused unopened), keys or shapes that do
            not fit the model, a malformed compact spec.
        ExportError: ``corrupt_sparse_file`` for an inconsistent dwf-sparse file.
    """
    source = Path(path)
    metadata = _metadata(source)
    if COMPACT_FORMAT_KEY in metadata:
        load_compact(model, source)
        return "compact"
    if metadata.get("format") == SPARSE_FORMAT:
        _load_sparse_into(model, source)
        return "sparse"
    load_weights(model, source)
    return "dense"


def load_runtime(
    model: nn.Module,
    path: str | Path,
    *,
    example: torch.Tensor,
    batch_size: int | None = None,
    threads: int | None = None,
    force: Choice | None = None,
    min_speedup: float = MIN_SPEEDUP,
    repeats: int = 7,
    min_time_ms: float = 1.0,
) -> RuntimeResult:
    """Load a dwf artifact into ``model`` and run its Linear layers as CSR where that is faster on this machine.

    Args:
        model: A freshly built model of the job's architecture (``build_model(...)``); changed in place.
        path: ``model.compact.safetensors``, ``model.sparse.safetensors`` or ``model.safetensors`` of a job.
        example: Model input with a batch axis first (its values do not matter, its shape does).
        batch_size, threads, force, min_speedup, repeats, min_time_ms: as ``choose_layers``.

    Returns:
        The model (eval mode) and the per-layer report; ``source`` says which artifact kind was read.

    Raises:
        WeightsError, ExportError: see ``load_weights_any``. ConfigError, ModelError: see ``choose_layers``.
    """
    kind = load_weights_any(model, path)
    result = choose_layers(
        model,
        example,
        batch_size=batch_size,
        threads=threads,
        force=force,
        min_speedup=min_speedup,
        repeats=repeats,
        min_time_ms=min_time_ms,
    )
    result.source = kind
    return result

"""One complete DWF run: load data and model, check them, train, collapse, evaluate, write artifacts.

``dwf train`` and the service's worker both call ``run``; ``prepare`` alone is the fast validation step
(safe model load, dataset parse, one forward pass) that the service runs before spending GPU time.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from dwf_core.augment import check_images, parse_augment
from dwf_core.batchnorm_recalibration import recalibrate_after_cut
from dwf_core.collapse import CollapseResult, collapse_and_verify
from dwf_core.config import TrainConfig
from dwf_core.controller import target_met
from dwf_core.coverage import Coverage, coverage
from dwf_core.data import DataLimits, DatasetBundle, load_dataset
from dwf_core.defaults import AUTO_FINETUNE_DROP
from dwf_core.distill import automatic_alpha
from dwf_core.errors import ConfigError, ModelError
from dwf_core.evaluate import accuracy_of, max_logit_diff, predict_logits
from dwf_core.export import export_onnx, save_dense, save_sparse, write_json_atomic
from dwf_core.files import sha256_file
from dwf_core.frontier import compute_frontier
from dwf_core.init_decision import InitDecision, decide_init
from dwf_core.intake import build_model, detect_model_format, load_onnx, load_weights, refuse_unsafe
from dwf_core.precision import autocast_dtype
from dwf_core.train import ProgressEvent, Trainer, resolve_device

ARTIFACTS = (
    "model.safetensors",
    "model.sparse.safetensors",
    "model.onnx",
    # dwf_core.compact: the model without its dead units; absent when it could not be built (metrics say why)
    "model.compact.safetensors",
    "model.compact.onnx",
    "model.compact.int8.onnx",
    "metrics.json",
)


@dataclass
class RunSpec:
    """What to sparsify, with what data and settings, and where to write the results.

    ``model`` is a zoo name, a ``.onnx`` file, or (library use) any ``nn.Module``, which is trained in place.
    """

    model: str | nn.Module
    data: str
    out_dir: Path
    weights: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    val_fraction: float = 0.1
    normalize: str = "auto"
    export_onnx: bool = True
    checkpoint_dir: Path | None = None
    data_limits: DataLimits = field(default_factory=DataLimits)
    # A local run may read an ONNX model's weights from a side file next to it (torch's dynamo exporter
    # writes one by default); the service keeps refusing external data, since uploads are single files.
    allow_onnx_external_data: bool = False
    # A continued DWF run (dwf_core.continuation): the checkpoint folder of a finished DWF run whose trained factors
    # replace the init; depth, include and exclude default to that run's.
    start_state: Path | None = None


@dataclass
class Prepared:
    """A model and dataset that passed the checks, and the settings resolved for them."""

    model: nn.Module
    data: DatasetBundle
    config: TrainConfig
    model_source: str
    coverage: Coverage
    # For a model that came with weights and no init was asked for: what they scored and the init chosen.
    init_decision: InitDecision | None = None


def model_label(spec: RunSpec) -> str:
    """How ``spec.model`` is named in metrics and file metadata."""
    return spec.model if isinstance(spec.model, str) else f"module:{type(spec.model).__name__}"


def _load_model(spec: RunSpec, data: DatasetBundle) -> tuple[nn.Module, str]:
    if isinstance(spec.model, nn.Module):  # a library user's own module (the model suite builds them so)
        return spec.model, "module"
    # Inputs follow the model: token datasets (int64 x) need a model that takes ids; an ONNX graph with an integer
    # input gets x_* values back as int64 (read as float32, exact up to 2**24); every other model takes floats.
    from dwf_core.data.tokens import as_integer_inputs, max_token_id
    from dwf_core.hf_config import FORMAT_HF_CONFIG
    from dwf_core.intake import build_hf_model
    from dwf_core.intake.input_types import onnx_takes_integers

    path = Path(spec.model)
    needs_ids = ModelError(
        f"the dataset holds token ids (input_ids_*), which need a model that takes them: a transformers "
        f"config.json or an ONNX graph with an integer input; {path.name if path.is_file() else spec.model} "
        "takes float inputs",
        code="token_input_unsupported",
        param="model",
    )
    if path.is_file():
        refuse_unsafe(path)
        fmt = detect_model_format(path)
        if fmt == FORMAT_HF_CONFIG:
            hf = build_hf_model(
                path,
                num_classes=data.num_classes,
                input_shape=data.input_shape,
                tokens=data.tokens,
                max_token_id=max_token_id(data) if data.tokens else None,
            )
            return hf, "hf-config"
        if fmt != "onnx":
            raise ModelError(
                f"{path.name}: a model file must be a self-contained .onnx graph or a transformers config.json "
                f"(got {fmt}); a .safetensors file holds weights only: pass it as weights with a zoo model or a "
                "config.json",
                code="unsupported_format",
                param="model",
            )
        graph = load_onnx(path, allow_external_data=spec.allow_onnx_external_data)
        if onnx_takes_integers(path):
            as_integer_inputs(data, path.name)
        elif data.tokens:
            raise needs_ids
        return graph, "onnx"
    if data.tokens:
        raise needs_ids
    model = build_model(
        spec.model,
        num_classes=data.num_classes,
        in_channels=data.input_shape[0] if len(data.input_shape) == 3 else None,
        input_shape=data.input_shape,
    )
    return model, "timm" if spec.model.startswith("timm:") else "zoo"


def check_forward(model: nn.Module, data: DatasetBundle, batch: int = 8) -> None:
    """One forward pass on a few training samples: the output must be (N, num_classes) and finite.

    Raises:
        ModelError: naming what the model returned versus what the dataset needs.
    """
    x = data.train.x[:batch]
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # the user's model may raise anything on a wrong input shape
        raise ModelError(
            f"the model fails on dataset inputs of shape {tuple(x.shape)}: {type(exc).__name__}: {exc}",
            code="input_shape_mismatch",
            param="model",
        ) from exc
    finally:
        model.train()
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"the model must return logits of shape (N, classes); got {shape} for N={x.shape[0]}",
            code="output_shape_mismatch",
            param="model",
        )
    if out.shape[1] < data.num_classes:
        raise ModelError(
            f"the model has {out.shape[1]} outputs but the dataset has {data.num_classes} classes",
            code="output_shape_mismatch",
            param="model",
        )
    if not torch.isfinite(out).all():
        raise ModelError("the model's output is not finite on the first batch", code="non_finite_output", param="model")


def dwf_finetune_epochs(cfg: TrainConfig, collapsed: CollapseResult) -> int:
    """Epochs of masked fine-tuning after DWF's collapse: the setting, or with None ("auto") 10% of the epochs
    (at least 1) when a target-sparsity cut cost more than ``AUTO_FINETUNE_DROP`` validation accuracy."""
    if cfg.finetune_epochs is not None:
        return cfg.finetune_epochs
    if cfg.target_sparsity is None or collapsed.factorized_accuracy is None or collapsed.collapsed_accuracy is None:
        return 0
    if collapsed.factorized_accuracy - collapsed.collapsed_accuracy <= AUTO_FINETUNE_DROP:
        return 0
    return max(1, round(0.1 * cfg.epochs))


def _train_dense_first(
    model: nn.Module,
    data: DatasetBundle,
    cfg: TrainConfig,
    hooks: dict[str, Any],
    *,
    init: Literal["varmatch", "balanced"],
) -> tuple[nn.Module, dict[str, Any]]:
    """``cfg.dense_epochs`` of the dense baseline's training (depth 1, its LR and L2), then the plain model back.

    ``init``: "varmatch" for a fresh model (as ``--method dense``), "balanced" to keep given weights. Its
    checkpoints go to a ``dense`` folder inside the run's, so a resumed run skips a finished dense phase.
    """
    from dwf_core.baselines.run import dense_config

    base = replace(cfg, lr=None, init=init, frontier=None)
    dense_cfg = replace(dense_config(base), epochs=cfg.dense_epochs)
    dense_hooks = {**hooks, "checkpoint_dir": Path(hooks["checkpoint_dir"]) / "dense"}
    trained = Trainer(model, data.train, data.val, dense_cfg, **dense_hooks).fit()
    plain = collapse_and_verify(trained.model, None, 0.0).model.to("cpu")
    info = {
        "epochs": cfg.dense_epochs,
        "lr": dense_cfg.lr,
        "l2_lam": dense_cfg.lam,
        "val_accuracy": trained.history[-1]["val_accuracy"] if trained.history else None,
        "train_seconds": trained.train_seconds,
        "divergence_restarts": trained.extra.get("divergence_restarts", []),
        "history": trained.history,
    }
    return plain, info


def _compact_and_measure(
    spec: RunSpec, plain: nn.Module, data: DatasetBundle, out: Path, artifacts: dict[str, Path]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the compact model's artifacts (added to ``artifacts``); measure both models' inference cost."""
    from dwf_core.compact import write_compact
    from dwf_core.inference import measure

    example = data.train.x[:16].contiguous()
    compact = write_compact(plain, example, out, metadata={"model": model_label(spec)}, onnx=spec.export_onnx)
    artifacts.update(compact.files)
    models: dict[str, tuple[nn.Module | None, Path | None]] = {"dense": (plain, artifacts.get("model.onnx"))}
    if compact.result is not None and "model.compact.onnx" in artifacts:
        from dwf_core.compact.quantize import INT8_ONNX, quantize_compact

        models["compact"] = (compact.result.model, artifacts["model.compact.onnx"])
        int8_info, int8 = quantize_compact(artifacts["model.compact.onnx"], data.train.x, data.test.x, data.test.y)
        compact.info["int8"] = int8_info
        if int8 is not None:
            artifacts[INT8_ONNX] = int8
            models["compact_int8"] = (None, int8)
    return compact.info, measure({k: (m, p) for k, (m, p) in models.items() if p is not None}, example)


def prepare(spec: RunSpec) -> Prepared:
    """Load and check everything that can fail before training (seconds, CPU only).

    Raises:
        DatasetError, ModelError, WeightsError, ConfigError: with ``param`` naming the culprit.
    """
    data = load_dataset(
        spec.data,
        val_fraction=spec.val_fraction,
        seed=spec.train.seed,
        normalize=spec.normalize,
        limits=spec.data_limits,
    )
    # Zoo models draw their non-factorized parameters (biases, norms) from torch's global RNG at
    # construction: seed it so the same settings give the same run in any process.
    torch.manual_seed(spec.train.seed)
    model, source = _load_model(spec, data)
    if spec.weights is not None:
        if source == "onnx":
            raise ConfigError("an ONNX model carries its own weights; drop the weights file", param="weights")
        load_weights(model, spec.weights)
    check_forward(model, data)
    if spec.train.augment is not None:  # refused here, before any training, rather than by the first Trainer
        check_images(data.train.x, parse_augment(spec.train.augment))
    # A model that starts trained (weights that predict the data, or the dense_epochs run) keeps its function: the
    # balanced init factorizes the trained weights instead of drawing new ones. Weights that came with the model
    # (a weights file, an ONNX graph's) are judged on the validation split first: untrained ones are only an
    # architecture and get VarMatch (dwf_core.init_decision).
    decision = None
    init = spec.train.init
    if init is None and spec.train.dense_epochs > 0:
        init = "balanced"
    elif init is None and (spec.weights is not None or source == "onnx"):
        decision = decide_init(model, data.val, batch_size=spec.train.eval_batch_size)
        init = decision.init
    config = replace(spec.train, init=init or "varmatch")
    if config.distill is None:  # unset: on from given trained weights (dwf_core.distill.automatic_alpha)
        given = (spec.weights is not None or source == "onnx") and spec.start_state is None
        config = replace(config, distill=automatic_alpha(config, from_given_weights=given))
    config = config.resolved()
    device = resolve_device(config.device)
    if config.devices > 1:  # a job asking for more GPUs than its worker has fails here, before any training
        from dwf_core.distributed import backend_for

        backend_for(device, config.devices)
    autocast_dtype(config.precision, device)  # likewise "bf16" on a device without it
    return Prepared(model, data, config, source, coverage(model, config.include, config.exclude), decision)


def run(
    spec: RunSpec,
    *,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train, collapse and export; returns the metrics also written to ``out_dir/metrics.json``.

    Args:
        spec: what to run.
        on_progress: training progress callback (steps and epochs).
        should_stop: polled every step; True cancels the run (``TrainingCancelled``).
        on_phase: called with "loading", ("pretraining" with dense_epochs,) "training", "collapsing", "evaluating",
            "exporting"; with finetune_epochs (DWF) also "finetuning", with a frontier also "frontier".

    ``spec.train.method`` picks DWF (default) or a baseline (dwf_core.baselines), with the same data,
    artifacts and metrics; for a pruning baseline "factorized" means the depth-1 model before collapse (for
    ``magnitude``: the dense model before pruning).

    Returns:
        The metrics dict (method, test_accuracy, target_sparsity (requested, or None), sparsity (achieved),
        compression_ratio, nnz, total, threshold, lam (final λ), layers, history…).

    Raises:
        DwfError subclasses for every anticipated failure (bad inputs, non-finite loss, cancellation).
    """
    phase = on_phase or (lambda _name: None)
    started = time.monotonic()
    phase("loading")
    start = None
    if spec.start_state is not None:
        from dwf_core.continuation import continued_config, load_start_state

        start = load_start_state(spec.start_state)
        spec = replace(spec, train=continued_config(spec.train, start))
    prepared = prepare(spec)
    cfg, data = prepared.config, prepared.data
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    phase("pretraining" if cfg.method == "dwf" and cfg.dense_epochs else "training")
    baseline_info: dict[str, Any] | None = None
    structured_info: dict[str, Any] | None = None
    finetune_info: dict[str, Any] | None = None
    recalibration: dict[str, Any] | None = None
    dense_info: dict[str, Any] | None = None
    hooks: dict[str, Any] = {
        "checkpoint_dir": spec.checkpoint_dir or out / "checkpoints",
        "on_progress": on_progress,
        "should_stop": should_stop,
    }
    if cfg.method != "dwf":
        from dwf_core.baselines.run import run_baseline

        baseline = run_baseline(prepared.model, data.train, data.val, cfg, **hooks)
        phase("collapsing")
        result, collapsed, baseline_info = baseline.train, baseline.collapsed, baseline.info
    else:
        model = prepared.model
        if cfg.dense_epochs:
            given = spec.weights is not None or prepared.model_source == "onnx"
            model, dense_info = _train_dense_first(model, data, cfg, hooks, init="balanced" if given else "varmatch")
            phase("training")
        start_tensors = start.tensors if start is not None else None
        result = Trainer(model, data.train, data.val, cfg, start_state=start_tensors, **hooks).fit()
        if dense_info is not None:
            history = [{**h, "phase": "dense"} for h in dense_info.pop("history")]
            result = replace(
                result,
                history=history + [{**h, "phase": "train"} for h in result.history],
                train_seconds=result.train_seconds + dense_info["train_seconds"],
            )

        phase("collapsing")
        if cfg.structure != "weights":
            from dwf_core.structured.run import collapse_structured, structured_finetune_epochs
            from dwf_core.structured.run import finetune_units as finetune

            collapsed, structured_info = collapse_structured(
                result.model, data.val, data.test, cfg, example=data.train.x[:2]
            )
            finetune_epochs = structured_finetune_epochs
        else:
            from dwf_core.baselines.run import finetune_collapsed as finetune

            collapsed = collapse_and_verify(
                result.model,
                data.val,
                cfg.threshold,
                tolerance=cfg.tolerance,
                batch_size=cfg.eval_batch_size,
                target_sparsity=cfg.target_sparsity,
            )
            finetune_epochs = dwf_finetune_epochs
        collapsed, recalibration = recalibrate_after_cut(
            collapsed, result.model, data.train, data.val, batch_size=cfg.eval_batch_size, seed=cfg.seed
        )
        ft_epochs = finetune_epochs(cfg, collapsed)
        if ft_epochs:
            from dwf_core.baselines.run import with_trained_optimizer

            phase("finetuning")
            dwf_val_accuracy = collapsed.factorized_accuracy
            ft, tuned, finetune_info = finetune(
                collapsed,
                data.train,
                data.val,
                replace(with_trained_optimizer(cfg, result), finetune_epochs=ft_epochs),
                on_progress=on_progress,
                should_stop=should_stop,
            )
            # The fine-tuning's own collapse measured its depth-1 model; metrics' factorized_val_accuracy and
            # max_abs_logit_diff_val describe DWF's factorized model, as factorized_test_accuracy does.
            collapsed = replace(
                tuned,
                factorized_accuracy=dwf_val_accuracy,
                max_abs_logit_diff=max_logit_diff(
                    result.model, tuned.model, data.val.x, batch_size=cfg.eval_batch_size
                ),
            )
            finetune_info["reason"] = "requested" if cfg.finetune_epochs else "auto: the target cut cost accuracy"
            finetune_info["divergence_restarts"] = ft.extra.get("divergence_restarts", [])
            history = [{"phase": "train", **h} for h in result.history] + [
                {**h, "phase": "finetune"} for h in ft.history
            ]
            result = replace(result, history=history, train_seconds=result.train_seconds + ft.train_seconds)
    plain = collapsed.model.to("cpu").eval()

    phase("evaluating")
    factorized_logits = predict_logits(result.model, data.test.x, batch_size=cfg.eval_batch_size)
    plain_logits = predict_logits(plain, data.test.x, batch_size=cfg.eval_batch_size)
    test_acc = accuracy_of(plain_logits, data.test.y)
    factorized_test_acc = accuracy_of(factorized_logits, data.test.y)

    phase("exporting")
    artifacts: dict[str, Path] = {}
    save_dense(plain, out / "model.safetensors")
    artifacts["model.safetensors"] = out / "model.safetensors"
    sparse_stats = save_sparse(
        plain,
        out / "model.sparse.safetensors",
        metadata={"model": model_label(spec), "threshold": repr(collapsed.threshold)},
    )
    artifacts["model.sparse.safetensors"] = out / "model.sparse.safetensors"
    onnx_info: dict[str, Any] = {"exported": False, "reason": "disabled"}
    if spec.export_onnx:
        onnx_result = export_onnx(plain, data.test.x[:2].contiguous(), out / "model.onnx")
        onnx_info = {k: v for k, v in onnx_result.to_dict().items() if k != "path"}
        if onnx_result.exported:
            artifacts["model.onnx"] = out / "model.onnx"
    compact_info, inference_info = _compact_and_measure(spec, plain, data, out, artifacts)

    frontier: list[dict[str, Any]] | None = None
    if cfg.frontier:
        phase("frontier")
        frontier = compute_frontier(
            result.model,
            cfg.frontier,
            data.val,
            data.test,
            out_dir=out,
            batch_size=cfg.eval_batch_size,
            metadata={"model": model_label(spec)},
            train=data.train,
        )
        for point in frontier:
            artifacts[point["file"]] = out / point["file"]

    report = collapsed.report
    threshold_mode = cfg.threshold if cfg.threshold in ("auto", "target") else "fixed"
    metrics: dict[str, Any] = {
        "method": cfg.method,
        "test_accuracy": test_acc,
        "factorized_test_accuracy": factorized_test_acc,
        "val_accuracy": collapsed.collapsed_accuracy,
        "factorized_val_accuracy": collapsed.factorized_accuracy,
        "max_abs_logit_diff_val": collapsed.max_abs_logit_diff,
        "max_abs_logit_diff_test": float((plain_logits - factorized_logits).abs().max()) if len(plain_logits) else 0.0,
        "target_sparsity": cfg.target_sparsity,
        # Within the promised band of the target (controller.target_met); None without a target.
        "target_met": None if cfg.target_sparsity is None else target_met(cfg.target_sparsity, report.sparsity),
        "sparsity": report.sparsity,
        "compression_ratio": report.compression_ratio,
        "nnz": report.nnz,
        "total": report.total,
        "sparsity_all": report.sparsity_all,
        "compression_ratio_all": report.compression_ratio_all,
        "nnz_all": report.nnz_all,
        "total_all": report.total_all,
        "threshold": collapsed.threshold,
        "threshold_mode": baseline_info["threshold_mode"] if baseline_info else threshold_mode,
        "lam": result.extra.get("lam", cfg.lam),
        # DWF with a target: each restart with a lower λ after training left more dead weights than the target allows.
        "lam_restarts": result.extra.get("lam_restarts", []),
        # DWF with a target: how the weights beyond it went. "gradual" (dwf_core.gradual_cut): its schedule, the events
        # it pruned at and the mask's sparsity at the end; "final": only the cut after training; None without a target.
        "cut": result.extra.get("cut") or ({"mode": cfg.cut} if cfg.cut else None),
        # Structured runs with target_macs and unit_cut "gradual": the unit masks' schedule and where they ended.
        "unit_cut": result.extra.get("unit_cut"),
        # Each restart from the initial weights after the training loss became NaN/inf (dwf_core.divergence), with
        # the peak LR and gradient-norm clip it switched to; "lr" and "max_grad_norm" are those of the last attempt.
        "divergence_restarts": result.extra.get("divergence_restarts", []),
        "lr": result.extra.get("lr", cfg.lr),
        "max_grad_norm": result.extra.get("max_grad_norm", cfg.max_grad_norm),
        "optimizer": result.extra.get("optimizer", cfg.optimizer),
        # What the main phase trained in: "fp32", or "bf16" / "fp16" autocast (TrainConfig.precision).
        "precision": result.extra.get("precision"),
        # The LR probe (dwf_core.lr_probe) when the LR was left open: each setting tried, its score, the choice.
        "lr_probe": result.extra.get("lr_probe"),
        "tolerance": collapsed.tolerance,
        "threshold_search": collapsed.search,
        "layers": [
            {"name": t.name, "shape": list(t.shape), "total": t.total, "nnz": t.nnz, "sparsity": t.sparsity}
            for t in report.layers
        ],
        "history": result.history,
        # Several collapsed models from this run along the accuracy–CR curve (config.frontier), or None.
        "frontier": frontier,
        # "weights" (DWF), "units" or "both" (dwf_core.structured); for the latter two, "structured" holds the MACs
        # (dense, kept, per layer), units kept per layer, the target_macs and the MAC frontier.
        "structure": cfg.structure,
        "mac_fraction": structured_info["mac_fraction"] if structured_info else None,
        "structured": structured_info,
        # Baselines: their details (depth 1, L2 λ, mask sparsity, fine-tuning, GMP window…); None for DWF.
        "baseline": baseline_info,
        # DWF: BatchNorm statistics estimated again after a cut that cost accuracy (dwf_core.batchnorm_recalibration:
        # batches, val before/after, kept); None when the model has no BatchNorm or the cut cost nothing.
        "batchnorm_recalibration": recalibration,
        # DWF with finetune_epochs: the masked fine-tuning after the collapse (epochs, lr, val before/after, kept).
        "finetune": finetune_info,
        # DWF with dense_epochs: the dense training it started from (epochs, lr, L2, val accuracy, seconds).
        "dense_start": dense_info,
        # DWF trained toward the starting model's outputs too (dwf_core.distill): α, T, schedule; None when it did not.
        "distill": {
            "alpha": cfg.distill,
            "temperature": cfg.distill_temperature,
            "schedule": cfg.distill_schedule,
            # True: the default for given trained weights chose it; False: the job asked for it.
            "automatic": spec.train.distill is None,
        }
        if cfg.distill
        else None,
        # A continued run (RunSpec.start_state): the finished run's final epoch it started from; None otherwise.
        "continued_from": start.describe() if start is not None else None,
        "init_stats": result.init_stats,
        "config": cfg.to_dict(),
        "model": {"spec": model_label(spec), "source": prepared.model_source, "weights": spec.weights},
        # What trains and what is factorized, in elements, and a warning when less than half can train.
        "parameters": prepared.coverage.to_dict(),
        # Weights that came with the model: their validation accuracy and whether DWF started from them.
        "init_decision": prepared.init_decision.to_dict() if prepared.init_decision else None,
        "dataset": data.describe(),
        "sparse_file": sparse_stats.to_dict(),
        "onnx": onnx_info,
        # The model rebuilt without its dead units (dwf_core.compact), or {"skipped": reason}.
        "compact": compact_info,
        # MACs, parameters, ONNX bytes and onnxruntime latency of the dense and compact models (dwf_core.inference).
        "inference": inference_info,
        "device": result.device,
        # Processes that trained the main phase with DDP (config.devices; dwf_core.distributed), else 1.
        "processes": result.extra.get("processes", 1),
        "train_seconds": result.train_seconds,
        "total_seconds": time.monotonic() - started,
        "resumed_from_epoch": result.resumed_from_epoch,
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
    }
    metrics["artifacts"] = [
        {"name": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)} for name, path in artifacts.items()
    ]
    write_json_atomic(metrics, out / "metrics.json")
    from dwf_core.report_html import try_write_report  # matplotlib is loaded only here

    try_write_report(out, metrics)  # report.html + plots/*.png; a failed drawing is logged, never fails the run
    return metrics

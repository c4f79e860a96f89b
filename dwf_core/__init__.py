"""dwf_core: Deep Weight Factorization for any PyTorch model, as a library.

    model = dwf_core.factorize(model, depth=3)          # w = ω1⊙ω2⊙ω3, VarMatch init
    result = dwf_core.train(model, train, val, TrainConfig(epochs=40))
    sparse = dwf_core.collapse(result.model, data=val)  # plain module, exact zeros, verified threshold
    print(dwf_core.sparsity_report(sparse).compression_ratio)

Names are imported lazily so that ``dwf_core.errors`` (used by the web API) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "factorize": "dwf_core.factorize",
    "factorized_tensors": "dwf_core.factorize",
    "select_parameters": "dwf_core.factorize",
    "init_stats": "dwf_core.factorize",
    "param_groups": "dwf_core.penalty",
    "factor_penalty": "dwf_core.penalty",
    "lq_penalty": "dwf_core.penalty",
    "misalignment": "dwf_core.penalty",
    "collapse": "dwf_core.collapse",
    "collapse_and_verify": "dwf_core.collapse",
    "CollapseResult": "dwf_core.collapse",
    "recalibrate_batchnorm": "dwf_core.batchnorm_recalibration",
    "sparsity_report": "dwf_core.report",
    "SparsityReport": "dwf_core.report",
    "TrainConfig": "dwf_core.config",
    "Trainer": "dwf_core.train",
    "TrainResult": "dwf_core.train",
    "ProgressEvent": "dwf_core.train",
    "TrainingCancelled": "dwf_core.train",
    "train": "dwf_core.train",
    "load_dataset": "dwf_core.data",
    "DatasetBundle": "dwf_core.data",
    "build_model": "dwf_core.intake",
    "load_weights": "dwf_core.intake",
    "load_onnx": "dwf_core.intake",
    "list_zoo": "dwf_core.intake",
    "save_dense": "dwf_core.export",
    "save_sparse": "dwf_core.export",
    "load_sparse": "dwf_core.export",
    "export_onnx": "dwf_core.export",
    "RunSpec": "dwf_core.pipeline",
    "run": "dwf_core.pipeline",
    "prepare": "dwf_core.pipeline",
    "run_baseline": "dwf_core.baselines.run",
    "DwfError": "dwf_core.errors",
    "load_runtime": "dwf_core.runtime",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the public name on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dwf_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

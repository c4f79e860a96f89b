"""Training checkpoints as safetensors (all tensors) + JSON (everything else); never pickle.

A checkpoint directory holds ``ckpt-EPOCH.safetensors``, ``ckpt-EPOCH.json`` and ``latest.json``. The pair is
written first, then ``latest.json`` is replaced atomically to point at it, so a crash at any moment leaves
either the previous or the new checkpoint readable. ``latest.json`` records the sha256 of the tensor file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dwf_core.errors import TrainingError
from dwf_core.files import sha256_file

LATEST = "latest.json"
FORMAT = "dwf-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """Tensors and JSON state of one training checkpoint."""

    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(directory: str | os.PathLike[str], epoch: int, ckpt: Checkpoint, *, keep: int = 1) -> Path:
    """Write checkpoint ``epoch`` into ``directory`` and make it the latest; prune older ones beyond ``keep``."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    stem = f"ckpt-{epoch:05d}"
    tensor_path, state_path = root / f"{stem}.safetensors", root / f"{stem}.json"
    # Clone to contiguous, unshared storage: safetensors refuses aliased tensors (tied weights, views).
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in ckpt.tensors.items()}
    tmp = tensor_path.with_name(tensor_path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, tensor_path)
    _atomic_bytes(state_path, json.dumps({"format": FORMAT, "version": VERSION, **ckpt.state}).encode())
    latest = {
        "epoch": epoch,
        "tensors": tensor_path.name,
        "state": state_path.name,
        "sha256": sha256_file(tensor_path),
    }
    _atomic_bytes(root / LATEST, json.dumps(latest).encode())
    kept = sorted(root.glob("ckpt-*.json"))[:-keep] if keep > 0 else []
    for old in kept:
        if old.stem != stem:
            old.unlink(missing_ok=True)
            old.with_suffix(".safetensors").unlink(missing_ok=True)
    return tensor_path


def latest_epoch(directory: str | os.PathLike[str]) -> int | None:
    """Epoch of the latest complete checkpoint in ``directory``, or None."""
    path = Path(directory) / LATEST
    if not path.is_file():
        return None
    return int(json.loads(path.read_text())["epoch"])


def load_checkpoint(directory: str | os.PathLike[str]) -> Checkpoint | None:
    """Read the latest checkpoint of ``directory`` (None if there is none); verify its checksum.

    Raises:
        TrainingError: if the files are missing, corrupted or of another format.
    """
    root = Path(directory)
    latest_path = root / LATEST
    if not latest_path.is_file():
        return None
    try:
        latest = json.loads(latest_path.read_text())
        tensor_path, state_path = root / latest["tensors"], root / latest["state"]
        if sha256_file(tensor_path) != latest["sha256"]:
            raise TrainingError(f"checkpoint {tensor_path.name} fails its checksum", code="corrupt_checkpoint")
        state = json.loads(state_path.read_text())
        tensors = load_file(str(tensor_path))
    except (OSError, KeyError, ValueError) as exc:
        raise TrainingError(f"cannot read checkpoint in {root}: {exc}", code="corrupt_checkpoint") from exc
    if state.get("format") != FORMAT or state.get("version") != VERSION:
        raise TrainingError(f"{state_path.name} is not a {FORMAT} v{VERSION} file", code="corrupt_checkpoint")
    return Checkpoint(tensors, state)


def optimizer_to_parts(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``optim/IDX/KEY``) and a JSON-able remainder."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in opt_state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def optimizer_from_parts(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``optimizer_to_parts``: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}

"""Pack/unpack of checkpoint blobs: a real dwf_core checkpoint round-trips; unsafe archives are refused."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch

from dwf_core.checkpoint import Checkpoint, latest_epoch, load_checkpoint, save_checkpoint
from dwf_service import jobs
from dwf_service.blob_checkpoints import (
    CheckpointArchiveError,
    pack_checkpoint_dir,
    publish_checkpoint,
    restore_checkpoint,
    unpack_checkpoint,
)
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import Job


def test_round_trip_restores_a_loadable_checkpoint(tmp_path: Path) -> None:
    src = tmp_path / "src"
    save_checkpoint(src, 3, Checkpoint({"w": torch.arange(6.0)}, {"step": 7}))
    save_checkpoint(src / "dense", 1, Checkpoint({"d": torch.ones(2)}, {"step": 1}))
    (src / "notes.pkl").write_bytes(b"not packed")
    blob = tmp_path / "ckpt.tar"
    names = pack_checkpoint_dir(src, blob)
    assert "notes.pkl" not in names and "dense/latest.json" in names
    dest = tmp_path / "dest"
    unpack_checkpoint(blob, dest, max_bytes=1 << 20)
    ckpt = load_checkpoint(dest)
    assert ckpt is not None and torch.equal(ckpt.tensors["w"], torch.arange(6.0)) and ckpt.state["step"] == 7
    assert load_checkpoint(dest / "dense") is not None


def _tar_with(tmp_path: Path, name: str, data: bytes = b"{}", kind: bytes = tarfile.REGTYPE) -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return path


@pytest.mark.parametrize("name", ["../latest.json", "/etc/latest.json", "dense/../../x.json", "model.pkl"])
def test_refuses_unsafe_names_and_writes_nothing(tmp_path: Path, name: str) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(CheckpointArchiveError):
        unpack_checkpoint(_tar_with(tmp_path, name), dest, max_bytes=1 << 20)
    assert not dest.exists()


def test_refuses_links(tmp_path: Path) -> None:
    with pytest.raises(CheckpointArchiveError):
        unpack_checkpoint(_tar_with(tmp_path, "latest.json", kind=tarfile.SYMTYPE), tmp_path / "d", max_bytes=1 << 20)


def test_refuses_oversize(tmp_path: Path) -> None:
    blob = _tar_with(tmp_path, "ckpt-00001.safetensors", b"x" * 2048)
    with pytest.raises(CheckpointArchiveError, match="more than 1024 bytes"):
        unpack_checkpoint(blob, tmp_path / "d", max_bytes=1024)


def test_refuses_non_tar(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"garbage" * 100)
    with pytest.raises(CheckpointArchiveError):
        unpack_checkpoint(bad, tmp_path / "d", max_bytes=1 << 20)


REQUEST = {"model": {"name": "lenet_300_100"}, "dataset": {"file_id": "file-x"}, "method": {"depth": 3, "epochs": 2}}


def test_publish_moves_the_pointer_only_with_the_lease(ctx: ServiceContext, tmp_path: Path) -> None:
    with session_scope(ctx.sessions) as session:
        job_id = jobs.create_job(session, REQUEST, file_ids={"dataset": "file-x"}).id
        assert jobs.acquire_lease(session, job_id, "w", (jobs.VALIDATING,), 60, 3)
    src = tmp_path / "ckpt"
    save_checkpoint(src, 1, Checkpoint({"w": torch.zeros(3)}, {}))
    assert publish_checkpoint(ctx.sessions, ctx.storage, job_id, "w", src, 1)
    with ctx.sessions() as session:
        first = session.get(Job, job_id)
        assert first is not None and first.checkpoint_epoch == 1 and first.checkpoint_key
        first_key = first.checkpoint_key
    save_checkpoint(src, 2, Checkpoint({"w": torch.ones(3)}, {}))
    assert publish_checkpoint(ctx.sessions, ctx.storage, job_id, "w", src, 2)
    with pytest.raises(FileNotFoundError):
        ctx.storage.size(first_key)  # the older blob was deleted
    assert not publish_checkpoint(ctx.sessions, ctx.storage, job_id, "intruder", src, 3)
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.checkpoint_epoch == 2 and job.checkpoint_key
        key = job.checkpoint_key
    restore_checkpoint(ctx.storage, key, tmp_path / "other-worker", max_bytes=1 << 20)
    assert latest_epoch(tmp_path / "other-worker") == 2

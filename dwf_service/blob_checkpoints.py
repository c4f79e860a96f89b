"""Checkpoints in the blob store: a job re-delivered to another worker resumes from its last epoch.

The worker publishes the job's checkpoint folder after every epoch (``CheckpointSync``), pointing
``Job.checkpoint_key`` at it only while it holds the lease; a worker that finds no local checkpoint restores the
blob first; the reconciler deletes the blobs of jobs that ended more than ``checkpoint_retention_seconds`` ago.

The folder goes into one plain tar blob and is unpacked safely on the other worker.

Only the files dwf_core.checkpoint writes (``ckpt-NNNNN.safetensors``/``.json``, ``latest.json``, optionally
under a ``dense/`` subfolder) are packed or accepted back: no pickle, no links, no other names, so a
tampered blob cannot write outside the destination or smuggle code in. Sizes are capped per archive.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tarfile
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from dwf_service.db import session_scope
from dwf_service.jobs import ACTIVE, TERMINAL, update_owned
from dwf_service.models import Job, utcnow
from dwf_service.storage import Storage, download_to, upload_file

if TYPE_CHECKING:
    from dwf_core.train import ProgressEvent
    from dwf_service.context import ServiceContext

log = logging.getLogger(__name__)

# Names dwf_core.checkpoint writes; the dense phase keeps its own copy under dense/.
_MEMBER = re.compile(r"^(?:dense/)?(?:ckpt-\d{5}\.(?:safetensors|json)|latest\.json)$")
MAX_MEMBERS = 16


class CheckpointArchiveError(Exception):
    """A checkpoint blob that must not be unpacked (unsafe name, link, too large, not a tar)."""


def pack_checkpoint_dir(source: Path, dest: Path) -> list[str]:
    """Write the checkpoint files of ``source`` into the uncompressed tar ``dest``; return the member names."""
    names = sorted(
        p.relative_to(source).as_posix()
        for p in source.rglob("*")
        if p.is_file() and not p.is_symlink() and _MEMBER.match(p.relative_to(source).as_posix())
    )
    if not names:
        raise CheckpointArchiveError(f"no checkpoint files in {source}")
    with tarfile.open(dest, "w") as tar:
        for name in names:
            tar.add(source / name, arcname=name, recursive=False)
    return names


def unpack_checkpoint(archive: Path, dest: Path, *, max_bytes: int) -> list[str]:
    """Check every member of ``archive`` before extracting any, then extract into ``dest``."""
    try:
        with tarfile.open(archive, "r:") as tar:
            members = tar.getmembers()
            if len(members) > MAX_MEMBERS:
                raise CheckpointArchiveError(f"{len(members)} members, at most {MAX_MEMBERS} allowed")
            total = 0
            for member in members:
                if not member.isfile() or not _MEMBER.match(member.name):
                    raise CheckpointArchiveError(f"member {member.name!r} is not a checkpoint file")
                total += member.size
                if total > max_bytes:
                    raise CheckpointArchiveError(f"archive unpacks to more than {max_bytes} bytes")
            dest.mkdir(parents=True, exist_ok=True)
            for member in members:
                target = dest / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                if src is None:
                    raise CheckpointArchiveError(f"member {member.name!r} has no data")
                with src, open(target, "wb") as out:
                    out.write(src.read())
            return [m.name for m in members]
    except tarfile.TarError as exc:
        raise CheckpointArchiveError(f"not a readable tar: {exc}") from exc


def publish_checkpoint(
    sessions: sessionmaker[Session], storage: Storage, job_id: str, owner: str, source: Path, epoch: int
) -> bool:
    """Upload ``source`` under a fresh key, point the job at it only while ``owner`` holds the lease, then
    delete the previous blob. Returns False (and removes the new blob) when the lease was lost."""
    key = f"jobs/{job_id}/checkpoints/{epoch:05d}-{uuid.uuid4().hex}.tar"
    with tempfile.TemporaryDirectory() as tmp:
        blob = Path(tmp) / "ckpt.tar"
        pack_checkpoint_dir(source, blob)
        upload_file(storage, key, blob)
    with session_scope(sessions) as session:
        job = session.get(Job, job_id)
        previous = job.checkpoint_key if job is not None else None
        owned = update_owned(session, job_id, owner, checkpoint_key=key, checkpoint_epoch=epoch)
    if not owned:
        storage.delete(key)  # another worker owns the job now: its pointer stays, this blob is garbage
        return False
    if previous and previous != key:
        storage.delete(previous)
    return True


def restore_checkpoint(storage: Storage, key: str, dest: Path, *, max_bytes: int) -> list[str]:
    """Download the blob ``key`` and unpack it into ``dest`` (an empty or stale checkpoint folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        blob = download_to(storage, key, Path(tmp) / "ckpt.tar")
        return unpack_checkpoint(blob, dest, max_bytes=max_bytes)


def _has_checkpoint(directory: Path) -> bool:
    return bool(_checkpoint_stamp(directory))


def _checkpoint_stamp(directory: Path) -> tuple[tuple[str, int], ...]:
    """Which checkpoints the folder holds now (each ``latest.json`` and when it was written); empty when none."""
    if not directory.is_dir():
        return ()
    return tuple(sorted((str(p), p.stat().st_mtime_ns) for p in directory.rglob("latest.json")))


class CheckpointSync:
    """The worker's side of a job's blob checkpoint: restore it on a fresh machine, publish it after each epoch.

    dwf_core writes a checkpoint before it reports the epoch (``Trainer._fit``: save, then the "epoch" event), so
    ``on_progress`` publishes the folder as it stands at each epoch event. A failed upload is logged and training goes
    on: the local checkpoint still serves a resume on this machine, and the next epoch tries again.
    """

    def __init__(self, ctx: ServiceContext, job_id: str, owner: str, directory: Path) -> None:
        self.ctx, self.job_id, self.owner, self.directory = ctx, job_id, owner, directory
        self.published = 0
        self._last_stamp: tuple[tuple[str, int], ...] = ()

    def restore_if_missing(self, key: str | None) -> bool:
        """Unpack the blob ``key`` into the local folder when this machine has no checkpoint of the job (another
        worker trained it before); True when it did. A blob that cannot be restored means a start from epoch 0."""
        if key is None or _has_checkpoint(self.directory):
            return False
        shutil.rmtree(self.directory, ignore_errors=True)
        try:
            restore_checkpoint(self.ctx.storage, key, self.directory, max_bytes=self.ctx.settings.checkpoint_max_bytes)
        except (CheckpointArchiveError, OSError) as exc:
            log.warning("checkpoint blob %s of %s not restored (%s); training starts over", key, self.job_id, exc)
            shutil.rmtree(self.directory, ignore_errors=True)
            return False
        return True

    def on_progress(self, event: ProgressEvent) -> None:
        """After an epoch's checkpoint: upload it and point the job at it (while this worker holds the lease).

        Epoch events that wrote no checkpoint (fine-tuning, a λ restart) leave the folder as it was: nothing to upload.
        """
        if event.kind != "epoch":
            return
        stamp = _checkpoint_stamp(self.directory)
        if not stamp or stamp == self._last_stamp:
            return
        try:
            if publish_checkpoint(self.ctx.sessions, self.ctx.storage, self.job_id, self.owner, self.directory,
                                  event.epoch):  # fmt: skip
                self.published += 1
                self._last_stamp = stamp
        except Exception:  # the blob copy is a convenience for another machine, never a reason to stop training
            log.exception("checkpoint of %s (epoch %d) not uploaded", self.job_id, event.epoch)


def expire_checkpoints(sessions: sessionmaker[Session], storage: Storage, retention_seconds: float) -> list[str]:
    """Delete the checkpoint blobs of jobs that ended more than ``retention_seconds`` ago; returns their job ids.

    A job that an unfinished job continues (``parent_job_id``, POST /v1/jobs with from_job) keeps its blob: the
    child starts from it when it trains. Its retention counts on; the first pass after the child ends removes it.
    """
    cutoff = utcnow() - timedelta(seconds=retention_seconds)
    child = aliased(Job)
    continued = select(child.id).where(child.parent_job_id == Job.id, child.status.in_(ACTIVE)).exists()
    with sessions() as session:
        rows = session.execute(
            select(Job.id, Job.checkpoint_key).where(
                Job.status.in_(TERMINAL), Job.checkpoint_key.is_not(None), Job.finished_at <= cutoff, ~continued
            )
        ).all()
    expired = []
    for job_id, key in rows:
        if key is None:
            continue
        with contextlib.suppress(FileNotFoundError):
            storage.delete(key)
        with session_scope(sessions) as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.checkpoint_key == key)
                .values(checkpoint_key=None, checkpoint_epoch=None, updated_at=Job.updated_at)
            )
        expired.append(job_id)
    return expired

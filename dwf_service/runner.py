"""What the worker's tasks do: validate a job's files, then train, collapse and store the results.

Each function takes the job's lease first, so a re-delivered message for a job that is already running
elsewhere (or finished) does nothing; dwf_core is imported here only, never by the API.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from billiard.exceptions import SoftTimeLimitExceeded
from sqlalchemy import delete, select
from sqlalchemy.exc import InterfaceError, OperationalError

from dwf_service import jobs
from dwf_service.blob_checkpoints import CheckpointSync
from dwf_service.context import ServiceContext
from dwf_service.continuation import fetch_parent_state, with_parent
from dwf_service.db import session_scope
from dwf_service.models import Artifact, File, Job, JobResult
from dwf_service.storage import download_to, upload_file

if TYPE_CHECKING:
    from dwf_core.pipeline import RunSpec
    from dwf_core.train import ProgressEvent

log = logging.getLogger(__name__)

# Set by the worker's shutdown signal: a running training stops at its next step and goes back to the queue.
SHUTDOWN = threading.Event()
STEP_WRITE_INTERVAL_S = 1.0
CANCEL_POLL_INTERVAL_S = 1.0
_SAFE_SUFFIX = re.compile(r"^(\.[A-Za-z0-9]{1,10}){1,2}$")
# A lost database connection: the job is retried (re-queued), not failed.
DB_ERRORS = (OperationalError, InterfaceError)
# Test-only fault injection (tests/fault), read from the worker's environment only; see _test_fault.
TEST_FAULTS_ENV = "DWF_TEST_FAULTS"
_FORMAT_SUFFIX = {
    "onnx": ".onnx",
    "hf-config": ".json",
    "safetensors": ".safetensors",
    "npz": ".npz",
    "csv": ".csv",
    "zip": ".zip",
}


def worker_id() -> str:
    """A lease owner name unique to this process and call."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _suffix(file: File) -> str:
    suffix = "".join(Path(file.filename).suffixes[-2:]).lower()
    return suffix if _SAFE_SUFFIX.match(suffix) else _FORMAT_SUFFIX.get(file.format, ".bin")


def _materialize(ctx: ServiceContext, job: Job, dest: Path) -> dict[str, Path]:
    """Copy the job's input files from the blob store to ``dest``; returns role → local path."""
    paths: dict[str, Path] = {}
    with ctx.sessions() as session:
        for role, file_id in (
            ("model", job.model_file_id),
            ("weights", job.weights_file_id),
            ("dataset", job.dataset_file_id),
        ):
            if file_id is None:
                continue
            file = session.get(File, file_id)
            if file is None:
                from dwf_core.errors import ConfigError

                raise ConfigError(f"file {file_id} was deleted", code="file_not_found", param=f"{role}.file_id")
            paths[role] = download_to(ctx.storage, file.storage_key, dest / f"{role}-{file.id}{_suffix(file)}")
            if _sha256(paths[role]) != file.sha256:
                from dwf_core.errors import DwfError

                raise DwfError(
                    f"file {file_id} does not match its recorded sha256 (corrupt in the blob store)",
                    code="file_checksum_mismatch",
                    param=f"{role}.file_id",
                )
    return paths


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _spec(ctx: ServiceContext, job: Job, paths: dict[str, Path], out_dir: Path, checkpoint_dir: Path | None) -> RunSpec:
    """The dwf_core RunSpec for a job's stored request."""
    from dwf_core.config import TrainConfig
    from dwf_core.distill import DEFAULT_TEMPERATURE
    from dwf_core.pipeline import RunSpec

    req = job.request
    method = req["method"]
    threshold = method.get("threshold", "auto")
    config = TrainConfig(
        method=method.get("type", "dwf"),
        depth=method.get("depth"),
        epochs=method["epochs"],
        lam=method.get("lam"),
        target_sparsity=method.get("target_sparsity"),
        lr=method.get("lr"),
        lr_probe=method.get("lr_probe"),
        optimizer=method.get("optimizer"),
        momentum=method.get("momentum", 0.9),
        batch_size=method.get("batch_size", 128),
        devices=method.get("devices", 1),
        init=method.get("init"),
        threshold=threshold if threshold == "auto" else float(threshold),
        tolerance=method.get("tolerance", 0.001),
        warmup_epochs=method.get("warmup_epochs", 0.0),
        max_grad_norm=method.get("max_grad_norm"),
        include=method.get("include"),
        exclude=method.get("exclude"),
        frontier=method.get("frontier"),
        finetune_epochs=method.get("finetune_epochs"),
        dense_epochs=method.get("dense_epochs", 0),
        distill=method.get("distill"),  # None: dwf_core decides (on from trained uploaded weights)
        distill_temperature=method.get("distill_temperature", DEFAULT_TEMPERATURE),
        distill_schedule=method.get("distill_schedule", "constant"),
        structure=method.get("structure", "weights"),
        cut=method.get("cut"),
        unit_cut=method.get("unit_cut"),
        unit_multiple=method.get("unit_multiple"),
        target_macs=method.get("target_macs"),
        mac_frontier=method.get("mac_frontier"),
        augment=method.get("augment"),
        precision=method.get("precision", "auto"),
        seed=req.get("seed", 0),
        device=ctx.settings.device,
    )
    dataset = req["dataset"]
    return RunSpec(
        model=str(paths["model"]) if "model" in paths else req["model"]["name"],
        data=str(paths["dataset"]),
        out_dir=out_dir,
        weights=str(paths["weights"]) if "weights" in paths else None,
        train=config,
        val_fraction=dataset.get("val_fraction", 0.1),
        normalize=dataset.get("normalize", "auto"),
        checkpoint_dir=checkpoint_dir,
    )


class _Lease:
    """Heartbeats the job's lease from a thread and answers ``should_stop`` (cancel, lost lease, shutdown)."""

    def __init__(self, ctx: ServiceContext, job_id: str, owner: str) -> None:
        self.ctx, self.job_id, self.owner = ctx, job_id, owner
        self.stop_reason: str | None = None
        self._done = threading.Event()
        self._last_cancel_poll = 0.0
        self._thread = threading.Thread(target=self._beat, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def _beat(self) -> None:
        while not self._done.wait(self.ctx.settings.heartbeat_seconds):
            try:
                with session_scope(self.ctx.sessions) as session:
                    if not jobs.heartbeat(session, self.job_id, self.owner, self.ctx.settings.lease_seconds):
                        self.stop_reason = self.stop_reason or "lease_lost"
            except Exception:  # a missed beat is survivable (the lease outlives two intervals)
                log.exception("heartbeat of %s failed", self.job_id)

    def should_stop(self) -> bool:
        """True once the job was cancelled, the lease was lost or the worker is shutting down."""
        if self.stop_reason is None and SHUTDOWN.is_set():
            self.stop_reason = "shutdown"
        now = time.monotonic()
        if self.stop_reason is None and now - self._last_cancel_poll >= CANCEL_POLL_INTERVAL_S:
            self._last_cancel_poll = now
            try:
                with self.ctx.sessions() as session:
                    if session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)):
                        self.stop_reason = "cancelled"
            except DB_ERRORS:  # the database is away for a moment: keep training, ask again later
                log.warning("cancel check of %s failed; the database is unreachable", self.job_id)
        return self.stop_reason is not None


def _take(ctx: ServiceContext, job_id: str, owner: str, statuses: tuple[str, ...]) -> Job | None:
    """The job with its lease taken by ``owner`` (an attempt counted), or None when this message has nothing to run.

    A job that may not run again (cancel requested, or out of attempts) is ended here without counting an
    attempt, exactly as the reconciler would end it (``jobs.settle``).
    """
    settings = ctx.settings
    with session_scope(ctx.sessions) as session:
        if jobs.acquire_lease(session, job_id, owner, statuses, settings.lease_seconds, settings.max_attempts):
            job = session.get(Job, job_id)
            assert job is not None
            session.refresh(job)
            return job
        if jobs.settle(session, job_id, settings.max_attempts, statuses):
            log.info("job %s may not run again (cancelled or out of attempts); ended it", job_id)
        elif session.get(Job, job_id) is None:  # the fault tier's T9 counts these: a publish-before-commit race
            log.error("job row not found: %s; message ignored", job_id)
        else:
            log.info("job %s is not available for %s; message ignored", job_id, statuses)
        return None


def _fail(ctx: ServiceContext, job_id: str, owner: str, error: dict[str, Any]) -> None:
    with session_scope(ctx.sessions) as session:
        jobs.finish(session, job_id, jobs.FAILED, owner=owner, error=error)


def _time_limit(ctx: ServiceContext) -> dict[str, Any]:
    limit = ctx.settings.task_soft_time_limit
    return {"code": "time_limit", "message": f"the job ran past its time limit of {limit:g} s", "param": None}


def _retry_after_db_error(ctx: ServiceContext, job_id: str, owner: str, exc: BaseException) -> None:
    """Give the job back to the queue (an attempt counted); while the database is away, re-raise for Celery's
    retry with backoff; the lease expiring and the reconciler re-enqueue it in any case."""
    log.warning("job %s hit a database error (%s); re-queueing it", job_id, type(exc).__name__)
    try:
        with session_scope(ctx.sessions) as session:
            jobs.requeue(session, job_id, owner, f"database error: {type(exc).__name__}", count_attempt=True)
    except DB_ERRORS:
        raise exc from None


def _test_fault(ctx: ServiceContext, job: Job, lease: _Lease) -> None:
    """Fault injection for the fault tier (tests/fault/), off unless the *worker's* environment asks for it.

    ``DWF_TEST_FAULTS="SEED=ACTION,…"`` maps a job's ``seed`` to an action run when its training starts:
    ``exit`` (the process SIGKILLs itself: a poison job), ``sleep:S`` (S seconds, then train; stops early on
    cancel/shutdown) or ``busy:S`` (spin S seconds ignoring the soft time limit, like a hung native call).
    The API cannot set it (it is not part of a job), and ``env=production`` ignores it.
    """
    spec = os.environ.get(TEST_FAULTS_ENV, "")
    if not spec or ctx.settings.env == "production":
        return
    faults = dict(item.split("=", 1) for item in spec.split(",") if "=" in item)
    action = faults.get(str(job.request.get("seed", 0)))
    if action is None:
        return
    kind, _, arg = action.partition(":")
    log.warning("test fault %r for job %s", action, job.id)
    if kind == "exit":
        os.kill(os.getpid(), signal.SIGKILL)
    deadline = time.monotonic() + float(arg or 0)
    if kind == "sleep":
        while time.monotonic() < deadline and not lease.should_stop():
            time.sleep(0.1)
    elif kind == "busy":
        while time.monotonic() < deadline:
            with contextlib.suppress(SoftTimeLimitExceeded):
                while time.monotonic() < deadline:
                    pass


def _internal_error(exc: BaseException) -> dict[str, Any]:
    return {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}", "param": None}


def validate_job(ctx: ServiceContext, job_id: str) -> None:
    """Load the model safely, parse the dataset, run one forward pass; then queue training or fail the job."""
    from dwf_core.errors import DwfError
    from dwf_core.pipeline import prepare
    from dwf_service import quotas

    owner = worker_id()
    job = _take(ctx, job_id, owner, (jobs.VALIDATING,))
    if job is None:
        return
    scratch = ctx.settings.work_dir / job_id / "validate"
    try:
        with _Lease(ctx, job_id, owner):
            paths = _materialize(ctx, job, scratch)
            prepared = prepare(_spec(ctx, job, paths, scratch / "out", None))
            wanted = job.request["model"].get("num_classes")
            if wanted is not None and wanted != prepared.data.num_classes:
                raise DwfError(
                    f"model.num_classes is {wanted} but the dataset has {prepared.data.num_classes} classes",
                    code="num_classes_mismatch",
                    param="model.num_classes",
                )
            with ctx.sessions() as session:  # a tarball's examples are known only now (not counted at upload)
                quotas.check_validated_job(session, ctx.settings, job, len(prepared.data.train.y))
            summary = (
                f"{prepared.model_source} model ({prepared.coverage.summary()}), {prepared.data.num_classes} classes, "
                f"{len(prepared.data.train.y)} train / {len(prepared.data.val.y)} val / "
                f"{len(prepared.data.test.y)} test samples of shape {tuple(prepared.data.input_shape)}"
            )
    except SoftTimeLimitExceeded:
        _fail(ctx, job_id, owner, _time_limit(ctx))
        return
    except DB_ERRORS as exc:
        _retry_after_db_error(ctx, job_id, owner, exc)
        return
    except DwfError as err:
        _fail(ctx, job_id, owner, err.to_dict())
        return
    except quotas.QuotaExceeded as exc:
        _fail(ctx, job_id, owner, exc.to_dict())
        return
    except Exception as exc:
        log.exception("validation of %s crashed", job_id)
        _fail(ctx, job_id, owner, _internal_error(exc))
        return
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(OSError):
            scratch.parent.rmdir()  # the job's folder, unless training already keeps checkpoints there
    with session_scope(ctx.sessions) as session:
        if jobs.mark_validated(session, job_id, owner, summary):
            decision = prepared.init_decision
            if decision is not None:
                jobs.add_event(
                    session,
                    job_id,
                    f"the model's own weights score {100 * decision.val_accuracy:.1f}% on validation (majority class "
                    f"{100 * decision.majority_share:.1f}%): {decision.reason}",
                )
            if prepared.coverage.warning():
                jobs.add_event(session, job_id, f"warning: {prepared.coverage.warning()}", level="warn")


class _ProgressWriter:
    """on_progress/on_phase callbacks: progress fields (≤ 1 write/s within an epoch), a metrics event per epoch and
    one per restart after a non-finite loss."""

    def __init__(self, ctx: ServiceContext, job_id: str, owner: str) -> None:
        self.ctx, self.job_id, self.owner = ctx, job_id, owner
        self._last_write = 0.0

    def on_phase(self, name: str) -> None:
        try:
            with session_scope(self.ctx.sessions) as session:
                if jobs.update_owned(session, self.job_id, self.owner, phase=name):
                    jobs.add_event(session, self.job_id, f"phase: {name}")
        except DB_ERRORS:  # progress is best effort: a database restart must not abort the training
            log.warning("phase of %s not recorded; the database is unreachable", self.job_id)

    def on_progress(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        if event.kind == "step" and now - self._last_write < STEP_WRITE_INTERVAL_S:
            return
        self._last_write = now
        # Progress and ETA of the running attempt: a restart starts both over, a resumed run times only its own steps.
        values: dict[str, Any] = {
            "epoch": event.epoch,
            "epochs": event.epochs,
            "progress": event.fraction,
            "eta_seconds": event.eta_s,
        }
        if event.metrics is not None:
            values["metrics"] = jobs.jsonable(event.metrics)
        try:
            self._write(event, values)
        except DB_ERRORS:  # progress is best effort: a database restart must not abort the training
            log.warning("progress of %s not recorded; the database is unreachable", self.job_id)

    def _write(self, event: ProgressEvent, values: dict[str, Any]) -> None:
        with session_scope(self.ctx.sessions) as session:
            jobs.update_owned(session, self.job_id, self.owner, **values)
            if event.metrics is not None:
                m = event.metrics
                message = (
                    f"epoch {event.epoch}/{event.epochs}: loss {event.loss:.4f}, "
                    f"val acc {100 * m.get('val_accuracy', 0.0):.2f}%, sparsity {100 * m.get('sparsity', 0.0):.2f}%"
                )
                restart = m.get("restart")
                if isinstance(restart, dict):  # dwf_core's trainer found λ over-pruning and starts over
                    message += (
                        f"; {100 * restart['dead_sparsity']:.2f}% of the weights are dead, more than the target "
                        f"allows: training restarts with λ {restart['next_lam']:.3g}"
                    )
                jobs.add_event(
                    session,
                    self.job_id,
                    message,
                    type="metrics",
                    data={"step": event.global_step, "epoch": event.epoch, **m},
                )
            elif event.restart is not None:  # the loss became NaN/inf: dwf_core's trainer starts over, more safely
                from dwf_core.divergence import restart_message

                # A metrics event with "restart", as for λ: the dashboard then starts its epoch charts over.
                jobs.add_event(
                    session,
                    self.job_id,
                    restart_message(event.restart),
                    type="metrics",
                    level="warn",
                    data={"step": event.global_step, "epoch": event.epoch, "restart": event.restart},
                )
            elif event.probe is not None:  # the LR probe chose the step before the first epoch
                from dwf_core.lr_probe import probe_message

                jobs.add_event(session, self.job_id, probe_message(event.probe), data={"lr_probe": event.probe})


def _store_results(ctx: ServiceContext, job_id: str, owner: str, out_dir: Path, metrics: dict[str, Any]) -> bool:
    """Upload the artifacts, keep the sparse weights and metrics in the DB, mark the job succeeded."""
    from dwf_core.pipeline import ARTIFACTS
    from dwf_core.report_html import report_artifacts

    stored: list[Artifact] = []
    # Keys unique to this run: a worker that lost its lease can never overwrite the objects of the one that won.
    run_id = owner.rsplit(":", 1)[-1]
    frontier_files = [point["file"] for point in metrics.get("frontier") or []]
    files = {name: out_dir / name for name in (*ARTIFACTS, *frontier_files)}
    files.update(report_artifacts(out_dir))  # report.html, plot-<name>.png (from plots/<name>.png)
    for name, path in files.items():
        if path.is_file():
            key = f"jobs/{job_id}/{run_id}/{name}"
            size, sha = upload_file(ctx.storage, key, path)
            stored.append(Artifact(job_id=job_id, name=name, bytes=size, sha256=sha, storage_key=key))
    clean = jobs.jsonable(metrics)
    with session_scope(ctx.sessions) as session:
        session.execute(delete(Artifact).where(Artifact.job_id == job_id))
        session.execute(delete(JobResult).where(JobResult.job_id == job_id))
        session.add_all(stored)
        session.add(
            JobResult(job_id=job_id, sparse_weights=(out_dir / "model.sparse.safetensors").read_bytes(), metrics=clean)
        )
        ok = jobs.finish(
            session, job_id, jobs.SUCCEEDED, owner=owner, metrics=clean, progress=1.0, eta_seconds=0.0, phase=None
        )
        if not ok:
            session.rollback()
    if not ok:
        for art in stored:
            with contextlib.suppress(Exception):
                ctx.storage.delete(art.storage_key)
    return ok


def train_job(ctx: ServiceContext, job_id: str) -> None:
    """Train (resuming from the job's checkpoints), collapse, export and store; honours cancel and shutdown."""
    from dwf_core.errors import DwfError
    from dwf_core.pipeline import run
    from dwf_core.train import TrainingCancelled

    owner = worker_id()
    job = _take(ctx, job_id, owner, (jobs.QUEUED, jobs.RUNNING))
    if job is None:
        return
    with session_scope(ctx.sessions) as session:
        jobs.start_running(session, job_id, owner)
        jobs.add_event(session, job_id, f"training started (attempt {job.attempts})")
    workdir = ctx.settings.work_dir / job_id
    keep_workdir = False
    writer = _ProgressWriter(ctx, job_id, owner)
    # Another worker may have trained this job before: its last checkpoint comes from the blob store.
    checkpoints = CheckpointSync(ctx, job_id, owner, workdir / "checkpoints")

    def on_progress(event: ProgressEvent) -> None:
        writer.on_progress(event)
        checkpoints.on_progress(event)

    try:
        with _Lease(ctx, job_id, owner) as lease:
            _test_fault(ctx, job, lease)
            # A continued job (from_job): the parent's trained factors, in a folder of their own; fails fast if gone.
            start_state = fetch_parent_state(ctx, job, workdir / "parent-state")
            paths = _materialize(ctx, job, workdir / "inputs")
            if checkpoints.restore_if_missing(job.checkpoint_key):
                with session_scope(ctx.sessions) as session:
                    jobs.add_event(session, job_id, f"resuming from the checkpoint of epoch {job.checkpoint_epoch}")
            spec = _spec(ctx, job, paths, workdir / "out", workdir / "checkpoints")
            spec.start_state = start_state
            metrics = run(spec, on_progress=on_progress, should_stop=lease.should_stop, on_phase=writer.on_phase)
            metrics = with_parent(metrics, job)
        if not _store_results(ctx, job_id, owner, workdir / "out", metrics):
            log.warning("job %s finished but its lease was lost; results not recorded", job_id)
    except TrainingCancelled:
        keep_workdir = _stopped(ctx, job_id, owner, lease.stop_reason)
    except SoftTimeLimitExceeded:
        _fail(ctx, job_id, owner, _time_limit(ctx))
    except DB_ERRORS as exc:
        keep_workdir = True  # resume from the checkpoint
        _retry_after_db_error(ctx, job_id, owner, exc)
    except DwfError as err:
        _fail(ctx, job_id, owner, err.to_dict())
    except Exception as exc:
        log.exception("training of %s crashed", job_id)
        _fail(ctx, job_id, owner, _internal_error(exc))
    finally:
        if not keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _stopped(ctx: ServiceContext, job_id: str, owner: str, reason: str | None) -> bool:
    """Handle a training stopped between steps; returns whether to keep the checkpoints for a resume."""
    with session_scope(ctx.sessions) as session:
        if reason == "cancelled":
            jobs.finish(session, job_id, jobs.CANCELLED, owner=owner)
            return False
        if reason == "shutdown":
            jobs.requeue(
                session, job_id, owner, "the worker is shutting down; resumes from its checkpoint", count_attempt=False
            )
    return True


__all__ = ["SHUTDOWN", "train_job", "validate_job"]

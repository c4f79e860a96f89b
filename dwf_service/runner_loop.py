"""The reconciler as a daemon thread (in the API process; no celery beat needed), which also deletes the SQL
broker's delivered messages (``broker_gc``) and expired checkpoint blobs (``blob_checkpoints``), and re-sends lost
sweep finalize messages (``sweeps``). Imports no
dwf_core."""

from __future__ import annotations

import logging
import threading

from dwf_service import jobs, sweeps
from dwf_service.blob_checkpoints import expire_checkpoints
from dwf_service.broker_gc import clean_broker
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope

log = logging.getLogger(__name__)


def reconcile_once(ctx: ServiceContext) -> list[str]:
    """One reconciler pass in its own transaction: jobs, then sweeps whose finalize message was lost."""
    with session_scope(ctx.sessions) as session:
        touched = jobs.reconcile(session, ctx.settings)
    with session_scope(ctx.sessions) as session:
        return touched + sweeps.reconcile_sweeps(session, ctx.settings)


def _pass(ctx: ServiceContext) -> None:
    """A reconciler pass, then the SQL broker's delivered messages deleted; a failure of either is logged."""
    try:
        reconcile_once(ctx)
    except Exception:
        log.exception("reconciler pass failed")
    try:
        clean_broker(ctx)
    except Exception:
        log.exception("broker clean-up failed")
    try:
        expire_checkpoints(ctx.sessions, ctx.storage, ctx.settings.checkpoint_retention_seconds)
    except Exception:
        log.exception("checkpoint clean-up failed")


def _loop(ctx: ServiceContext, stop: threading.Event) -> None:
    while not stop.wait(ctx.settings.reconcile_seconds):
        _pass(ctx)


def start_reconciler(ctx: ServiceContext, stop: threading.Event) -> threading.Thread:
    """Run a pass now and then every ``settings.reconcile_seconds`` until ``stop`` is set."""
    _pass(ctx)
    thread = threading.Thread(target=_loop, args=(ctx, stop), name="dwf-reconciler", daemon=True)
    thread.start()
    return thread

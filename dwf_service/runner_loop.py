"""The reconciler as a daemon thread (in the API process; no celery beat needed). Imports no dwf_core."""

from __future__ import annotations

import logging
import threading

from dwf_service import jobs
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope

log = logging.getLogger(__name__)


def reconcile_once(ctx: ServiceContext) -> list[str]:
    """One reconciler pass in its own transaction."""
    with session_scope(ctx.sessions) as session:
        return jobs.reconcile(session, ctx.settings)


def _loop(ctx: ServiceContext, stop: threading.Event) -> None:
    while not stop.wait(ctx.settings.reconcile_seconds):
        try:
            reconcile_once(ctx)
        except Exception:
            log.exception("reconciler pass failed")


def start_reconciler(ctx: ServiceContext, stop: threading.Event) -> threading.Thread:
    """Run a pass now and then every ``settings.reconcile_seconds`` until ``stop`` is set."""
    try:
        reconcile_once(ctx)
    except Exception:
        log.exception("reconciler pass failed")
    thread = threading.Thread(target=_loop, args=(ctx, stop), name="dwf-reconciler", daemon=True)
    thread.start()
    return thread

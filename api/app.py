"""FastAPI app factory: /v1 routes behind Bearer auth, one error envelope, a body cap, the reconciler loop."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI

from api import errors
from api.dashboard import install_dashboard
from api.deps import authenticate
from api.errors import ErrorResponse
from api.limits import BodyLimitMiddleware
from api.metrics import install_metrics
from api.routes import files, health, jobs, sweeps, webhooks
from dwf_service.auth import add_key
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.queue import Publisher
from dwf_service.runner_loop import start_reconciler
from dwf_service.settings import Settings, get_settings
from dwf_service.webhooks import start_sender

# Multipart framing around the file part (boundaries, headers, the purpose field).
MULTIPART_OVERHEAD = 1 << 20
# 400: a body that cannot be parsed (not JSON, not UTF-8), before any field is validated (422).
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 422)
}


def create_app(
    settings: Settings | None = None,
    *,
    context: ServiceContext | None = None,
    publisher: Publisher | None = None,
    reconciler: bool = True,
) -> FastAPI:
    """The API for ``settings`` (default: from the environment); tests pass a context or a fake publisher."""
    settings = settings or get_settings()
    ctx = context or ServiceContext.create(settings, publisher, use_celery=publisher is None)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.api_key:  # `dwf serve` does this itself; a bare `uvicorn api.main:app` relies on it
            with session_scope(ctx.sessions) as session:
                add_key(session, settings.api_key, name="DWF_API_KEY")
        stop = threading.Event()
        thread = start_reconciler(ctx, stop) if reconciler and settings.reconcile_seconds > 0 else None
        # The webhook sender: status changes leave outbox rows (dwf_service/webhooks.py); this process sends them.
        send_webhooks = reconciler and settings.webhook_poll_seconds > 0
        sender = start_sender(ctx.sessions, settings, stop) if send_webhooks else None
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                thread.join(timeout=5)
            if sender is not None:
                sender.join(timeout=settings.webhook_timeout_seconds + 1)

    app = FastAPI(
        title="dwf",
        version="0.1.0",
        description="Sparsify neural networks by Deep Weight Factorization: upload, train, download.",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    errors.install(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)], responses=ERROR_RESPONSES)
    v1.include_router(files.router)
    v1.include_router(jobs.router)
    v1.include_router(sweeps.router)
    v1.include_router(webhooks.router)
    app.include_router(v1)
    # Job status checks the key itself, in one thread-pool trip with the read (the route clients poll).
    app.include_router(jobs.status_router, prefix="/v1", responses=ERROR_RESPONSES)
    app.include_router(health.router)
    install_metrics(app, ctx)  # GET /metrics (Prometheus) and the HTTP latency middleware
    install_dashboard(app)  # GET / and /static/*
    return app

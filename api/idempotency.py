"""An ``Idempotency-Key`` of ``POST /v1/jobs`` while its first request is still in flight: a repeat then gets 409.

The first request of a (tenant, key) holds a claim on it until its transaction has ended; a request that finds the
claim held answers at once with 409 ``idempotency_key_in_use`` and ``Retry-After: 1`` (it waits for nothing and
creates nothing). After the first request committed, a repeat takes the claim in turn and answers the stored job.
A claim is named by a 64-bit hash of the tenant id and the key (``claim_id``; 62 of its bits on SQLite); two pairs
with one name would only share the 409 (a chance of about 2**-62 for two keys in flight at once).

- **PostgreSQL** (any number of API processes): ``pg_try_advisory_xact_lock(claim_id)`` as the first lock the
  create transaction takes (``lock_claim``), before the tenant's row lock. The server releases it at commit or
  rollback, or when the connection of a killed API process closes.
- **SQLite**: ``dwf serve`` runs one API process (uvicorn with the app object, so no ``--workers``), but
  ``uvicorn api.main:app --workers N`` and the API image (``DWF_API_WORKERS``, default 2) without a
  ``DWF_DATABASE_URL`` run several on one SQLite file. The claim (``claim_sqlite``, a dependency set up before the
  request's session and so released after its commit) is an in-process registry of the claim ids in flight (threads
  of one process) plus a one-byte ``fcntl`` lock at offset ``claim_id`` of ``<database>.idempotency-lock`` (other
  processes). The kernel drops a killed process's locks. Without ``fcntl`` (Windows) only the registry applies.

The claim only decides between 409 and going ahead: what a repeat answers once it goes ahead is still decided under
the tenant's lock (``dwf_service.quotas.lock_tenant``), which a request holds from before its key lookup to its
commit.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, TypeVar

from fastapi import Depends, Header
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from api.deps import ContextDep, CurrentKey
from api.errors import ApiError
from dwf_service.models import Job, Sweep, utcnow
from dwf_service.settings import Settings

try:
    import fcntl
except ImportError:  # Windows: one process's registry only
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1
LOCK_SUFFIX = ".idempotency-lock"


def claim_id(tenant_id: str, key: str) -> int:
    """The signed 64-bit name of a (tenant, key) claim: PostgreSQL's advisory lock key, SQLite's lock offset."""
    digest = hashlib.blake2b(f"{tenant_id}\0{key}".encode(), digest_size=8, person=b"dwf-idem-key").digest()
    return int.from_bytes(digest, "big", signed=True)


def in_use() -> ApiError:
    """409 ``idempotency_key_in_use``: the first request with the key has not finished."""
    return ApiError(
        409,
        "idempotency_key_in_use",
        "a request with this Idempotency-Key is still being processed; retry after a moment to get its response",
        param="Idempotency-Key",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


Keyed = TypeVar("Keyed", Job, Sweep)


def earlier_request(
    session: Session, settings: Settings, model: type[Keyed], tenant_id: str, key: str, request_hash: str
) -> Keyed | None:
    """The tenant's job (or sweep) created with Idempotency-Key ``key`` less than DWF_IDEMPOTENCY_KEY_TTL_SECONDS
    ago, which a repeat answers; None when there is none, or it is older (it then gives the key up, keeping its
    updated_at: a tenant's keys are unique). Call it under the tenant's lock (``quotas.lock_tenant``).

    Raises:
        ApiError: 409 ``idempotency_key_reused`` when that request had another body.
    """
    row = session.scalar(select(model).where(model.tenant_id == tenant_id, model.idempotency_key == key))
    if row is None:
        return None
    if row.created_at <= utcnow() - timedelta(seconds=settings.idempotency_key_ttl_seconds):
        unkeyed = update(model).where(model.id == row.id).values(idempotency_key=None, updated_at=model.updated_at)
        session.execute(unkeyed)
        return None
    if row.request_hash != request_hash:
        raise ApiError(
            409, "idempotency_key_reused", "this Idempotency-Key was used with a different request body",
            param="Idempotency-Key",
        )  # fmt: skip
    return row


def lock_claim(session: Session, tenant_id: str, key: str) -> None:
    """PostgreSQL: take the claim for the session's transaction, or raise 409 at once (no-op on other databases)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    if not session.scalar(select(func.pg_try_advisory_xact_lock(claim_id(tenant_id, key)))):
        raise in_use()


class ClaimRegistry:
    """The SQLite claims of one database in this process: the ids in flight, and the lock file while any is."""

    def __init__(self, lock_path: Path | None) -> None:
        self.lock_path = lock_path
        self._lock = threading.Lock()
        self._held: set[int] = set()  # the lock-file offsets of the claims in flight here
        self._fd: int | None = None

    def _lock_byte(self, fd: int, offset: int, how: int) -> None:
        assert fcntl is not None
        fcntl.lockf(fd, how, 1, offset)

    def _open(self) -> int | None:
        if fcntl is None or self.lock_path is None:
            return None
        try:
            return os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            log.warning("cannot open %s (%s): key claims hold within this process only", self.lock_path, exc)
            return None

    def _close_if_idle(self) -> None:
        # Closing a file drops every lock this process holds on it, so it is closed only when none is held.
        if not self._held and self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @contextlib.contextmanager
    def claim(self, ident: int) -> Iterator[None]:
        """Hold claim ``ident`` for the block, or raise 409 if this or another process holds it."""
        offset = (ident + 2**63) >> 2  # 0 … 2**62: a byte well inside the file offsets fcntl accepts
        locked = False
        with self._lock:
            if offset in self._held:
                raise in_use()
            if self._fd is None:
                self._fd = self._open()
            if self._fd is not None:
                try:
                    self._lock_byte(self._fd, offset, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                except OSError as exc:
                    if exc.errno in (errno.EACCES, errno.EAGAIN):  # another process holds it
                        self._close_if_idle()
                        raise in_use() from None
                    log.warning("cannot lock %s (%s): this claim holds within this process only", self.lock_path, exc)
            self._held.add(offset)
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(offset)
                if locked and self._fd is not None:
                    self._lock_byte(self._fd, offset, fcntl.LOCK_UN)
                self._close_if_idle()


_registries: dict[str, ClaimRegistry] = {}
_registries_lock = threading.Lock()


def registry_for(database: str | None) -> ClaimRegistry:
    """The process's registry of the SQLite ``database`` (a file path, or None/":memory:" for a private one)."""
    name = str(Path(database).resolve()) if database and database != ":memory:" else ""
    with _registries_lock:
        registry = _registries.get(name)
        if registry is None:
            registry = _registries[name] = ClaimRegistry(Path(name + LOCK_SUFFIX) if name else None)
        return registry


def claim_sqlite(
    ctx: ContextDep,
    caller: CurrentKey,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Iterator[str | None]:
    """The request's Idempotency-Key, claimed on SQLite until the request's session has committed or rolled back.

    Declared before the session in a route, so it is set up before the session's first statement (and its
    ``BEGIN IMMEDIATE``) and torn down after the session's commit, before the response is sent.
    """
    url = ctx.engine.url
    if idempotency_key is None or url.get_backend_name() != "sqlite":
        yield idempotency_key
        return
    with registry_for(url.database).claim(claim_id(caller.tenant_id, idempotency_key)):
        yield idempotency_key


IdempotencyKey = Annotated[str | None, Depends(claim_sqlite, scope="function")]

"""ORM models (SQLAlchemy 2.0): tenants, files, sweeps, jobs, job events, artifacts, results, webhook deliveries
and API keys.

Files, sweeps, jobs, webhook deliveries and API keys carry a ``tenant_id``; events, artifacts and results belong to
their job's tenant, sweep artifacts to their sweep's.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    TIMESTAMP,
    BigInteger,
    Boolean,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A prefixed id that sorts by creation time (48-bit milliseconds + 80 random bits, Crockford base32)."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return f"{prefix}-{''.join(reversed(chars))}"


class UtcTimestamp(TypeDecorator[datetime]):
    """TIMESTAMP WITH TIME ZONE that always returns aware UTC datetimes (SQLite stores them naive)."""

    impl = TIMESTAMP(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store UTC; SQLite has no zone, so the value is stored naive (and read back as UTC)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime stored in a timezone-aware column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Aware UTC whatever the backend returned."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with constraint names Alembic can diff."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: UtcTimestamp()}


# The tenant that ``dwf serve``'s key, DWF_API_KEY and every row older than tenancy belong to (migration 0002).
DEFAULT_TENANT_ID = "ten-default"
DEFAULT_TENANT_NAME = "default"


class Tenant(Base):
    """An owner of files, jobs and API keys; the quota columns override the Settings defaults (None: default)."""

    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    max_active_jobs: Mapped[int | None] = mapped_column(Integer)
    max_stored_bytes: Mapped[int | None] = mapped_column(BigInteger)
    max_epoch_examples: Mapped[int | None] = mapped_column(BigInteger)
    # Called on every status change of the tenant's jobs (a job's own webhook_url replaces it); HMAC key of the
    # signature header. The secret must be readable to sign, so it is stored as given (never logged or echoed).
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    webhook_secret: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def _tenant_fk() -> Mapped[str]:
    return mapped_column(String(40), ForeignKey("tenants.id"), index=True)


class TimestampedModel(Base):
    """created_at / updated_at columns."""

    __abstract__ = True
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class File(TimestampedModel):
    """An upload (model, weights or dataset); its bytes live in the blob store under ``storage_key``."""

    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = _tenant_fk()
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(16), index=True)
    format: Mapped[str] = mapped_column(String(32))
    storage_key: Mapped[str] = mapped_column(String(512))
    # Training examples counted from the upload's headers (npz/safetensors y_train, CSV rows, image-folder
    # files); None where that is not cheap (tarballs, gzip): their epoch-examples quota is checked at validation.
    examples: Mapped[int | None] = mapped_column(BigInteger)


class Sweep(TimestampedModel):
    """A grid of ordinary jobs (its children, ``Job.sweep_id``); its status is derived from theirs."""

    __tablename__ = "sweeps"
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = _tenant_fk()
    # The sweep as submitted: the base job request and the grid.
    request: Mapped[dict[str, Any]]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # Set when every child has ended and the sweep's artifacts (frontier.json, frontier.png) are stored.
    finished_at: Mapped[datetime | None]


class Job(TimestampedModel):
    """A sparsification job; ``status`` drives everything, the broker message only says "look at me"."""

    __tablename__ = "jobs"
    # Idempotency keys are per tenant: two tenants may send the same key.
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = _tenant_fk()
    status: Mapped[str] = mapped_column(String(24), index=True)
    phase: Mapped[str | None] = mapped_column(String(24))
    request: Mapped[dict[str, Any]]
    model_file_id: Mapped[str | None] = mapped_column(String(40), index=True)
    weights_file_id: Mapped[str | None] = mapped_column(String(40), index=True)
    dataset_file_id: Mapped[str | None] = mapped_column(String(40), index=True)
    epoch: Mapped[int | None] = mapped_column(Integer)
    epochs: Mapped[int | None] = mapped_column(Integer)
    progress: Mapped[float | None]
    eta_seconds: Mapped[float | None]
    metrics: Mapped[dict[str, Any] | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_param: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(index=True)
    heartbeat_at: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Links without foreign-key constraints: adding one would make SQLite rebuild the jobs table (and cascade into
    # its events); the service writes them only with ids it has just checked.
    sweep_id: Mapped[str | None] = mapped_column(String(40), index=True)
    parent_job_id: Mapped[str | None] = mapped_column(String(40), index=True)
    # Called on every status change of this job (instead of the tenant's); see WebhookDelivery.
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    webhook_secret: Mapped[str | None] = mapped_column(String(128))
    # The blob-store key of the job's latest training checkpoint and the epoch it ends (a re-delivered job resumes
    # from it on any worker); cleared when the checkpoint is removed after the retention time.
    checkpoint_key: Mapped[str | None] = mapped_column(String(512))
    checkpoint_epoch: Mapped[int | None] = mapped_column(Integer)


class JobEvent(Base):
    """A line of a job's log: a message or a metrics record (OpenAI's fine-tuning event shape)."""

    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(8), default="info")
    type: Mapped[str] = mapped_column(String(16), default="message")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None]


class Artifact(Base):
    """One output file of a job, stored in the blob store."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobResult(Base):
    """The collapsed sparse weights (model.sparse.safetensors) and final metrics, kept in the database."""

    __tablename__ = "job_results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    sparse_weights: Mapped[bytes] = mapped_column(LargeBinary)
    metrics: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SweepArtifact(Base):
    """One output file of a sweep (frontier.json, frontier.png), stored in the blob store."""

    __tablename__ = "sweep_artifacts"
    __table_args__ = (UniqueConstraint("sweep_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sweep_id: Mapped[str] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One call of a webhook for one status change of a job: written in the same transaction as the change (an
    outbox, so none is lost), then sent and retried with backoff until delivered or out of attempts."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = _tenant_fk()
    url: Mapped[str] = mapped_column(String(2048))
    event: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    # pending → delivered | failed (attempts used up)
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(index=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]


class ApiKey(Base):
    """An API key, stored as a salted SHA-256 of the (high-entropy, random) key only."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = _tenant_fk()
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    salt: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128), default="default")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)

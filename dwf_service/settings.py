"""One pydantic-settings ``Settings`` for the API, the worker and ``dwf serve`` (environment prefix ``DWF_``)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dwf_service.auth import key_length_problem


def _default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "dwf"


class Settings(BaseSettings):
    """Every setting of the job service; empty URLs are derived from ``data_dir`` (the embedded mode)."""

    # hide_input_in_errors: a refused setting may be a secret (DWF_API_KEY, DWF_S3_SECRET_ACCESS_KEY); never echo it.
    model_config = SettingsConfigDict(env_prefix="DWF_", env_file=".env", extra="ignore", hide_input_in_errors=True)

    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str = ""
    broker_url: str = ""
    storage: Literal["local", "s3"] = "local"
    s3_endpoint_url: str | None = None
    s3_bucket: str = "dwf"
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_prefix: str = ""

    api_key: str | None = None
    max_upload_bytes: int = Field(default=2 * 1024**3, gt=0)
    # A job's lease must outlive the longest pause between heartbeats (a slow epoch-end evaluation included).
    lease_seconds: float = Field(default=60.0, gt=0)
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    reconcile_seconds: float = Field(default=10.0, ge=0)
    # An unleased validating/queued job older than this is re-enqueued (its message may have been lost).
    requeue_after_seconds: float = Field(default=300.0, gt=0)
    redis_visibility_timeout: int = Field(default=43_200, gt=0)
    # A SQL broker's delivered message (kombu keeps them all) is deleted by the reconciler this long after its
    # delivery, unless its job is unfinished (0 = keep them all); see dwf_service/broker_gc.py.
    broker_keep_delivered_seconds: float = Field(default=600.0, ge=0)
    # Celery time limits in seconds (0 = none): soft < hard < redis_visibility_timeout, checked at worker start.
    task_soft_time_limit: float = Field(default=36_000.0, ge=0)
    task_time_limit: float = Field(default=39_600.0, ge=0)
    # A worker child whose RSS passed this many KiB is replaced after its task (0 = never).
    worker_max_memory_per_child_kib: int = Field(default=0, ge=0)
    # Cold shutdown first gives the running task this long (Celery's soft shutdown).
    worker_soft_shutdown_timeout: float = Field(default=30.0, ge=0)
    # Per-tenant quotas (0 = unlimited); a tenant row's own max_* columns override them (`dwf keys quota`).
    # Jobs not yet finished (validating_files, queued, running) at once:
    quota_max_active_jobs: int = Field(default=10, ge=0)
    # Bytes of uploads plus job artifacts kept:
    quota_max_stored_bytes: int = Field(default=50 * 1024**3, ge=0)
    # epochs × training examples of one job, examples counted from the dataset upload's headers (tarballs and gzip
    # files when the worker's validation has loaded them):
    quota_max_epoch_examples: int = Field(default=100_000_000, ge=0)
    # The Retry-After of a 429 (seconds): when a running job may have ended or space been freed.
    quota_retry_after_seconds: int = Field(default=60, ge=1)
    # How long an Idempotency-Key of POST /v1/jobs is remembered (from its job's creation); then it is new again.
    idempotency_key_ttl_seconds: float = Field(default=86_400.0, gt=0)
    # The most children (grid points) one sweep may have; each child also counts against quota_max_active_jobs.
    sweep_max_children: int = Field(default=64, ge=1, le=1024)
    # Training checkpoints also go to the blob store after every epoch, so a job re-delivered to another worker
    # resumes there (dwf_service/blob_checkpoints.py); a job's blob is deleted this long after it ended (0 = at the
    # reconciler's next pass). A blob larger than checkpoint_max_bytes is not unpacked.
    checkpoint_retention_seconds: float = Field(default=86_400.0, ge=0)
    checkpoint_max_bytes: int = Field(default=8 * 1024**3, gt=0)
    # Webhooks (dwf_service/webhooks.py): every status change of a job is POSTed to its (or its tenant's) URL,
    # retried base × 2^(n-1) seconds (at most webhook_max_delay_seconds) apart, at most webhook_max_attempts times.
    # The API process sends them every webhook_poll_seconds (0 = this process sends none).
    webhook_max_attempts: int = Field(default=6, ge=1, le=50)
    webhook_base_delay_seconds: float = Field(default=10.0, ge=0)
    webhook_max_delay_seconds: float = Field(default=3600.0, ge=0)
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    webhook_poll_seconds: float = Field(default=1.0, ge=0)
    # URLs naming or resolving to loopback, private, link-local or reserved addresses (SSRF): None = allowed in dev,
    # refused in production.
    webhook_allow_private: bool | None = None
    # S3 storage: artifact downloads answer 307 to a presigned URL valid this long (False: the API streams them).
    # Presigned URLs name s3_public_endpoint_url when set (the address clients reach S3 at), else s3_endpoint_url.
    s3_presign_downloads: bool = True
    s3_presign_expiry_seconds: int = Field(default=300, ge=1, le=604_800)
    s3_public_endpoint_url: str | None = None
    device: str = "auto"
    env: Literal["dev", "production"] = "dev"

    @field_validator("api_key")
    @classmethod
    def _check_api_key(cls, value: str | None) -> str | None:
        # Refused here, at start, rather than stored: a key of another length is never looked up (auth.py).
        if value and (problem := key_length_problem(value)):
            raise ValueError(f"{problem}; unset it and `dwf serve` creates a key, or use `dwf keys create`")
        return value

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        self.data_dir = self.data_dir.expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'dwf.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.data_dir / 'broker.db'}"
        if self.heartbeat_seconds * 2 > self.lease_seconds:
            raise ValueError("heartbeat_seconds must be at most half of lease_seconds so one missed beat is survivable")
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("storage=s3 needs s3_bucket")
        if self.env == "production" and self.s3_secret_access_key in ("minioadmin", "changeme"):
            raise ValueError("refusing a default S3 secret outside dev")
        return self

    @property
    def webhook_private_allowed(self) -> bool:
        """Whether webhook URLs may reach loopback/private addresses (``webhook_allow_private``, default: dev only)."""
        return self.env == "dev" if self.webhook_allow_private is None else self.webhook_allow_private

    @property
    def blob_dir(self) -> Path:
        """Where LocalStorage keeps uploads and artifacts."""
        return self.data_dir / "blobs"

    @property
    def work_dir(self) -> Path:
        """Per-job scratch space of the worker (inputs, outputs) and the checkpoints a re-delivered job resumes."""
        return self.data_dir / "work"


class SettingsError(ValueError):
    """Settings that cannot be used; the message is one line naming the ``DWF_*`` variables at fault."""


def load_settings(**overrides: Any) -> Settings:
    """``Settings(**overrides)`` read from the environment, or SettingsError with a one-line message."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = str(error["msg"]).removeprefix("Value error, ")
            field = ".".join(str(part) for part in error["loc"])
            problems.append(f"DWF_{field.upper()}: {message}" if field else message)
        raise SettingsError("; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings singleton (read from the environment once); SettingsError if they are unusable."""
    return load_settings()

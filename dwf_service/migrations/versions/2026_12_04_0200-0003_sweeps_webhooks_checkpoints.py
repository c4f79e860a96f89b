"""scale-out: sweeps and their artifacts, webhook deliveries, job links (sweep, parent), webhooks, blob checkpoints

New columns of jobs and tenants are nullable and have no foreign keys, so SQLite adds them in place
(ALTER TABLE ADD COLUMN) without rebuilding the jobs table.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 02:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_COLUMNS = (
    ("sweep_id", sa.String(length=40)),
    ("parent_job_id", sa.String(length=40)),
    ("webhook_url", sa.String(length=2048)),
    ("webhook_secret", sa.String(length=128)),
    ("checkpoint_key", sa.String(length=512)),
    ("checkpoint_epoch", sa.Integer()),
)
TENANT_COLUMNS = (("webhook_url", sa.String(length=2048)), ("webhook_secret", sa.String(length=128)))
JOB_INDEXES = ("sweep_id", "parent_job_id")


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("finished_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("updated_at", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_sweeps_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
        sa.UniqueConstraint("tenant_id", "idempotency_key", name=op.f("uq_sweeps_tenant_id")),
    )
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sweeps_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_sweeps_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "sweep_artifacts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sweep_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("storage_key", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["sweep_id"], ["sweeps.id"], name=op.f("fk_sweep_artifacts_sweep_id_sweeps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweep_artifacts")),
        sa.UniqueConstraint("sweep_id", "name", name=op.f("uq_sweep_artifacts_sweep_id")),
    )
    with op.batch_alter_table("sweep_artifacts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sweep_artifacts_sweep_id"), ["sweep_id"], unique=False)

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_webhook_deliveries_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_webhook_deliveries_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_deliveries_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_webhook_deliveries_next_attempt_at"), ["next_attempt_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_webhook_deliveries_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_webhook_deliveries_tenant_id"), ["tenant_id"], unique=False)

    for name, type_ in JOB_COLUMNS:
        op.add_column("jobs", sa.Column(name, type_, nullable=True))
    for name in JOB_INDEXES:
        op.create_index(op.f(f"ix_jobs_{name}"), "jobs", [name], unique=False)
    for name, type_ in TENANT_COLUMNS:
        op.add_column("tenants", sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    """Revert this revision (sweeps, their artifacts' rows and webhook deliveries are dropped)."""
    # Plain DROP COLUMN (SQLite ≥ 3.35 drops a column without FK or index in place): batch mode would rebuild
    # tenants and jobs, which their children's foreign keys refuse or cascade into.
    for name, _ in reversed(TENANT_COLUMNS):
        op.drop_column("tenants", name)
    for name in JOB_INDEXES:
        op.drop_index(op.f(f"ix_jobs_{name}"), table_name="jobs")
    for name, _ in reversed(JOB_COLUMNS):
        op.drop_column("jobs", name)
    op.drop_table("webhook_deliveries")
    op.drop_table("sweep_artifacts")
    op.drop_table("sweeps")

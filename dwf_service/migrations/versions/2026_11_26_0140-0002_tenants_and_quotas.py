"""tenants and quotas: a tenants table, tenant_id on files, jobs and API keys, per-tenant idempotency keys

Every existing row goes to the "default" tenant (the one ``dwf serve``'s key belongs to).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 01:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_TENANT_ID = "ten-default"
OWNED = ("api_keys", "files", "jobs")


def _foreign_keys_off() -> bool:
    """SQLite: turn FK enforcement off, so batch mode's DROP TABLE jobs cannot cascade into events and artifacts.

    The pragma is a no-op inside a transaction; then the tables being rebuilt must have no children yet (a fresh
    database upgraded in one go), which is checked rather than assumed.
    """
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return False
    bind.exec_driver_sql("PRAGMA foreign_keys=OFF")
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar() == 0:
        return True
    for child in ("job_events", "artifacts", "job_results"):
        if bind.exec_driver_sql(f"SELECT 1 FROM {child} LIMIT 1").first() is not None:
            raise RuntimeError(
                "cannot rebuild the jobs table with SQLite foreign keys on (its events and artifacts would be "
                "deleted): run this migration on a connection outside a transaction"
            )
    return False


def upgrade() -> None:
    """Apply this revision."""
    fk_was_turned_off = _foreign_keys_off()
    tenants = op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("max_active_jobs", sa.Integer(), nullable=True),
        sa.Column("max_stored_bytes", sa.BigInteger(), nullable=True),
        sa.Column("max_epoch_examples", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )
    assert tenants is not None
    op.bulk_insert(tenants, [{"id": DEFAULT_TENANT_ID, "name": "default", "created_at": datetime.now(UTC)}])

    for table in OWNED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("tenant_id", sa.String(length=40), nullable=True))
        op.execute(sa.text(f"UPDATE {table} SET tenant_id = :t").bindparams(t=DEFAULT_TENANT_ID))
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("examples", sa.BigInteger(), nullable=True))
    for table in OWNED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column("tenant_id", existing_type=sa.String(length=40), nullable=False)
            batch_op.create_index(batch_op.f(f"ix_{table}_tenant_id"), ["tenant_id"], unique=False)
            batch_op.create_foreign_key(batch_op.f(f"fk_{table}_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"])
            if table == "jobs":
                batch_op.drop_constraint(batch_op.f("uq_jobs_idempotency_key"), type_="unique")
                batch_op.create_unique_constraint(batch_op.f("uq_jobs_tenant_id"), ["tenant_id", "idempotency_key"])
    if fk_was_turned_off:
        op.get_bind().exec_driver_sql("PRAGMA foreign_keys=ON")


def downgrade() -> None:
    """Revert this revision (every tenant's rows are kept, without their owner)."""
    fk_was_turned_off = _foreign_keys_off()
    for table in reversed(OWNED):
        with op.batch_alter_table(table, schema=None) as batch_op:
            if table == "jobs":
                batch_op.drop_constraint(batch_op.f("uq_jobs_tenant_id"), type_="unique")
                batch_op.create_unique_constraint(batch_op.f("uq_jobs_idempotency_key"), ["idempotency_key"])
            batch_op.drop_constraint(batch_op.f(f"fk_{table}_tenant_id_tenants"), type_="foreignkey")
            batch_op.drop_index(batch_op.f(f"ix_{table}_tenant_id"))
            batch_op.drop_column("tenant_id")
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_column("examples")
    op.drop_table("tenants")
    if fk_was_turned_off:
        op.get_bind().exec_driver_sql("PRAGMA foreign_keys=ON")

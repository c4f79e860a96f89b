"""Delete the messages the embedded SQL broker has delivered, which kombu keeps forever.

kombu's SQLAlchemy transport (``sqla+…``, the embedded default ``DIR/broker.db``) never deletes a message: its
``_get`` marks the row ``visible = 0`` and stamps ``timestamp`` with the delivery time (local, naive), and the ack
only drops the message from the consumer's memory. A redelivery (reject, or unacked messages restored at a
worker's shutdown) inserts a new row from that memory, and no code path reads a ``visible = 0`` row again, so the
table grows by one row per message for good. Such a row is therefore either acknowledged or held, unacked, by a
worker that already has it; kombu cannot tell which. To keep even the inert row of a message still in flight
(a training holds its message unacked for hours, ``task_acks_late``), a row is deleted only when it was delivered
more than ``DWF_BROKER_KEEP_DELIVERED_SECONDS`` ago *and* its job is not unfinished. Pending rows (``visible = 1``)
are never touched. The reconciler runs this on every pass; Redis needs nothing of the kind (it deletes on ack).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
    delete,
    false,
    inspect,
    select,
)

from dwf_service.context import ServiceContext
from dwf_service.jobs import ACTIVE
from dwf_service.models import Job

log = logging.getLogger(__name__)

SQL_BROKER_PREFIXES = ("sqla+", "sqlalchemy+")
BATCH = 500
# Only the columns read here, with kombu's default table name (we set no ``message_tablename``).
MESSAGES = Table(
    "kombu_message",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("visible", Boolean),
    Column("timestamp", DateTime),
    Column("payload", Text),
)
_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def is_sql_broker(broker_url: str) -> bool:
    """True for a kombu SQLAlchemy broker URL."""
    return broker_url.startswith(SQL_BROKER_PREFIXES)


def _engine(broker_url: str) -> Engine:
    url = broker_url.split("+", 1)[1]
    with _engines_lock:
        if url not in _engines:
            # No WAL pragma here (unlike dwf.db): the journal mode of kombu's file stays kombu's.
            args = {"timeout": 30.0} if url.startswith("sqlite") else {}
            _engines[url] = create_engine(url, connect_args=args, pool_pre_ping=not url.startswith("sqlite"))
        return _engines[url]


def job_of(payload: str | None) -> str | None:
    """The ``job_id`` kwarg of a Celery (protocol 2, JSON) message as kombu stores it, or None."""
    try:
        message = json.loads(payload or "")
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _args, kwargs, _embed = json.loads(body)
        job_id = kwargs.get("job_id")
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return job_id if isinstance(job_id, str) else None


def _unfinished(ctx: ServiceContext, job_ids: Iterable[str]) -> set[str]:
    ids = list(set(job_ids))
    if not ids:
        return set()
    with ctx.sessions() as session:
        return set(session.scalars(select(Job.id).where(Job.id.in_(ids), Job.status.in_(ACTIVE))))


def clean_broker(ctx: ServiceContext, *, now: datetime | None = None) -> int:
    """Delete the SQL broker's delivered messages older than the setting, except those of unfinished jobs.

    Returns how many rows were deleted (0 for another broker, a setting of 0 or no table yet). ``now`` is local
    and naive, as kombu's delivery stamps are.
    """
    settings = ctx.settings
    keep = settings.broker_keep_delivered_seconds
    if not keep or not is_sql_broker(settings.broker_url):
        return 0
    engine = _engine(settings.broker_url)
    if not inspect(engine).has_table(MESSAGES.name):
        return 0  # nothing published yet
    cutoff = (now or datetime.now()) - timedelta(seconds=keep)
    old = [MESSAGES.c.visible == false(), MESSAGES.c.timestamp < cutoff]
    deleted, after = 0, 0
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                select(MESSAGES.c.id, MESSAGES.c.payload)
                .where(*old, MESSAGES.c.id > after)
                .order_by(MESSAGES.c.id)
                .limit(BATCH)
            ).all()
        if rows:
            after = rows[-1].id
            jobs = {row.id: job_of(row.payload) for row in rows}
            keep_jobs = _unfinished(ctx, (j for j in jobs.values() if j is not None))
            doomed = [row_id for row_id, job_id in jobs.items() if job_id not in keep_jobs]
            if doomed:
                # visible = 0 again in the DELETE: a row not yet delivered never goes (kombu never resets it).
                with engine.begin() as conn:
                    deleted += conn.execute(delete(MESSAGES).where(MESSAGES.c.id.in_(doomed), *old)).rowcount
        if len(rows) < BATCH:
            break
    if deleted:
        log.info("deleted %d delivered messages from the SQL broker", deleted)
    return deleted

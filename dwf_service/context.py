"""The service's wiring: settings, session factory and blob store, built once per process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from dwf_service.db import make_engine, make_session_factory
from dwf_service.queue import Publisher, broker_ping, celery_publisher
from dwf_service.settings import Settings
from dwf_service.storage import Storage, make_storage


@dataclass
class ServiceContext:
    """Everything a request handler, task or reconciler needs besides the job id."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Storage
    broker_check: Callable[[], None] | None = None

    @classmethod
    def create(
        cls, settings: Settings, publisher: Publisher | None = None, *, use_celery: bool = True
    ) -> ServiceContext:
        """Build the context; with ``use_celery`` and no publisher, messages go to Celery by task name."""
        engine = make_engine(settings.database_url)
        if publisher is None and use_celery:
            publisher = celery_publisher(settings)
        check = (lambda: broker_ping(settings)) if use_celery else None
        return cls(settings, engine, make_session_factory(engine, publisher), make_storage(settings), check)

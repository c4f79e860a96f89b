"""Run the Alembic migrations programmatically (``dwf serve`` and the Docker entrypoints call ``upgrade_db``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
# Date-stamped revision files, e.g. 2026_11_25_2105-3f2a_initial_schema.py.
FILE_TEMPLATE = "%%(year)d_%%(month).2d_%%(day).2d_%%(hour).2d%%(minute).2d-%%(rev)s_%%(slug)s"


def alembic_config(database_url: str) -> Config:
    """An Alembic Config pointing at the packaged migrations and ``database_url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("file_template", FILE_TEMPLATE)
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade_db(database_url: str) -> None:
    """Bring the database at ``database_url`` to the latest revision."""
    command.upgrade(alembic_config(database_url), "head")


def main() -> None:
    """``python -m dwf_service.migrate``: upgrade the database of ``DWF_DATABASE_URL`` (the API entrypoint runs it)."""
    from dwf_service.settings import get_settings

    upgrade_db(get_settings().database_url)


if __name__ == "__main__":
    main()

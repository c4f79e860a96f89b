"""Alembic migrations of the job service database (``upgrade_db`` runs them)."""

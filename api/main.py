"""The ASGI app built from the ``DWF_*`` environment: ``uvicorn api.main:app`` (the API container's default)."""

from __future__ import annotations

from api.app import create_app

app = create_app()

"""The ASGI app built from the ``DWF_*`` environment: ``uvicorn api.main:app`` (the API container's default)."""

from __future__ import annotations

from api.app import create_app
from dwf_service.logging_json import configure_logging, log_format

if log_format() == "json":  # DWF_LOG_FORMAT=json, or DWF_ENV=production: one JSON object per log line
    configure_logging("json")
app = create_app()

"""The ASGI app built from the ``DWF_*`` environment: ``uvicorn api.main:app`` (the API container's default)."""

from __future__ import annotations

from api.app import create_app
from dwf_service.logging_json import configure_logging, log_format
from dwf_service.settings import SettingsError

if log_format() == "json":  # DWF_LOG_FORMAT=json, or DWF_ENV=production: one JSON object per log line
    configure_logging("json")
try:
    app = create_app()
except SettingsError as exc:  # e.g. a DWF_API_KEY that could never match: the server does not start
    raise SystemExit(f"error: {exc}") from None

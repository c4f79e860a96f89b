"""Where the SDK finds the server and the key: DWF_SERVER / DWF_API_KEY, else the config.json of ``dwf serve``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from dwf_client.errors import DwfError

CONFIG_NAME = "config.json"  # what dwf_service.serve.config_path writes inside the data dir
DEFAULT_SERVER = "http://127.0.0.1:8000"


class ConfigError(DwfError):
    """No usable server URL or API key."""


def default_data_dir() -> Path:
    """$DWF_DATA_DIR, else $XDG_DATA_HOME/dwf, else ~/.local/share/dwf (the defaults of ``dwf serve``)."""
    if os.environ.get("DWF_DATA_DIR"):
        return Path(os.environ["DWF_DATA_DIR"]).expanduser()
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "dwf"


def _client_url(url: str) -> str:
    """A URL to connect to: a wildcard listen address (0.0.0.0, ::) becomes the loopback address."""
    parts = urlsplit(url.rstrip("/"))
    host = parts.hostname or ""
    if host in ("0.0.0.0", "::", "[::]", ""):
        netloc = "127.0.0.1" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


@dataclass(frozen=True)
class Settings:
    """The resolved server URL and API key, and where they came from (for error messages)."""

    server: str
    api_key: str
    source: str


def read_config(data_dir: Path | None = None) -> dict[str, str]:
    """The ``{"url", "api_key"}`` that ``dwf serve`` saved (empty when there is none or it is unreadable)."""
    path = (data_dir or default_data_dir()) / CONFIG_NAME
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(raw, dict) else {}


def resolve(server: str | None = None, api_key: str | None = None, data_dir: Path | None = None) -> Settings:
    """Arguments first, then DWF_SERVER / DWF_API_KEY, then the local config.json; raises ConfigError without a key."""
    path = (data_dir or default_data_dir()) / CONFIG_NAME
    config = read_config(data_dir)
    url = server or os.environ.get("DWF_SERVER") or config.get("url") or DEFAULT_SERVER
    key = api_key or os.environ.get("DWF_API_KEY") or config.get("api_key")
    if not key:
        raise ConfigError(f"no API key: set DWF_API_KEY, or run `dwf serve` here first (it writes {path})")
    source = "arguments/environment" if (api_key or os.environ.get("DWF_API_KEY")) else str(path)
    return Settings(server=_client_url(url), api_key=key, source=source)

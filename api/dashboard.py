"""The web dashboard: ``GET /`` (index.html) and ``/static/*`` (plain HTML, JS and CSS from api/static, no build).

The page itself is public; everything it shows comes from the /v1 API with the API key the user types in.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"


def install_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at ``/`` and its assets under ``/static``."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        """The single-page dashboard."""
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

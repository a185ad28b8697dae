"""Serves the web app (rest_web/webapp/) at ``/app/``: plain files shipped as package data, so
``pip install .`` alone serves it, with no Node at install or run time (docs/webapp.md).

Rules:
- files come only from the package's own ``webapp`` directory (Starlette's StaticFiles refuses
  paths that leave it);
- every answer carries a Content-Security-Policy that allows this origin's scripts and styles
  only, and WebSocket connections to any host (the connector listens on its own port): no
  inline script, no eval, no framing;
- ``Cache-Control: no-cache``: browsers revalidate (ETag) so an upgrade shows at the next load.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

WEBAPP_DIR = Path(__file__).resolve().parent / "webapp"
MOUNT = "/app"

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self' ws: wss:",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ]
)


class WebAppFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-cache"
        return response


def mount_webapp(app: FastAPI) -> None:
    """Serve the app under ``/app/`` (``/app`` redirects there); nothing if it is not installed."""
    if not (WEBAPP_DIR / "index.html").is_file():
        return
    app.mount(MOUNT, WebAppFiles(directory=WEBAPP_DIR, html=True), name="webapp")

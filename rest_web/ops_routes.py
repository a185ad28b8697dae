"""``/healthz``, ``/readyz`` and ``/metrics`` on the REST port, as every other process serves
them on ``IM_METRICS_PORT`` (common/opsweb.py): live, ready (with the failed checks), and the
Prometheus text of this process.

No ``from __future__ import annotations``: FastAPI reads the endpoint annotations.
"""

from typing import Annotated

from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from common import metrics
from common.health import Readiness


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    status: str = Field(description="ready or not ready")
    checks: dict[str, str] = Field(description="every check: ok or failed")
    failed: dict[str, str] = Field(description="why each failed check failed; draining too")


def add_routes(app: FastAPI, readiness: Readiness) -> None:
    @app.get("/healthz", tags=["ops"])
    async def healthz() -> HealthOut:
        """Live: the process answers. Nothing else is checked (see /readyz)."""
        return HealthOut(status="ok")

    @app.get(
        "/readyz",
        tags=["ops"],
        responses={503: {"model": ReadyOut, "description": "a check failed, or shutting down"}},
    )
    async def readyz() -> JSONResponse:
        """Ready: every check passes (database, schema, Redis where used) and the process is
        not shutting down."""
        report = await readiness.report()
        return JSONResponse(report.as_json(), status_code=200 if report.ready else 503)

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}},
    )
    async def prometheus(accept: Annotated[str, Header(max_length=1024)] = "") -> Response:
        """This process's metrics (docs/operations.md)."""
        body, content_type = metrics.exposition(accept)
        return Response(body, media_type=content_type)

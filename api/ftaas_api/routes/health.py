"""Liveness (the process answers) and readiness (SQL and Redis answer)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ftaas_api.deps import DB
from ftaas_core.queue import get_redis

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(db: DB) -> JSONResponse:
    checks: dict[str, str] = {}
    for name, ping in (("database", db.ping), ("redis", lambda: get_redis().ping())):
        try:
            ping()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", **checks}, status_code=200 if ready else 503
    )

"""Liveness (the process answers) and readiness (it can serve: the database answers).

Both are coroutines, answered on the event loop: a request threadpool full of SQL waiting on a
hung database delays neither, so liveness never fails for the database's sake. Redis is not
needed to serve (keys are checked in SQL, a created job is recorded and the reconciler enqueues
it once Redis is back), so readiness reports it but does not depend on it.
"""

from __future__ import annotations

from anyio import CapacityLimiter, move_on_after, to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ftaas_api.auth import KeyGate
from ftaas_api.deps import DB
from ftaas_core.db import Database

router = APIRouter(tags=["health"])

PING_SECONDS = 3.0
"""Within the readiness probe's timeout (k8s/base/api.yaml), so the probe reads our answer."""
_PINGS = CapacityLimiter(1)
"""One ping at a time, on a thread of its own: pings stuck on a hung database hold that one
thread, never the requests' threadpool."""


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, db: DB) -> JSONResponse:
    database = await _database(db)
    gate: KeyGate = request.app.state.keys
    redis = "unavailable: keys checked in SQL, jobs enqueued once back" if gate.blind() else "ok"
    ready = database == "ok"
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "database": database, "redis": redis},
        status_code=200 if ready else 503,
    )


async def _database(db: Database) -> str:
    """ "ok", or why not; a ping still waiting after PING_SECONDS is left to finish on its own."""
    with move_on_after(PING_SECONDS):
        try:
            await to_thread.run_sync(db.ping, abandon_on_cancel=True, limiter=_PINGS)
        except Exception as exc:
            return f"unavailable: {type(exc).__name__}"
        return "ok"
    return f"unavailable: no answer in {PING_SECONDS:g} s"

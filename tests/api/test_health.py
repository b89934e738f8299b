"""Readiness means "can serve": Redis away leaves the API ready (jobs are recorded and enqueued
once it is back), a database that does not answer makes it unready within the probe's time.
Liveness waits on neither: it is answered on the event loop even while every request thread
waits on a hung database."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest
from redis import Redis

from ftaas_api.auth import BLIND_SECONDS
from ftaas_api.routes.health import PING_SECONDS
from ftaas_core.db import Database
from ftaas_core.keys import create_key
from ftaas_core.queue import is_enqueued
from tests.conftest import Backend, api_server, new_key, tenant_client
from tests.support.data import taught_dataset
from tests.support.jobs import create_job, upload, wait_until
from tests.support.services import RedisServer, TcpProxy, answers, postgres_database


def test_redis_down_leaves_the_api_ready_and_a_new_job_waits_in_sql(
    backend: Backend, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        with (
            api_server(backend, FTAAS_REDIS_URL=redis.url) as (url, _),
            tenant_client(url, new_key("redis-away")) as http,
        ):
            file_id = upload(http, taught_dataset())
            redis.kill()

            def redis_reported_away() -> httpx2.Response | None:
                response = httpx2.get(f"{url}/readyz", timeout=10)
                return response if response.json()["redis"] != "ok" else None

            ready = wait_until(redis_reported_away, BLIND_SECONDS + 10, "Redis reported away")
            assert ready.status_code == 200, ready.text
            assert ready.json()["status"] == "ready" and ready.json()["database"] == "ok"

            job = create_job(http, training_file=file_id)  # answered, with nothing to enqueue on
            assert job["status"] == "queued"
            redis.start()  # back, and empty
            queue = Redis.from_url(redis.url)
            wait_until(lambda: is_enqueued(job["id"], 0, queue), 30, "the reconciler's enqueue")
            wait_until(
                lambda: httpx2.get(f"{url}/readyz").json()["redis"] == "ok", 10, "Redis ok again"
            )
    finally:
        redis.kill()


def test_a_hung_database_fails_readiness_in_time_and_never_liveness(backend: Backend) -> None:
    if not answers("127.0.0.1", 5432):
        pytest.skip("needs PostgreSQL on 127.0.0.1:5432 to put a freezable proxy in front of")
    with postgres_database() as direct_url:
        proxy = TcpProxy(5432)
        proxy.start()
        database = Database(direct_url)
        database.migrate()
        with database.session() as session:
            headers = {"Authorization": f"Bearer {create_key(session, 'db-hung')}"}
        database.engine.dispose()
        via_proxy = direct_url.replace(":5432/", f":{proxy.port}/")
        env = {"FTAAS_DATABASE_URL": via_proxy, "FTAAS_DATABASE_CONNECT_TIMEOUT_SECONDS": "2"}
        with api_server(backend, **env) as (url, _), ThreadPoolExecutor(40) as clients:
            assert httpx2.get(f"{url}/v1/files", headers=headers).status_code == 200
            proxy.freeze()  # connections stay open, answers never come
            waiting = [
                clients.submit(httpx2.get, f"{url}/v1/files", headers=headers, timeout=120)
                for _ in range(40)  # more than the API's request threads
            ]
            time.sleep(1)

            started = time.monotonic()
            assert httpx2.get(f"{url}/healthz", timeout=10).status_code == 200
            assert time.monotonic() - started < 2
            started = time.monotonic()
            ready = httpx2.get(f"{url}/readyz", timeout=30)
            assert ready.status_code == 503 and ready.json()["database"].startswith("unavailable")
            assert time.monotonic() - started < PING_SECONDS + 2, "within the probe's timeout"

            proxy.thaw()
            # Each waiting request either got through or was told to retry: never a 500.
            assert {f.result().status_code for f in waiting} <= {200, 503}
            wait_until(
                lambda: httpx2.get(f"{url}/readyz", timeout=30).status_code == 200,
                30,
                "ready again",
            )
        proxy.cut()

"""Faults in the services ftaas leans on: Redis, the object store and the database go away
and come back; jobs are never lost and the API answers 503 meanwhile, never a half-written 500."""

from __future__ import annotations

import signal
import socket
import time
import uuid
from pathlib import Path

import httpx2
import pytest

from ftaas_api.auth import BLIND_SECONDS
from ftaas_core.db import Database, get_database
from ftaas_core.keys import create_key, revoke_key
from tests.conftest import Backend, api_server, new_key, tenant_client
from tests.support.data import taught_dataset
from tests.support.jobs import (
    HYPERPARAMETERS,
    create_job,
    events,
    upload,
    wait_for_status,
    wait_until,
)
from tests.support.services import (
    RedisServer,
    TcpProxy,
    answers,
    free_port,
    postgres_database,
    store_behind_a_proxy,
)


@pytest.mark.training
@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_redis_restarted_empty_loses_no_job(backend: Backend, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    env = {"FTAAS_REDIS_URL": redis.url, "FTAAS_QUEUE_NAME": f"faults-{uuid.uuid4().hex[:6]}"}
    worker = backend.start("worker", **env)
    try:
        with (
            api_server(backend, **env) as (url, _),
            tenant_client(url, new_key("redis-fault")) as http,
        ):
            file_id = upload(http, taught_dataset())
            method = {
                "type": "supervised",
                "supervised": {"hyperparameters": HYPERPARAMETERS | {"n_epochs": 4}},
            }
            jobs = [create_job(http, training_file=file_id, method=method)["id"] for _ in range(3)]
            wait_until(
                lambda: any(e["type"] == "metrics" for e in events(http, jobs[0])),
                120,
                "training",
                [worker],
            )
            redis.kill()
            redis.start()  # same address, nothing in it: the queue is gone

            def all_finished() -> list[dict[str, object]] | None:
                found = [http.get(f"/v1/fine_tuning/jobs/{j}").json() for j in jobs]
                return (
                    found
                    if all(j["status"] in ("succeeded", "failed", "cancelled") for j in found)
                    else None
                )

            finished = wait_until(all_finished, 240, "every job to finish", [worker])
            assert [j["status"] for j in finished] == ["succeeded"] * 3, [
                j["error"] for j in finished
            ]
    finally:
        worker.stop()
        redis.kill()


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_redis_down_keys_are_checked_in_sql_and_revocation_holds(
    backend: Backend, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    kept, revoked = new_key("redis-down-kept"), new_key("redis-down-revoked")
    try:
        with api_server(backend, FTAAS_REDIS_URL=redis.url) as (url, _):

            def status(key: str) -> int:
                headers = {"Authorization": f"Bearer {key}"}
                return httpx2.get(f"{url}/v1/files", headers=headers, timeout=30).status_code

            assert status(kept) == status(revoked) == 200  # both now remembered by the server
            redis.kill()
            revoke_key(get_database(), revoked)  # in SQL; the server's Redis never hears of it
            # Once the server has gone BLIND_SECONDS without a sync, SQL decides every request.
            wait_until(lambda: status(revoked) == 401, BLIND_SECONDS + 3, "revoked key refused")
            assert status(kept) == 200  # reads go on
            redis.start()  # back, and empty: a new epoch, so nothing remembered is trusted
            assert status(kept) == 200
            assert status(revoked) == 401
    finally:
        redis.kill()


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_hung_redis_delays_no_request(backend: Backend) -> None:
    with socket.socket() as hung:  # accepts connections into its backlog, never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        redis_url = f"redis://127.0.0.1:{hung.getsockname()[1]}/0"
        with api_server(backend, FTAAS_REDIS_URL=redis_url) as (url, server):
            headers = {"Authorization": f"Bearer {new_key('redis-hung')}"}
            started = time.monotonic()
            response = httpx2.get(f"{url}/v1/files", headers=headers, timeout=60)
            assert response.status_code == 200  # the key checked in SQL
            assert time.monotonic() - started < 1.5  # no request waits on Redis
            server.kill(signal.SIGKILL)  # its reconciler thread waits on Redis too


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_object_store_unreachable_upload_is_503_and_leaves_no_file(backend: Backend) -> None:
    dead_endpoint = f"http://127.0.0.1:{free_port()}"
    env = {
        "FTAAS_STORAGE_URL": "s3://unreachable/ftaas",
        "FTAAS_S3_ENDPOINT_URL": dead_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with api_server(backend, **env) as (url, _), tenant_client(url, new_key("s3-fault")) as http:
        response = http.post(
            "/v1/files",
            data={"purpose": "fine-tune"},
            files={"file": ("t.jsonl", taught_dataset())},
        )
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert response.json()["error"]["type"] == "service_unavailable"
        assert http.get("/v1/files").json()["data"] == []


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_database_outage_is_503_and_the_api_recovers_by_itself(backend: Backend) -> None:
    if not answers("127.0.0.1", 5432):
        pytest.skip("needs PostgreSQL on 127.0.0.1:5432 to put a cuttable proxy in front of")
    with postgres_database() as direct_url:
        proxy = TcpProxy(5432)
        proxy.start()
        via_proxy = direct_url.replace(":5432/", f":{proxy.port}/")
        database = Database(direct_url)
        database.migrate()
        with database.session() as session:
            key = create_key(session, "db-fault")
        database.engine.dispose()
        headers = {"Authorization": f"Bearer {key}"}
        with api_server(backend, FTAAS_DATABASE_URL=via_proxy) as (url, _):
            assert httpx2.get(f"{url}/v1/files", headers=headers).status_code == 200
            proxy.cut()
            down = httpx2.get(f"{url}/v1/files", headers=headers, timeout=30)
            assert down.status_code == 503
            assert down.json()["error"]["message"].startswith("The database is unavailable")
            ready = httpx2.get(f"{url}/readyz", timeout=30)
            assert ready.status_code == 503
            assert ready.json()["database"].startswith("unavailable")
            proxy.start()
            deadline = time.monotonic() + 30
            while httpx2.get(f"{url}/v1/files", headers=headers).status_code != 200:
                assert time.monotonic() < deadline, "the API did not recover"
                time.sleep(0.5)
            assert httpx2.get(f"{url}/readyz").status_code == 200
        proxy.cut()


def train_through_a_store_outage(
    backend: Backend, outage_seconds: float, **worker_env: str
) -> list[str]:
    """A job whose object store goes away for ``outage_seconds`` right after its first
    checkpoint; the job once finished, and its event messages."""
    with store_behind_a_proxy() as (proxy, env):
        worker = backend.start("worker", **env, **worker_env)
        try:
            with (
                api_server(backend, **env) as (url, _),
                tenant_client(url, new_key(f"store-{uuid.uuid4().hex[:6]}")) as http,
            ):
                method = {
                    "type": "supervised",
                    "supervised": {"hyperparameters": HYPERPARAMETERS | {"n_epochs": 6}},
                }
                job = create_job(http, training_file=upload(http, taught_dataset()), method=method)
                said = lambda: [e["message"] for e in events(http, job["id"])]  # noqa: E731
                wait_until(
                    lambda: any(m.startswith("Checkpoint saved") for m in said()),
                    120,
                    "a first checkpoint",
                    [worker],
                )
                proxy.cut()
                time.sleep(outage_seconds)
                proxy.start()
                finished = wait_for_status(http, job["id"], {"succeeded", "failed"}, 240, [worker])
                assert finished["status"] == "succeeded", finished["error"]
                return said()
        finally:
            worker.stop()


@pytest.mark.training
@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_a_store_outage_shorter_than_the_bound_is_waited_out(backend: Backend) -> None:
    messages = train_through_a_store_outage(backend, 12)
    assert not any("unavailable" in m for m in messages), messages


@pytest.mark.training
@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_a_longer_store_outage_parks_the_job_which_resumes_on_no_retry(backend: Backend) -> None:
    messages = train_through_a_store_outage(backend, 10, FTAAS_OUTAGE_RETRY_SECONDS="2")
    assert any(m.startswith("Object store or database unavailable") for m in messages), messages
    assert not any(m.startswith("Worker lost") for m in messages)  # no retry spent
    attempts = [m for m in messages if m.startswith("Fine-tuning job started")]
    assert len(attempts) >= 2 and attempts[-1] != attempts[0]  # a new attempt resumed it

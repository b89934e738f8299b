"""The job lifecycle under concurrency, over the API on real SQL: exactly one of many concurrent
state changes wins, each real transition writes one event and one webhook, a terminal job stays
terminal, the active-job quota holds, and nothing a worker writes lands after its job left it."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest

from ftaas_core.db import get_database
from ftaas_core.events import add_event
from ftaas_core.leases import Lease, LeaseLost
from tests.conftest import Backend, api_server, new_key, tenant_client
from tests.support.data import taught_dataset
from tests.support.jobs import create_job, events, upload
from tests.support.services import free_port

CONCURRENCY = 30


@pytest.fixture
def queued_job(http: httpx2.Client) -> str:
    return create_job(http, training_file=upload(http, taught_dataset()))["id"]


@pytest.fixture
def webhook(http: httpx2.Client) -> str:
    """An endpoint for the tenant's job events (nothing listens: deliveries are only counted)."""
    response = http.post("/v1/webhooks", json={"url": f"http://127.0.0.1:{free_port()}/hook"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def at_once(http: httpx2.Client, job_id: str, actions: list[str]) -> list[httpx2.Response]:
    """POST every action on the job at the same moment, one thread each."""
    barrier = threading.Barrier(len(actions))

    def send(action: str) -> httpx2.Response:
        barrier.wait()
        return http.post(f"/v1/fine_tuning/jobs/{job_id}/{action}")

    with ThreadPoolExecutor(len(actions)) as pool:
        return list(pool.map(send, actions))


def deliveries(http: httpx2.Client, endpoint: str, job_id: str) -> list[str]:
    page = http.get(f"/v1/webhooks/{endpoint}/deliveries", params={"limit": 100}).json()
    return [d["type"] for d in page["data"] if d["job_id"] == job_id]


def messages(http: httpx2.Client, job_id: str) -> list[str]:
    return [e["message"] for e in events(http, job_id)]


def assert_refused_naming(responses: list[httpx2.Response], status: str) -> None:
    for response in responses:
        assert response.status_code == 400, response.text
        assert f"is {status}" in response.json()["error"]["message"]


def test_of_many_concurrent_cancels_exactly_one_wins(
    http: httpx2.Client, queued_job: str, webhook: str
) -> None:
    responses = at_once(http, queued_job, ["cancel"] * CONCURRENCY)
    won = [r for r in responses if r.status_code == 200]
    assert len(won) == 1
    assert_refused_naming([r for r in responses if r.status_code != 200], "cancelled")
    assert messages(http, queued_job).count("Job cancelled by user") == 1
    assert deliveries(http, webhook, queued_job) == ["fine_tuning.job.cancelled"]


@pytest.mark.parametrize("running", [False, True], ids=["queued", "running"])
def test_cancels_and_pauses_at_once_end_cancelled_for_good(
    http: httpx2.Client, queued_job: str, webhook: str, running: bool
) -> None:
    if running:
        assert Lease.acquire(get_database(), queued_job, "worker-a", 30) is not None
    half = CONCURRENCY // 2
    responses = at_once(http, queued_job, ["cancel", "pause"] * half)
    cancels, pauses = responses[0::2], responses[1::2]
    assert [r.status_code for r in cancels].count(200) == 1
    assert [r.status_code for r in pauses].count(200) <= 1  # only before the cancel
    job = http.get(f"/v1/fine_tuning/jobs/{queued_job}").json()
    assert job["status"] == "cancelled" and job["finished_at"] is not None
    assert job["estimated_finish"] is None
    assert messages(http, queued_job).count("Job cancelled by user") == 1
    assert deliveries(http, webhook, queued_job) == ["fine_tuning.job.cancelled"]
    for action in ("resume", "pause", "cancel"):  # a terminal job never leaves its status
        assert_refused_naming(
            [http.post(f"/v1/fine_tuning/jobs/{queued_job}/{action}")], "cancelled"
        )
    assert http.get(f"/v1/fine_tuning/jobs/{queued_job}").json()["status"] == "cancelled"


def test_concurrent_pauses_and_resumes_of_a_queued_job_stay_consistent(
    http: httpx2.Client, queued_job: str
) -> None:
    responses = at_once(http, queued_job, ["pause"] * 10)
    assert [r.status_code for r in responses].count(200) == 1
    assert_refused_naming([r for r in responses if r.status_code != 200], "paused")
    responses = at_once(http, queued_job, ["resume"] * 10)
    assert [r.status_code for r in responses].count(200) == 1
    assert_refused_naming([r for r in responses if r.status_code != 200], "queued")
    said = messages(http, queued_job)
    assert said.count("Job paused") == 1 and said.count("Job resumed") == 1


def test_a_worker_write_in_flight_lands_before_the_cancel_and_none_after(
    http: httpx2.Client, queued_job: str
) -> None:
    lease = Lease.acquire(get_database(), queued_job, "worker-a", 30)
    assert lease is not None
    writing, cancel_sent = threading.Event(), threading.Event()

    def worker_write() -> None:
        with lease.guard() as (session, job):
            add_event(session, job.id, "Epoch 2/50 done")
            writing.set()
            cancel_sent.wait(5)  # the cancel is in flight while this write is open

    thread = threading.Thread(target=worker_write)
    thread.start()
    assert writing.wait(5)
    with ThreadPoolExecutor(1) as pool:
        cancelled = pool.submit(http.post, f"/v1/fine_tuning/jobs/{queued_job}/cancel")
        time.sleep(0.5)  # the cancel reaches the database while the write is still open
        cancel_sent.set()
        assert cancelled.result().status_code == 200
    thread.join()
    with pytest.raises(LeaseLost), lease.guard() as (session, job):
        add_event(session, job.id, "Epoch 3/50 done")
    said = messages(http, queued_job)
    assert said[-1] == "Job cancelled by user"
    assert "Epoch 2/50 done" in said and "Epoch 3/50 done" not in said


@pytest.fixture(scope="module")
def quota_url(backend: Backend) -> Iterator[str]:
    with api_server(backend, FTAAS_MAX_ACTIVE_JOBS="10") as (url, _):
        yield url


def test_the_active_job_quota_holds_under_concurrent_creates(quota_url: str) -> None:
    with tenant_client(quota_url, new_key(f"quota-{uuid.uuid4().hex[:6]}")) as http:
        body = {"model": "tiny", "training_file": upload(http, taught_dataset())}
        barrier = threading.Barrier(CONCURRENCY)

        def create(_: int) -> int:
            barrier.wait()
            return http.post("/v1/fine_tuning/jobs", json=body).status_code

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            statuses = list(pool.map(create, range(CONCURRENCY)))
        assert statuses.count(200) == 10 and statuses.count(429) == CONCURRENCY - 10
        jobs = http.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]
        assert sum(job["status"] == "queued" for job in jobs) == 10

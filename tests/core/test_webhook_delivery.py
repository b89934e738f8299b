"""Webhooks end to end: a real receiver on loopback gets job events from the server's reconciler,
signed so that the official openai SDK's ``webhooks.unwrap`` accepts them; a failing receiver is
retried with backoff; the delivery log is visible through the API and the SDK, to its tenant only.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import openai
import pytest

from ftaas import AsyncClient, Client, NotFoundError
from ftaas_core.db import get_database
from ftaas_core.webhooks import deliver_due
from tests.conftest import Backend, api_server
from tests.support.data import taught_dataset
from tests.support.jobs import HYPERPARAMETERS, create_job, upload, wait_for_status, wait_until

OPENAI = openai.OpenAI(api_key="x")


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: str
    at: float

    @property
    def job_id(self) -> str:
        return json.loads(self.body)["data"]["id"]


class Receiver:
    """An HTTP server on loopback that records every POST and answers 500 to the first
    ``fail_first`` of them, 200 afterwards."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.fail_first = 0
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"])).decode()
                headers = {k.lower(): v for k, v in self.headers.items()}
                with lock:
                    receiver.received.append(Received(headers, body, time.monotonic()))
                    failing = receiver.fail_first > 0
                    receiver.fail_first -= failing
                self.send_response(500 if failing else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test reads ``received`` instead."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/ftaas"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def for_job(self, job_id: str) -> list[Received]:
        return [r for r in list(self.received) if r.job_id == job_id]

    def wait_for(self, job_id: str, count: int = 1, timeout: float = 15) -> list[Received]:
        return wait_until(
            lambda: (got := self.for_job(job_id)) and len(got) >= count and got,
            timeout,
            f"{count} webhook(s) for {job_id}",
        )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def endpoint(http: httpx2.Client, receiver: Receiver) -> Iterator[dict[str, Any]]:
    """The receiver registered for every job event; removed afterwards so later tests' jobs
    do not post to a closed port."""
    response = http.post("/v1/webhooks", json={"url": receiver.url})
    assert response.status_code == 200, response.text
    yield response.json()
    http.delete(f"/v1/webhooks/{response.json()['id']}")


def queued_job(http: httpx2.Client) -> str:
    return create_job(http, training_file=upload(http, taught_dataset()))["id"]


def deliveries(http: httpx2.Client, endpoint_id: str) -> list[dict[str, Any]]:
    response = http.get(f"/v1/webhooks/{endpoint_id}/deliveries")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def settled(http: httpx2.Client, endpoint_id: str, job_id: str) -> dict[str, Any]:
    """The job's delivery once it is no longer pending (the receiver answers before the
    server records the outcome)."""
    return wait_until(
        lambda: next(
            (
                d
                for d in deliveries(http, endpoint_id)
                if d["job_id"] == job_id and d["status"] != "pending"
            ),
            None,
        ),
        10,
        f"the delivery for {job_id} to settle",
    )


def test_cancel_posts_an_event_openai_verifies(
    http: httpx2.Client, receiver: Receiver, endpoint: dict[str, Any]
) -> None:
    assert endpoint["id"].startswith("whep-")
    assert endpoint["secret"].startswith("whsec_")
    assert endpoint["events"] == [
        "fine_tuning.job.succeeded",
        "fine_tuning.job.failed",
        "fine_tuning.job.cancelled",
    ]
    job_id = queued_job(http)
    assert http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200

    (request,) = receiver.wait_for(job_id)
    event = OPENAI.webhooks.unwrap(request.body, request.headers, secret=endpoint["secret"])
    assert event.type == "fine_tuning.job.cancelled"
    assert event.data.id == job_id
    assert event.id == request.headers["webhook-id"]
    assert request.headers["content-type"] == "application/json"

    delivery = settled(http, endpoint["id"], job_id)
    assert delivery["id"] == event.id
    assert delivery["object"] == "webhook.delivery"
    assert delivery["type"] == "fine_tuning.job.cancelled"
    assert delivery["status"] == "delivered"
    assert delivery["attempts"] == 1
    assert delivery["last_status_code"] == 200
    assert delivery["last_error"] is None
    assert delivery["delivered_at"] >= delivery["created_at"]
    assert delivery["next_attempt_at"] is None

    listed = http.get("/v1/webhooks").json()["data"]
    mine = next(e for e in listed if e["id"] == endpoint["id"])
    assert mine["url"] == receiver.url
    assert mine["secret"] is None, "the secret is shown once, on creation"


def test_a_failing_receiver_is_retried_with_backoff(
    http: httpx2.Client, receiver: Receiver, endpoint: dict[str, Any]
) -> None:
    receiver.fail_first = 2
    job_id = queued_job(http)
    http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")

    attempts = receiver.wait_for(job_id, count=3)
    assert len({r.headers["webhook-id"] for r in attempts}) == 1, "one event, retried"
    assert len({r.body for r in attempts}) == 1
    backoff = 0.75 * 0.2  # FTAAS_WEBHOOK_BACKOFF_SECONDS in tests, less the most jitter
    assert all(b.at - a.at >= backoff for a, b in itertools.pairwise(attempts))
    for request in attempts:  # each attempt is signed afresh, all verify
        OPENAI.webhooks.unwrap(request.body, request.headers, secret=endpoint["secret"])

    delivery = settled(http, endpoint["id"], job_id)
    assert delivery["status"] == "delivered"
    assert delivery["attempts"] == 3
    assert delivery["last_status_code"] == 200
    time.sleep(1.5)  # a reconciler round or so: nothing more is sent once delivered
    assert len(receiver.for_job(job_id)) == 3


def test_concurrent_deliverers_send_each_attempt_once(
    http: httpx2.Client, receiver: Receiver, endpoint: dict[str, Any]
) -> None:
    """Threads here race the server's own reconciler for the same due delivery."""
    job_id = queued_job(http)
    http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    db = get_database()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: deliver_due(db), range(4)))
    receiver.wait_for(job_id)
    assert settled(http, endpoint["id"], job_id)["attempts"] == 1
    time.sleep(1.5)
    assert len(receiver.for_job(job_id)) == 1


def test_an_unreachable_receiver_is_logged_and_rescheduled(http: httpx2.Client) -> None:
    closed = Receiver()  # bound, never serving: connections are refused
    closed.server.server_close()
    hook = http.post("/v1/webhooks", json={"url": closed.url}).json()
    try:
        job_id = queued_job(http)
        http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
        failed = wait_until(
            lambda: next((d for d in deliveries(http, hook["id"]) if d["last_error"]), None),
            10,
            "a failed attempt in the log",
        )
        assert failed["status"] == "pending"
        assert failed["last_status_code"] is None
        assert "ConnectError" in failed["last_error"]
        assert failed["next_attempt_at"] >= failed["created_at"]
    finally:
        assert http.delete(f"/v1/webhooks/{hook['id']}").json() == {
            "id": hook["id"],
            "object": "webhook_endpoint.deleted",
            "deleted": True,
        }


def test_only_subscribed_events_are_recorded(http: httpx2.Client, receiver: Receiver) -> None:
    body = {"url": receiver.url, "events": ["fine_tuning.job.succeeded"]}
    hook = http.post("/v1/webhooks", json=body).json()
    try:
        assert hook["events"] == ["fine_tuning.job.succeeded"]
        job_id = queued_job(http)
        http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
        assert deliveries(http, hook["id"]) == []
    finally:
        http.delete(f"/v1/webhooks/{hook['id']}")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"url": "ftp://example.com/hook"}, "url"),
        ({"url": "/relative"}, "url"),
        ({"url": "http://"}, "url"),
        ({"url": "https://example.com", "events": ["fine_tuning.job.started"]}, "events[0]"),
        ({"url": "https://example.com", "events": []}, "events"),
        ({"url": "https://example.com", "name": "x"}, "name"),
    ],
)
def test_invalid_endpoints_are_a_400(http: httpx2.Client, body: dict[str, Any], param: str) -> None:
    response = http.post("/v1/webhooks", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_other_tenants_get_404(
    http: httpx2.Client, other_http: httpx2.Client, endpoint: dict[str, Any]
) -> None:
    path = f"/v1/webhooks/{endpoint['id']}"
    for response in (other_http.get(f"{path}/deliveries"), other_http.delete(path)):
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
    assert endpoint["id"] not in [e["id"] for e in other_http.get("/v1/webhooks").json()["data"]]
    assert http.get(f"{path}/deliveries").status_code == 200, "still there for its owner"

    theirs = queued_job(other_http)  # another tenant's events never reach this endpoint
    other_http.post(f"/v1/fine_tuning/jobs/{theirs}/cancel")
    assert all(d["job_id"] != theirs for d in deliveries(http, endpoint["id"]))


def test_sdk_manages_endpoints_and_reads_deliveries(
    api_url: str, api_key: str, http: httpx2.Client, receiver: Receiver
) -> None:
    with Client(api_url, api_key, max_retries=0) as sdk:
        hook = sdk.webhooks.create(receiver.url, events=["fine_tuning.job.cancelled"])
        assert hook.secret and hook.events == ["fine_tuning.job.cancelled"]
        assert hook.id in [h.id for h in sdk.webhooks.list()]
        job_id = queued_job(http)
        sdk.fine_tuning.jobs.cancel(job_id)
        receiver.wait_for(job_id)
        (delivery,) = wait_until(
            lambda: [d for d in sdk.webhooks.deliveries.list(hook.id) if d.status == "delivered"],
            10,
            "the delivery in the SDK",
        )
        assert (delivery.job_id, delivery.type) == (job_id, "fine_tuning.job.cancelled")
        assert sdk.webhooks.delete(hook.id).deleted
        assert hook.id not in [h.id for h in sdk.webhooks.list()]
        with pytest.raises(NotFoundError):
            list(sdk.webhooks.deliveries.list(hook.id))


def test_async_sdk_twins(api_url: str, api_key: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(api_url, api_key, max_retries=0) as sdk:
            hook = await sdk.webhooks.create("https://example.com/hook")
            assert hook.id in [h.id async for h in await sdk.webhooks.list()]
            assert [d async for d in await sdk.webhooks.deliveries.list(hook.id)] == []
            assert (await sdk.webhooks.delete(hook.id)).deleted

    asyncio.run(scenario())


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
@pytest.mark.training
def test_a_trained_job_posts_succeeded(
    backend: Backend, http: httpx2.Client, receiver: Receiver, endpoint: dict[str, Any]
) -> None:
    worker = backend.start("worker")
    try:
        job = create_job(
            http,
            model="tiny-chat",  # its measured speed stays apart from the "tiny" other tests use
            training_file=upload(http, taught_dataset(repeat=2)),
            method={
                "type": "supervised",
                "supervised": {"hyperparameters": HYPERPARAMETERS | {"n_epochs": 1}},
            },
        )
        done = wait_for_status(http, job["id"], {"succeeded", "failed", "cancelled"}, 300, [worker])
        assert done["status"] == "succeeded", done["error"]
        (request,) = receiver.wait_for(job["id"])
    finally:
        worker.stop()
    event = OPENAI.webhooks.unwrap(request.body, request.headers, secret=endpoint["secret"])
    assert event.type == "fine_tuning.job.succeeded"
    assert event.data.id == job["id"]
    assert event.created_at == done["finished_at"]


def test_a_private_receiver_is_refused_unless_allowed(backend: Backend, api_key: str) -> None:
    """This suite's server allows loopback receivers; by default the service does not."""
    with api_server(backend, FTAAS_WEBHOOK_ALLOW_PRIVATE_NETWORKS="false") as (url, _):
        response = httpx2.post(
            f"{url}/v1/webhooks",
            json={"url": "http://169.254.169.254/latest/meta-data/"},
            headers={"Authorization": f"Bearer {api_key}"},
        )
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["param"], error["code"]) == ("url", "invalid_webhook_url")
        assert "not a public address" in error["message"]

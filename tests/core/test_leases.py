"""Leases and the reconciler on real SQL and Redis: no job is lost, stale writers are refused."""

from __future__ import annotations

import time

import httpx2
import pytest
from sqlalchemy import update

from ftaas_core.db import get_database
from ftaas_core.leases import Lease, LeaseLost
from ftaas_core.models import Job
from ftaas_core.queue import is_enqueued, training_queue
from ftaas_core.reconcile import reconcile_once
from ftaas_core.settings import get_settings
from tests.support.data import taught_dataset
from tests.support.jobs import create_job, events, upload


@pytest.fixture
def queued_job(http: httpx2.Client) -> str:
    return create_job(http, training_file=upload(http, taught_dataset()))["id"]


def expire(job_id: str) -> None:
    with get_database().session() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(lease_expires_at=time.time() - 1)
        )


def test_only_one_attempt_takes_a_job(queued_job: str) -> None:
    db = get_database()
    lease = Lease.acquire(db, queued_job, "worker-a", 30)
    assert lease is not None and lease.attempt == 1
    assert Lease.acquire(db, queued_job, "worker-b", 30) is None


def test_expired_lease_is_requeued_and_the_stale_attempt_refused(
    http: httpx2.Client, queued_job: str
) -> None:
    db = get_database()
    stale = Lease.acquire(db, queued_job, "worker-a", 30)
    assert stale is not None
    expire(queued_job)
    reconcile_once()
    job = http.get(f"/v1/fine_tuning/jobs/{queued_job}").json()
    assert job["status"] == "queued"
    assert is_enqueued(queued_job, stale.attempt)
    assert any("Worker lost" in e["message"] for e in events(http, queued_job))

    fresh = Lease.acquire(db, queued_job, "worker-b", 30)
    assert fresh is not None and fresh.attempt == stale.attempt + 1
    with pytest.raises(LeaseLost):
        stale.renew()
    with pytest.raises(LeaseLost), stale.guard():
        pass
    fresh.renew()


def test_retry_budget_spent_fails_with_a_clear_error(http: httpx2.Client, queued_job: str) -> None:
    db = get_database()
    for _ in range(get_settings().max_job_retries + 1):
        assert Lease.acquire(db, queued_job, "doomed", 30) is not None
        expire(queued_job)
        reconcile_once()
    job = http.get(f"/v1/fine_tuning/jobs/{queued_job}").json()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "worker_lost"
    assert "giving up" in job["error"]["message"]


def test_queue_lost_in_redis_is_rebuilt_from_sql(http: httpx2.Client, queued_job: str) -> None:
    training_queue().empty()  # what a Redis restart without persistence does to the queue
    assert not is_enqueued(queued_job, 0)
    reconcile_once()
    assert is_enqueued(queued_job, 0)


def test_cancel_revokes_a_running_lease(http: httpx2.Client, queued_job: str) -> None:
    lease = Lease.acquire(get_database(), queued_job, "worker-a", 30)
    assert lease is not None
    http.post(f"/v1/fine_tuning/jobs/{queued_job}/cancel")
    with pytest.raises(LeaseLost):
        lease.check()
    assert lease.lost.is_set()


def test_a_worker_killed_before_its_lease_does_not_strand_the_job(queued_job: str) -> None:
    """A worker takes the rq job, then dies before its work horse takes the SQL lease."""
    from rq import Queue
    from rq.executions import Execution

    from ftaas_core.queue import get_redis, rq_job_id

    queue = training_queue()
    while True:  # earlier tests may have left entries ahead of ours
        taken = Queue.dequeue_any(
            [queue], None, connection=get_redis(), serializer=queue.serializer
        )
        assert taken is not None
        rq_job, _ = taken
        if rq_job.id == rq_job_id(queued_job, 0):
            break
    assert not is_enqueued(queued_job, 0)  # taken, and no heartbeat yet: died right there

    with get_redis().pipeline() as pipeline:
        execution = Execution.create(rq_job, 60, pipeline, worker_name="doomed")
        pipeline.execute()
    assert is_enqueued(queued_job, 0)  # a live worker is starting it

    registry = queue.started_job_registry
    get_redis().zadd(registry.key, {execution.composite_key: time.time() - 1})
    assert not is_enqueued(queued_job, 0)  # its heartbeat stopped: the worker is gone
    reconcile_once()
    assert is_enqueued(queued_job, 0)


def test_a_crashed_attempt_is_requeued_at_once_on_the_retry_budget(
    http: httpx2.Client, queued_job: str
) -> None:
    db = get_database()
    lease = Lease.acquire(db, queued_job, "worker-a", 30)
    assert lease is not None
    job = lease.crashed("training process 1 exited with -9", max_retries=1)
    assert (job.status, job.retries) == ("queued", 1)
    said = [e["message"] for e in events(http, queued_job)]
    assert "training process 1 exited with -9" in said
    assert any(m.startswith("Worker lost during attempt 1; requeued (retry 1 of 1)") for m in said)
    with pytest.raises(LeaseLost):
        lease.renew()

    again = Lease.acquire(db, queued_job, "worker-b", 30)
    assert again is not None
    failed = again.crashed("training process 0 exited with -9", max_retries=1)
    assert failed.status == "failed"
    assert failed.error["code"] == "worker_lost"

"""``ftaas worker --one-job``, what each KEDA pod runs: N workers started for M < N waiting jobs
run each job once, one job per worker, and the workers left over exit (0) without one. Each
creates its ready file once it is registered, the signal that ends KEDA's "pending"."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from ftaas_core.db import get_database
from ftaas_core.models import Job
from tests.conftest import Backend, api_server, new_key, tenant_client
from tests.support.data import taught_dataset
from tests.support.jobs import HYPERPARAMETERS, create_job, events, upload, wait_for_status
from tests.support.services import Process

pytestmark = pytest.mark.training

JOBS, WORKERS = 2, 3


def owners_until_all_exit(workers: list[Process], job_ids: list[str]) -> dict[str, set[str]]:
    """Every worker seen holding each job's lease, until every worker has exited."""
    seen: dict[str, set[str]] = {job_id: set() for job_id in job_ids}
    deadline = time.monotonic() + 300
    while any(w.proc.poll() is None for w in workers):
        assert time.monotonic() < deadline, "\n".join(w.output()[-3000:] for w in workers)
        with get_database().session() as session:
            held = session.execute(select(Job.id, Job.worker_id).where(Job.id.in_(job_ids)))
            for job_id, worker_id in held:
                if worker_id:
                    seen[job_id].add(worker_id)
        time.sleep(0.1)
    return seen


def test_each_worker_takes_one_job_at_most_and_each_job_runs_once(
    backend: Backend, tmp_path: Path
) -> None:
    env = {"FTAAS_QUEUE_NAME": f"one-job-{uuid.uuid4().hex[:6]}"}  # nothing else waits there
    method = {
        "type": "supervised",
        "supervised": {"hyperparameters": HYPERPARAMETERS | {"n_epochs": 1, "replay": 0}},
    }
    with api_server(backend, **env) as (url, _), tenant_client(url, new_key("one-job")) as http:
        file_id = upload(http, taught_dataset())
        jobs = [create_job(http, training_file=file_id, method=method)["id"] for _ in range(JOBS)]
        ready = [tmp_path / f"ready-{n}" for n in range(WORKERS)]
        workers = [
            backend.start("worker", "--one-job", "--ready-file", str(path), **env) for path in ready
        ]
        try:
            owners = owners_until_all_exit(workers, jobs)
            logs = [w.output() for w in workers]
            assert [w.proc.returncode for w in workers] == [0] * WORKERS, logs
            for job_id in jobs:
                done = wait_for_status(http, job_id, {"succeeded", "failed", "cancelled"}, 30)
                assert done["status"] == "succeeded", done["error"]
                started = [e for e in events(http, job_id) if "job started" in e["message"]]
                assert len(started) == 1, started  # one attempt: no second worker took it
            assert all(len(held) == 1 for held in owners.values()), owners
            # Workers are named in their logs (rq's, and each lease's owner is a worker's name).
            ran = [sum(next(iter(held)) in log for held in owners.values()) for log in logs]
            assert sorted(ran) == [0] * (WORKERS - JOBS) + [1] * JOBS, (owners, logs)
            assert all(path.exists() for path in ready), "each registered, so each was Ready"
        finally:
            for worker in workers:
                worker.stop()

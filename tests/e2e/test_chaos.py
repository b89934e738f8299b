"""Chaos: many jobs while training workers are SIGKILLed at random. Every job succeeds, each
with exactly one final adapter. Sized by FTAAS_CHAOS_JOBS / FTAAS_CHAOS_KILLS (default 12/3; the
full run is `make test-chaos FTAAS_CHAOS_JOBS=50 FTAAS_CHAOS_KILLS=10`)."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import psutil
import pytest
from redis import Redis
from rq import Worker

from tests.conftest import Backend, tenant_client
from tests.support.data import taught_dataset
from tests.support.jobs import HYPERPARAMETERS, TERMINAL, create_job, events, upload, wait_until
from tests.support.services import Process, RedisServer, free_port, wait_until_healthy

JOBS = int(os.environ.get("FTAAS_CHAOS_JOBS", "12"))
KILLS = int(os.environ.get("FTAAS_CHAOS_KILLS", "3"))


def busy(worker: Process, redis: Redis) -> bool:
    """Whether the worker is running a job, as it records its state in Redis."""
    return any(w.pid == worker.pid and w.get_state() == "busy" for w in Worker.all(redis))


@pytest.mark.chaos
@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_random_worker_kills_lose_no_job(
    backend: Backend, tiny_model: Path, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    data_dir = tmp_path / "data"
    env = {
        "FTAAS_DATA_DIR": str(data_dir),
        "FTAAS_REDIS_URL": redis.url,
        "FTAAS_MAX_JOB_RETRIES": str(KILLS + 1),
        "FTAAS_MAX_ACTIVE_JOBS": str(JOBS),
        "FTAAS_MODELS": json.dumps({"tiny": str(tiny_model)}),
    }
    port = free_port()
    server = backend.start("serve", "--port", str(port), **env)
    workers = [backend.start("worker", **env) for _ in range(2)]
    rng = random.Random(7)
    rq_redis = Redis.from_url(redis.url)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, server)
        key = backend.start("keys", "create", "--tenant", "chaos", **env)
        key.proc.wait(60)
        api_key = key.output().strip().splitlines()[-1]
        with tenant_client(url, api_key) as http:
            file_id = upload(http, taught_dataset())
            hyperparameters = HYPERPARAMETERS | {"n_epochs": 2, "save_steps": 1}
            method = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
            jobs = [
                create_job(http, training_file=file_id, method=method)["id"] for _ in range(JOBS)
            ]
            for _ in range(KILLS):
                time.sleep(rng.uniform(1, 5))
                victim = wait_until(
                    lambda: [w for w in workers if busy(w, rq_redis)], 120, "a busy worker", workers
                )[0]
                children = psutil.Process(victim.pid).children(recursive=True)
                victim.kill(signal.SIGKILL)
                for child in children:
                    child.kill()
                victim.stop()
                workers[workers.index(victim)] = backend.start("worker", **env)

            def statuses() -> list[dict[str, object]] | None:
                page = http.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]
                done = [j for j in page if j["status"] in TERMINAL]
                return page if len(done) == JOBS else None

            try:
                final = wait_until(statuses, 60 * JOBS, "every job to finish", workers)
            except TimeoutError as timeout:
                page = http.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]
                history = {
                    j["id"]: [e["message"] for e in events(http, j["id"])][-6:]
                    for j in page
                    if j["status"] not in TERMINAL
                }
                raise AssertionError(
                    f"unfinished jobs: {history}\n{server.output()[-3000:]}"
                ) from timeout
            assert sorted(j["id"] for j in final) == sorted(jobs)
            assert [j["status"] for j in final] == ["succeeded"] * JOBS, [j["error"] for j in final]
            tenant = final[0]["organization_id"]
            for job_id in jobs:
                adapters = list(
                    (data_dir / "objects" / "adapters" / tenant / job_id).rglob("*.tar.gz")
                )
                assert len(adapters) == 1, (job_id, adapters)
    finally:
        for worker in workers:
            worker.stop()
        server.stop()
        redis.kill()

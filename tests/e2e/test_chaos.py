"""Chaos: many jobs while training workers are SIGKILLed at random, the object store goes away
for a while, and a quarter of the jobs get concurrent pause, resume and cancel requests. No job
is lost (each ends succeeded with exactly one final adapter, or cancelled when it was
cancelled), and no transition happens twice (one event and one webhook per real transition).
Sized by FTAAS_CHAOS_JOBS / FTAAS_CHAOS_KILLS (default 12/3; the full run is
`make test-chaos FTAAS_CHAOS_JOBS=50 FTAAS_CHAOS_KILLS=10`)."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import httpx2
import psutil
import pytest
from redis import Redis
from rq import Worker

from tests.conftest import Backend, api_server, tenant_client
from tests.support.data import taught_dataset
from tests.support.jobs import HYPERPARAMETERS, TERMINAL, create_job, events, upload, wait_until
from tests.support.services import Process, RedisServer, free_port, store_behind_a_proxy

JOBS = int(os.environ.get("FTAAS_CHAOS_JOBS", "12"))
KILLS = int(os.environ.get("FTAAS_CHAOS_KILLS", "3"))
OUTAGE_SECONDS = 4.0
TERMINAL_MESSAGES = ("Job cancelled by user", "The job has successfully completed")


def busy(worker: Process, redis: Redis) -> bool:
    """Whether the worker is running a job, as it records its state in Redis."""
    return any(w.pid == worker.pid and w.get_state() == "busy" for w in Worker.all(redis))


def kill_a_busy_worker(
    backend: Backend, workers: list[Process], redis: Redis, env: dict[str, str]
) -> None:
    victim = wait_until(
        lambda: [w for w in workers if busy(w, redis)], 120, "a busy worker", workers
    )[0]
    children = psutil.Process(victim.pid).children(recursive=True)
    victim.kill(signal.SIGKILL)
    for child in children:
        child.kill()
    victim.stop()
    workers[workers.index(victim)] = backend.start("worker", **env)


def chaos_key(backend: Backend, env: dict[str, str]) -> str:
    """A key in this test's own database (``ftaas keys create`` prints it last)."""
    created = backend.start("keys", "create", "--tenant", "chaos", **env)
    created.proc.wait(60)
    return created.output().strip().splitlines()[-1]


def contend(http: httpx2.Client, job_id: str, rng: random.Random) -> None:
    """Pauses, resumes and cancels of one job, all sent at once."""
    actions = rng.sample(["pause", "pause", "resume", "resume", "cancel", "cancel"], 6)
    with ThreadPoolExecutor(len(actions)) as pool:
        list(pool.map(lambda a: http.post(f"/v1/fine_tuning/jobs/{job_id}/{a}"), actions))


def duplicate_transitions(
    http: httpx2.Client, job_id: str, deliveries: collections.Counter[tuple[str, str]]
) -> int:
    """Transitions recorded more often than they can have happened, in events and webhooks."""
    said = collections.Counter(e["message"] for e in events(http, job_id))
    ends = sum(said[m] for m in TERMINAL_MESSAGES)
    webhooks = [n for (job, _), n in deliveries.items() if job == job_id]
    return max(0, ends - 1) + sum(n - 1 for n in webhooks if n > 1) + max(0, len(webhooks) - 1)


@pytest.mark.chaos
@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_kills_a_store_outage_and_concurrent_changes_lose_and_repeat_nothing(
    backend: Backend, tiny_model: Path, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    rng = random.Random(7)
    rq_redis = Redis.from_url(redis.url)
    with store_behind_a_proxy() as (proxy, store_env):
        env = store_env | {
            "FTAAS_DATA_DIR": str(tmp_path / "data"),
            "FTAAS_REDIS_URL": redis.url,
            "FTAAS_MAX_JOB_RETRIES": str(KILLS + 1),
            "FTAAS_MAX_ACTIVE_JOBS": str(JOBS),
            "FTAAS_MODELS": json.dumps({"tiny": str(tiny_model)}),
        }
        workers = [backend.start("worker", **env) for _ in range(2)]
        try:
            with (
                api_server(backend, **env) as (url, server),
                tenant_client(url, chaos_key(backend, env)) as http,
            ):
                hook = http.post("/v1/webhooks", json={"url": f"http://127.0.0.1:{free_port()}/"})
                endpoint = hook.json()["id"]
                file_id = upload(http, taught_dataset())
                hyperparameters = HYPERPARAMETERS | {"n_epochs": 2, "save_steps": 1}
                method = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
                jobs = [
                    create_job(http, training_file=file_id, method=method)["id"]
                    for _ in range(JOBS)
                ]
                contended = set(jobs[3::4])
                for round_ in range(KILLS):
                    time.sleep(rng.uniform(1, 5))
                    kill_a_busy_worker(backend, workers, rq_redis, env)
                    if round_ == 0:  # the store goes away while jobs checkpoint
                        proxy.cut()
                        time.sleep(OUTAGE_SECONDS)
                        proxy.start()
                    for job_id in sorted(contended)[round_::KILLS]:
                        contend(http, job_id, rng)

                def finished() -> list[dict[str, Any]] | None:
                    page = http.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]
                    return page if sum(j["status"] in TERMINAL for j in page) == JOBS else None

                try:
                    final = wait_until(finished, 60 * JOBS, "every job to finish", workers)
                except TimeoutError as timeout:
                    raise AssertionError(f"unfinished jobs\n{server.output()[-3000:]}") from timeout
                by_id = {j["id"]: j for j in final}
                deliveries = collections.Counter(
                    (d["job_id"], d["type"])
                    for d in http.get(
                        f"/v1/webhooks/{endpoint}/deliveries", params={"limit": 100}
                    ).json()["data"]
                )
                lost = [
                    j for j in jobs
                    if by_id[j]["status"] != "succeeded"
                    and not (j in contended and by_id[j]["status"] == "cancelled")
                ]  # fmt: skip
                repeated = sum(duplicate_transitions(http, j, deliveries) for j in jobs)
                print(
                    f"chaos: {JOBS} jobs, {KILLS} worker kills, a {OUTAGE_SECONDS:g} s store "
                    f"outage, {len(contended)} jobs under concurrent changes: {len(lost)} lost, "
                    f"{repeated} duplicate transitions"
                )
                assert not lost, [(j, by_id[j]["status"], by_id[j]["error"]) for j in lost]
                assert repeated == 0
                s3 = boto3.client(
                    "s3",
                    endpoint_url=env["FTAAS_S3_ENDPOINT_URL"],
                    aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                    aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                    region_name=env["AWS_DEFAULT_REGION"],
                )
                bucket, prefix = env["FTAAS_STORAGE_URL"].removeprefix("s3://").split("/", 1)
                tenant = final[0]["organization_id"]
                for job_id in jobs:
                    listed = s3.list_objects_v2(
                        Bucket=bucket, Prefix=f"{prefix}/adapters/{tenant}/{job_id}/"
                    )
                    adapters = len(listed.get("Contents", []))
                    # A job cancelled between its upload and its success keeps that one upload.
                    assert adapters == 1 or (
                        by_id[job_id]["status"] == "cancelled" and adapters <= 1
                    )
        finally:
            for worker in workers:
                worker.stop()
            redis.kill()

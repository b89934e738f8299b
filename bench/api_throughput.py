"""API request rate and latency at 50 concurrent clients on loopback, against ``GET /healthz``
on the same server (no auth, no database): what authentication, the rate limiter, SQL and
serialisation cost on the hot read and on job creation.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import psutil

from bench.common import Row, chat_rows, fmt_ms, jsonl, service, upload_bytes

CONCURRENCY = 50
DURATION_S = 4.0
WARMUP_S = 0.5
GET_TARGET = 0.7
ROUNDS = 3  # healthz and job GET windows, alternating


@dataclass
class Load:
    """What the clients saw during the measured window."""

    latencies: list[float]
    errors: Counter[int]  # status code -> count, for responses >= 400
    seconds: float
    server_cpu: float = 0.0  # CPU seconds the server process used in the window

    @property
    def cpu_per_request(self) -> float:
        return self.server_cpu / len(self.latencies)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1]


async def _load(
    url: str,
    headers: dict[str, str],
    request: Callable[[httpx2.AsyncClient], Any],
    concurrency: int,
    duration: float,
) -> Load:
    """``concurrency`` clients send back to back; the first WARMUP_S seconds are not counted."""
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    errors: Counter[int] = Counter()
    async with httpx2.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=60
    ) as client:
        start = time.perf_counter()
        measure_from, stop_at = start + WARMUP_S, start + WARMUP_S + duration

        async def one_client() -> None:
            while (sent := time.perf_counter()) < stop_at:
                response = await request(client)
                done = time.perf_counter()
                if sent >= measure_from:
                    latencies.append(done - sent)
                    if response.status_code >= 400:
                        errors[response.status_code] += 1

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        ended = time.perf_counter()
    return Load(latencies, errors, ended - measure_from)


def measure(
    server_pid: int,
    url: str,
    headers: dict[str, str],
    request: Callable[[httpx2.AsyncClient], Any],
) -> Load:
    """Also the server's CPU time per request: on shared cores, less noisy than requests/s."""
    server = psutil.Process(server_pid)
    before = server.cpu_times()
    load = asyncio.run(_load(url, headers, request, CONCURRENCY, DURATION_S))
    after = server.cpu_times()
    # Counted over warm-up and window alike; scale to the window's share of requests.
    total = WARMUP_S + load.seconds
    load.server_cpu = (
        (after.user + after.system - before.user - before.system) * load.seconds / total
    )
    return load


def pooled(loads: list[Load]) -> Load:
    """Several measured windows as one."""
    return Load(
        [t for load in loads for t in load.latencies],
        sum((load.errors for load in loads), Counter()),
        sum(load.seconds for load in loads),
        sum(load.server_cpu for load in loads),
    )


def run(model_dir: Path) -> list[Row]:
    # The per-tenant quota of active jobs would turn most creations into 429s.
    env = {"FTAAS_MAX_ACTIVE_JOBS": str(10**9)}
    with service("api", {"tiny": str(model_dir)}, env=env) as svc, svc.http() as http:
        file_id = upload_bytes(http, jsonl(chat_rows(12, 0, 3, 10)))
        body = {"model": "tiny", "training_file": file_id, "hyperparameters": {"n_epochs": 1}}
        job_id = http.post("/v1/fine_tuning/jobs", json=body).json()["id"]
        headers = {"Authorization": f"Bearer {svc.key}"}
        pid, url = svc.api.pid, svc.url
        # Interleaved rounds, pooled, so that drift on a shared machine falls on both sides.
        health: list[Load] = []
        gets: list[Load] = []
        for _ in range(ROUNDS):
            health.append(measure(pid, url, {}, lambda c: c.get("/healthz")))
            gets.append(
                measure(pid, url, headers, lambda c: c.get(f"/v1/fine_tuning/jobs/{job_id}"))
            )
        create = measure(pid, url, headers, lambda c: c.post("/v1/fine_tuning/jobs", json=body))
    base, get = pooled(health), pooled(gets)
    base_rps, base_cpu = base.rps, base.cpu_per_request
    base_p50, base_p99 = base.percentile(50), base.percentile(99)
    name = f"API, {CONCURRENCY} clients"
    rows: list[Row] = []
    for label, load, target in (
        ("GET /v1/fine_tuning/jobs/{id}", get, GET_TARGET),
        ("POST /v1/fine_tuning/jobs", create, None),
    ):
        rps_ratio = load.rps / base_rps
        errors = "".join(f", {n}x HTTP {code}" for code, n in sorted(load.errors.items()))
        rows += [
            Row(
                name,
                f"{label}: requests/s (baseline GET /healthz){errors}",
                f"{load.rps:.0f}/s",
                f"{base_rps:.0f}/s",
                rps_ratio,
                f">= {target}x" if target else "—",
                rps_ratio >= target if target else None,
            ),
            Row(
                name,
                f"{label}: p50 latency",
                fmt_ms(load.percentile(50)),
                fmt_ms(base_p50),
                load.percentile(50) / base_p50,
            ),
            Row(
                name,
                f"{label}: p99 latency",
                fmt_ms(load.percentile(99)),
                fmt_ms(base_p99),
                load.percentile(99) / base_p99,
            ),
            Row(
                name,
                f"{label}: server CPU per request",
                fmt_ms(load.cpu_per_request),
                fmt_ms(base_cpu),
                load.cpu_per_request / base_cpu,
            ),
        ]
    return rows

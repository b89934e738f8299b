"""``ftaas worker``: an rq worker on the training queue, one job at a time (one GPU).

Each job runs in a freshly spawned work horse (rq's ``SpawnWorker``): CUDA is initialised only
in the process that trains and never meets a fork. A warm shutdown (SIGTERM from Kubernetes, or
Ctrl+C) is passed on to the horse, which saves a checkpoint and requeues its job.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
import uuid
from types import FrameType

from redis.exceptions import RedisError
from rq import SpawnWorker
from rq.serializers import JSONSerializer

from ftaas.db import get_database
from ftaas.queue import get_redis, training_queue
from ftaas.reconcile import Reconciler, reconcile_once

log = logging.getLogger("ftaas.worker")


class TrainerWorker(SpawnWorker):
    stopping = False

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        super().request_stop(signum, frame)

    def handle_warm_shutdown_request(self) -> None:
        super().handle_warm_shutdown_request()
        if self.horse_pid:
            self.kill_horse(signal.SIGTERM)


def run_worker(burst: bool = False) -> None:
    """Work until stopped; if Redis goes away, wait for it and carry on (jobs live in SQL)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    get_database().migrate()
    reconciler = Reconciler()
    reconciler.start()
    try:
        while True:
            worker = TrainerWorker(
                [training_queue()],
                connection=get_redis(),
                serializer=JSONSerializer,
                name=f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}",
            )
            try:
                reconcile_once()
                worker.work(burst=burst, logging_level="INFO")
            except RedisError as exc:
                log.warning("lost Redis: %s", exc)
            if worker.horse_pid:  # a job still training finishes on its own (it needs no Redis)
                worker.wait_for_horse()
            if burst or worker.stopping:
                return
            _wait_for_redis()
    finally:
        reconciler.stop()


def _wait_for_redis() -> None:
    while True:
        try:
            get_redis().ping()
            log.info("Redis is back; resuming work")
            return
        except RedisError:
            time.sleep(1)

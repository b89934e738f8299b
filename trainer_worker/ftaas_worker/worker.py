"""``ftaas worker``: an rq worker on the training queue, one job at a time (one GPU).

Each job runs in its own spawned (never forked) work horse, so CUDA is initialised only in the
process that trains. The horse is started ahead of its job (:mod:`ftaas_worker.horse`), so a
job does not wait for torch to import. A warm shutdown (SIGTERM from Kubernetes, or Ctrl+C) is
passed on to the horse, which saves a checkpoint and requeues its job.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
import uuid
from types import FrameType
from typing import Any

from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from ftaas_core.db import get_database
from ftaas_core.queue import get_redis, training_queue
from ftaas_core.reconcile import Reconciler, reconcile_once
from ftaas_worker.horse import StandbyHorse

log = logging.getLogger("ftaas.worker")


class TrainerWorker(Worker):
    stopping = False
    standby: StandbyHorse | None = None
    keep_standby = False  # a burst worker ends once the queue is empty: no horse waits for it

    def work(self, burst: bool = False, **kwargs: Any) -> bool:
        self.keep_standby = not burst
        self._refill_standby()
        try:
            return super().work(burst=burst, **kwargs)
        finally:
            if self.standby:
                self.standby.dismiss()
                self.standby = None

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        horse, self.standby = self.standby, None
        if horse is None or not horse.alive():
            if horse:
                horse.dismiss()
            horse = StandbyHorse.spawn()
        assert self.execution is not None  # rq prepares it before starting the horse
        horse.take(self, job, self.execution)
        self._horse_pid = horse.pid

    def execute_job(self, job: Job, queue: Queue) -> None:
        super().execute_job(job, queue)
        self._refill_standby()

    def _refill_standby(self) -> None:
        if self.keep_standby and not self._stop_requested and self.standby is None:
            self.standby = StandbyHorse.spawn()

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

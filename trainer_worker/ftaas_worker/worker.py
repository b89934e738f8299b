"""``ftaas worker``: an rq worker on the training queue, one job at a time (one GPU).

Each job runs in its own spawned (never forked) work horse, so CUDA is initialised only in the
process that trains. The horse is started ahead of its job (:mod:`ftaas_worker.standby`), so a
job does not wait for torch to import. A warm shutdown (SIGTERM from Kubernetes, or Ctrl+C) is
passed on to the horse, which saves a checkpoint and requeues its job.

With ``one_job`` (a KEDA ScaledJob's pod, started for one waiting job) it takes at most one job
and exits, 0 also when another pod took that job first: a worker that went on to the next job
would take one KEDA has already started a pod for. Its ready file tells KEDA (through the pod's
readiness) when it is taking jobs; until then KEDA counts the pod as pending, so it starts no
second pod for the same job.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError
from rq import Queue
from rq.executions import Execution
from rq.job import Job
from rq.serializers import JSONSerializer

from ftaas_core.db import get_database
from ftaas_core.queue import get_redis, training_queue
from ftaas_core.reconcile import Reconciler, reconcile_once
from ftaas_core.rq_compat import HandOffWorker, check_rq_version, stop_requested
from ftaas_worker.standby import StandbyHorse

log = logging.getLogger("ftaas.worker")


class TrainerWorker(HandOffWorker):
    stopping = False
    standby: StandbyHorse | None = None
    keep_standby = False  # a burst worker ends once the queue is empty: no horse waits for it
    ready_file: Path | None = None

    def work(self, burst: bool = False, **kwargs: Any) -> bool:
        self.keep_standby = not burst
        self._refill_standby()
        try:
            return super().work(burst=burst, **kwargs)
        finally:
            if self.standby:
                self.standby.dismiss()
                self.standby = None

    def start_horse(self, job: Job, queue: Queue, execution: Execution) -> int:
        """The waiting standby takes the job; a fresh one if it died while it waited."""
        horse, self.standby = self.standby, None
        if horse is None or not horse.alive():
            if horse:
                horse.dismiss()
            horse = StandbyHorse.spawn()
        horse.take(self, job, execution)
        return horse.pid

    def registered(self) -> None:
        if self.ready_file:
            self.ready_file.touch()

    def job_done(self) -> None:
        self._refill_standby()

    def _refill_standby(self) -> None:
        if self.keep_standby and not stop_requested(self) and self.standby is None:
            self.standby = StandbyHorse.spawn()

    def warm_shutdown(self) -> None:
        """The horse saves a checkpoint and requeues its job; the worker then ends."""
        self.stopping = True
        self.signal_horse(signal.SIGTERM)


def run_worker(burst: bool = False, one_job: bool = False, ready_file: Path | None = None) -> None:
    """Work until stopped (``burst``: until the queue is empty; ``one_job``: for one job at most);
    if Redis goes away, wait for it and carry on (jobs live in SQL)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if ready_file:
        ready_file.unlink(missing_ok=True)  # left by an earlier run in this pod: not ready yet
    burst = burst or one_job
    check_rq_version()
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
            worker.ready_file = ready_file
            try:
                reconcile_once()
                worker.work(burst=burst, max_jobs=1 if one_job else None, logging_level="INFO")
            except RedisError as exc:
                log.warning("lost Redis: %s", exc)
            worker.wait_out_horse()  # a job still training finishes on its own (needs no Redis)
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

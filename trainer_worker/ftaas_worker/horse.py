"""A standby work horse's process (spawned by :class:`ftaas_worker.standby.StandbyHorse`).

It pays for the slow imports and set-up while the worker is idle, then waits on its stdin for
the hand-off of a job and runs that job as rq's work horse would. An empty stdin ends it, and
so does its worker's death, at any moment (:mod:`ftaas_worker.lifeline`).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rq.job import Job
from rq.serializers import JSONSerializer

from ftaas_core.queue import get_redis, training_queue
from ftaas_core.rq_compat import fetch_execution, run_in_horse
from ftaas_worker.lifeline import die_with_parent
from ftaas_worker.worker import TrainerWorker


def main(worker_pid: int) -> None:
    die_with_parent(worker_pid)  # first: the worker may be killed during the imports below
    # The slow imports and set-up, paid while the worker waits.
    import ftaas_worker.recipe
    import ftaas_worker.runner  # noqa: F401
    from ftaas_core.db import get_database
    from ftaas_core.storage import get_store

    get_database().ping()
    get_store()

    raw = sys.stdin.buffer.read()
    if not raw:
        return
    handoff: dict[str, Any] = json.loads(raw)
    os.environ.update(handoff["env"])

    redis = get_redis()
    worker = TrainerWorker.find_by_key(
        handoff["worker_key"], connection=redis, serializer=JSONSerializer
    )
    if worker is None:  # the worker is gone; the reconciler recovers its job from SQL
        sys.exit(1)
    job = Job.fetch(handoff["job_id"], connection=redis, serializer=JSONSerializer)
    execution = fetch_execution(handoff["execution_id"], job)
    run_in_horse(worker, job, training_queue(redis), execution)

"""Work horses started before their job, so a job starts training without waiting for imports.

While the worker is idle it keeps one :class:`StandbyHorse` waiting: a process that has already
imported torch, transformers and peft (seconds; importing torch does not initialise CUDA, so
CUDA still meets no fork) and blocks on its stdin until the worker hands it a job. An empty stdin
(the worker stopped or died) ends it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from rq.executions import Execution
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker import BaseWorker

from ftaas_core.queue import get_redis, training_queue


@dataclass
class StandbyHorse:
    pid: int
    stdin: int

    @classmethod
    def spawn(cls) -> StandbyHorse:
        read, write = os.pipe()  # both close-on-exec; the child gets the read end as its stdin
        source = f"import sys; sys.path[:] = {sys.path!r}; import ftaas_worker.horse as h; h.main()"
        pid = os.posix_spawn(
            sys.executable,
            [sys.executable, "-c", source],
            os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, read, 0)],
            setpgroup=0,  # its own process group, as rq gives a horse: the worker signals it alone
        )
        os.close(read)
        return cls(pid, write)

    def alive(self) -> bool:
        """False once it has exited (reaping it): e.g. killed for memory while it waited."""
        try:
            return os.waitpid(self.pid, os.WNOHANG) == (0, 0)
        except ChildProcessError:
            return False

    def take(self, worker: BaseWorker, job: Job, execution: Execution) -> None:
        handoff = {
            "worker_key": worker.key,
            "job_id": job.id,
            "execution_id": execution.id,
            "env": {
                "RQ_WORKER_ID": worker.name,
                "RQ_JOB_ID": job.id,
                "RQ_EXECUTION_ID": execution.id,
            },
        }
        with os.fdopen(self.stdin, "wb") as pipe:
            pipe.write(json.dumps(handoff).encode())

    def dismiss(self) -> None:
        os.close(self.stdin)
        with suppress(ProcessLookupError, ChildProcessError):  # already exited and reaped
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)


def main() -> None:
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

    from ftaas_worker.worker import TrainerWorker

    redis = get_redis()
    worker = TrainerWorker.find_by_key(
        handoff["worker_key"], connection=redis, serializer=JSONSerializer
    )
    if worker is None:  # the worker is gone; the reconciler recovers its job from SQL
        sys.exit(1)
    job = Job.fetch(handoff["job_id"], connection=redis, serializer=JSONSerializer)
    execution = Execution.fetch(handoff["execution_id"], job.id, connection=redis)
    execution._job = job  # Execution.job would re-fetch the job without our serializer
    worker.execution = execution
    worker.main_work_horse(job, training_queue(redis))

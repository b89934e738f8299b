"""Work horses started before their job, so a job starts training without waiting for imports.

While the worker is idle it keeps one :class:`StandbyHorse` waiting: a process running
:mod:`ftaas_worker.horse` that has already imported torch, transformers and peft (seconds;
importing torch does not initialise CUDA, so CUDA still meets no fork) and blocks on its stdin
until the worker hands it a job. An empty stdin (the worker stopped or died) ends it; once it
trains, its worker's death ends it all the same (:mod:`ftaas_worker.lifeline`).

This is the worker's side of the hand-off; the horse's side lives apart, in
:mod:`ftaas_worker.horse`, because it needs the worker class and the worker needs this.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from contextlib import suppress
from dataclasses import dataclass

from rq.executions import Execution
from rq.job import Job
from rq.worker import BaseWorker

from ftaas_core.rq_compat import horse_env

#: What a standby horse runs; tests find standby horses by this module name on their cmdline.
HORSE_MODULE = "ftaas_worker.horse"


@dataclass
class StandbyHorse:
    pid: int
    stdin: int

    @classmethod
    def spawn(cls) -> StandbyHorse:
        """Start one from the main thread: the kernel kills a horse once the thread that
        started it ends (``PR_SET_PDEATHSIG``), which must mean once the worker ends."""
        assert threading.current_thread() is threading.main_thread(), "horses die with threads"
        read, write = os.pipe()  # both close-on-exec; the child gets the read end as its stdin
        source = (
            f"import sys; sys.path[:] = {sys.path!r}; import {HORSE_MODULE} as h; "
            f"h.main(worker_pid={os.getpid()})"
        )
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
        """Hand it the job: it finds the worker, job and execution in Redis by these ids."""
        handoff = {
            "worker_key": worker.key,
            "job_id": job.id,
            "execution_id": execution.id,
            "env": horse_env(worker, job, execution),
        }
        with os.fdopen(self.stdin, "wb") as pipe:
            pipe.write(json.dumps(handoff).encode())

    def dismiss(self) -> None:
        os.close(self.stdin)
        with suppress(ProcessLookupError, ChildProcessError):  # already exited and reaped
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)

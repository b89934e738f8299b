"""Every use of rq beyond its public API, in one place, pinned to the rq versions it was read on.

ftaas starts its work horses itself (a process spawned ahead of its job, never a fork) and asks
whether a worker still holds a job, neither of which rq offers publicly. What that takes of rq's
internals is here, each piece named for what it touches; ``tests/core/test_rq_compat.py`` checks
on the installed rq that every one of them still exists, so an upgrade breaks a test first.
"""

from __future__ import annotations

import re
import signal
import time
from importlib.metadata import version as installed_version
from typing import Any, NoReturn

from rq import Queue, Worker
from rq.executions import Execution
from rq.job import Job
from rq.worker import BaseWorker

#: The rq releases this module was read against; core/pyproject.toml pins the same range.
RQ_MIN = "3.0"
RQ_BELOW = "4"
SUPPORTED = f">={RQ_MIN},<{RQ_BELOW}"

#: What the module reaches into, for the test that pins it to the installed rq.
WORKER_HOOKS = (
    "bootstrap",
    "fork_work_horse",
    "execute_job",
    "handle_warm_shutdown_request",
    "main_work_horse",
    "kill_horse",
    "wait_for_horse",
    "horse_pid",
)
WORKER_PRIVATES = ("_horse_pid", "_stop_requested")
EXECUTION_PRIVATES = ("_job",)

_PRE_RELEASE = re.compile(r"[.\-_]?(a|b|c|rc|alpha|beta|pre|preview|dev)", re.IGNORECASE)


class RQVersionError(RuntimeError):
    """The installed rq is outside :data:`SUPPORTED`: the internals used here may have moved."""


def _release(version: str) -> tuple[tuple[int, ...], bool]:
    """``(release numbers without trailing zeros, is a final release)``; PEP 440 enough for rq."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)(.*)", version)
    if not match:
        raise RQVersionError(
            f"cannot read the rq version {version!r}; ftaas supports rq{SUPPORTED}"
        )
    numbers = [int(part) for part in match[1].split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers), not _PRE_RELEASE.match(match[2])


def check_rq_version(version: str | None = None) -> str:
    """Refuse an rq outside :data:`SUPPORTED` (default: the installed one); return the version."""
    version = version or installed_version("rq")
    release, final = _release(version)
    low, _ = _release(RQ_MIN)
    high, _ = _release(RQ_BELOW)
    # As in PEP 440: a pre-release of the lower bound is below it; none of the upper bound's is in.
    if (release, final) < (low, True) or release >= high:
        raise RQVersionError(
            f"rq {version} is installed, but ftaas supports rq{SUPPORTED} only: "
            "ftaas_core.rq_compat relies on rq internals read on those releases"
        )
    return version


def live_started_ids(queue: Queue) -> set[str]:
    """Ids of the jobs a live worker holds: ``StartedJobRegistry`` scores are heartbeat expiries."""
    registry = queue.started_job_registry
    # rq's registry lists all ids or the expired ones; one read by score gives the live ones.
    live = queue.connection.zrangebyscore(registry.key, time.time(), "+inf")
    return {registry.parse_job_id(member) for member in live}


def attach_job(execution: Execution, job: Job) -> None:
    """``Execution._job``: else ``execution.job`` re-fetches the job without our serializer."""
    execution._job = job


def fetch_execution(execution_id: str, job: Job) -> Execution:
    """``Execution.fetch`` (undocumented): the execution the worker prepared, job attached."""
    execution = Execution.fetch(execution_id, job.id, connection=job.connection)
    attach_job(execution, job)
    return execution


def set_horse_pid(worker: BaseWorker, pid: int) -> None:
    """``Worker._horse_pid``: rq's horse monitor and ``kill_horse`` act on this pid."""
    worker._horse_pid = pid


def stop_requested(worker: BaseWorker) -> bool:
    """``Worker._stop_requested``: a warm shutdown arrived mid-job; the loop ends after it."""
    return worker._stop_requested


def horse_env(worker: BaseWorker, job: Job, execution: Execution) -> dict[str, str]:
    """The ``RQ_*`` variables rq's ``SpawnWorker.fork_work_horse`` gives its horse."""
    return {"RQ_WORKER_ID": worker.name, "RQ_JOB_ID": job.id, "RQ_EXECUTION_ID": execution.id}


def run_in_horse(worker: BaseWorker, job: Job, queue: Queue, execution: Execution) -> NoReturn:
    """``Worker.main_work_horse`` (undocumented), in a process the worker did not fork: what rq's
    ``SpawnWorker`` child runs. It performs the job and exits the process."""
    attach_job(execution, job)
    worker.execution = execution
    worker.main_work_horse(job, queue)
    raise AssertionError("rq's main_work_horse returned instead of exiting")  # pragma: no cover


class HandOffWorker(Worker):
    """An rq worker whose horse is a process that :meth:`start_horse` hands each job to, in
    place of rq's fork; it overrides rq's undocumented worker hooks so subclasses need none."""

    def start_horse(self, job: Job, queue: Queue, execution: Execution) -> int:
        """Hand ``job`` to a child process that leads its own process group (rq signals the
        group); return its pid. The child ends with :func:`run_in_horse`."""
        raise NotImplementedError

    def job_done(self) -> None:
        """Runs in the worker after each job, once its horse has ended and rq recorded how."""

    def registered(self) -> None:
        """Runs once rq has registered the worker, just before it takes its first job."""

    def warm_shutdown(self) -> None:
        """Runs on the first SIGINT or SIGTERM, before rq stops now (idle) or after the job."""

    @property
    def has_horse(self) -> bool:
        """``Worker.horse_pid`` (undocumented): a horse is running a job."""
        return bool(self.horse_pid)

    def signal_horse(self, sig: signal.Signals) -> None:
        """``Worker.kill_horse`` (undocumented): signal the horse's process group, if any."""
        if self.horse_pid:
            self.kill_horse(sig)

    def wait_out_horse(self) -> None:
        """``Worker.wait_for_horse`` (undocumented): wait until the horse, if any, exits."""
        if self.horse_pid:
            self.wait_for_horse()

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        """rq hook: ``work`` calls it first; it registers the worker. Then :meth:`registered`."""
        super().bootstrap(*args, **kwargs)
        self.registered()

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        """rq hook: ``execute_job`` calls it after ``prepare_execution``; its horse monitor then
        waits on the pid."""
        assert self.execution is not None  # prepared by rq before the horse starts
        set_horse_pid(self, self.start_horse(job, queue, self.execution))

    def execute_job(self, job: Job, queue: Queue) -> None:
        """rq hook: one job, from its execution record to its horse's end; then :meth:`job_done`."""
        super().execute_job(job, queue)
        self.job_done()

    def handle_warm_shutdown_request(self) -> None:
        """rq hook: ``request_stop`` calls it on SIGINT/SIGTERM; then :meth:`warm_shutdown`."""
        super().handle_warm_shutdown_request()
        self.warm_shutdown()

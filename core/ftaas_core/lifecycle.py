"""The job lifecycle: which statuses a job moves between, and every move with its side effects.

``validating_files → queued → running → succeeded | failed | cancelled``, and
``running → pausing → paused → queued`` (a queued job pauses at once). Nothing else writes
``Job.status``.

Each move is one conditional ``UPDATE … WHERE status IN (<the statuses it leaves>)``, and a
worker's moves also name the attempt that holds the lease. The row count decides: among
concurrent requests exactly one changes the job, the others get :class:`TransitionRefused`
with the status they found, and a terminal job never leaves its terminal state. The UPDATE is
the transaction's first statement, so it takes the row's lock (PostgreSQL) or the database's
write lock (SQLite, where ``SELECT … FOR UPDATE`` is a no-op) before anything is read; the
move's event, webhook and fields are written in that same transaction.

Queue hand-offs (:func:`enqueue`, :func:`drop_from_queue`) happen after the commit: Redis is a
transport, and the reconciler re-enqueues whatever SQL says is queued.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import ColumnElement, case, func, select, update
from sqlalchemy.orm import Session

from ftaas.types import TERMINAL_STATUSES, JobStatus
from ftaas_core.events import add_event
from ftaas_core.models import Job, Tenant, now
from ftaas_core.queue import dequeue_training, enqueue_training
from ftaas_core.webhooks import record_job_event

log = logging.getLogger("ftaas.lifecycle")

S = JobStatus
ACTIVE = frozenset({S.VALIDATING_FILES, S.QUEUED, S.RUNNING, S.PAUSING})
"""Statuses that count toward a tenant's active-job quota."""
OWNED = frozenset({S.RUNNING, S.PAUSING})
"""A worker attempt holds the job's lease; ``pausing`` asks it to checkpoint and stop."""
UNFINISHED = frozenset(S) - TERMINAL_STATUSES
TERMINAL = TERMINAL_STATUSES


class TransitionRefused(Exception):
    """The job is not in a status the move leaves (another request, or the worker, moved it)."""

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"job {job_id} is {status}")
        self.job_id = job_id
        self.status = status


class QuotaExceeded(Exception):
    def __init__(self, active: int) -> None:
        super().__init__(f"{active} active jobs")
        self.active = active


Moves = Mapping[JobStatus, JobStatus]
"""The status a move leaves → the status it enters."""


def onto(to: JobStatus, leaves: Collection[JobStatus]) -> Moves:
    return dict.fromkeys(leaves, to)


def _move(
    session: Session, job_id: str, moves: Moves, *where: ColumnElement[bool], **values: Any
) -> Job | None:
    """The conditional UPDATE every move is made of; the moved job, or None if none matched.
    A move into a terminal status also stamps ``finished_at`` and drops the lease and the
    estimate."""
    targets = {to.value for to in moves.values()}
    if targets <= TERMINAL:
        values = {"finished_at": now(), "lease_expires_at": None, "estimated_finish": None} | values
    status = (
        next(iter(targets))
        if len(targets) == 1
        else case({s.value: to.value for s, to in moves.items()}, value=Job.status)
    )
    statement = (
        update(Job)
        .where(Job.id == job_id, Job.status.in_([s.value for s in moves]), *where)
        .values(status=status, **values)
        .returning(Job)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    return session.scalars(statement).one_or_none()


def _refusal(session: Session, job_id: str, *where: ColumnElement[bool]) -> TransitionRefused:
    status = session.scalar(select(Job.status).where(Job.id == job_id, *where))
    return TransitionRefused(job_id, status or "gone")


def _by_user(session: Session, tenant: str, job_id: str, moves: Moves, **values: Any) -> Job:
    """A move a tenant asks for; LookupError when the job is not theirs."""
    scope = Job.tenant_id == tenant
    job = _move(session, job_id, moves, scope, **values)
    if job is not None:
        return job
    refusal = _refusal(session, job_id, scope)
    if refusal.status == "gone":
        raise LookupError(job_id)
    raise refusal


# -- moves a tenant asks for (the API) ------------------------------------------------------


def create(session: Session, job: Job, max_active: int) -> Job:
    """Insert a queued job unless its tenant already has ``max_active`` active ones.

    The tenant's row is written first, so concurrent creates of one tenant take turns (a row
    lock on PostgreSQL, the write lock on SQLite) and each counts the jobs the others added."""
    session.execute(update(Tenant).where(Tenant.id == job.tenant_id).values(id=Tenant.id))
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.tenant_id == job.tenant_id, Job.status.in_([s.value for s in ACTIVE]))
    )
    if active >= max_active:
        raise QuotaExceeded(active)
    job.status = S.QUEUED.value
    session.add(job)
    session.flush()
    add_event(session, job.id, f"Created fine-tuning job: {job.id}")
    add_event(session, job.id, "Validated training file: " + job.training_file)
    return job


def cancel(session: Session, tenant: str, job_id: str) -> Job:
    """Any unfinished job: a queued one never starts, a running one's worker stops at once."""
    job = _by_user(session, tenant, job_id, onto(S.CANCELLED, UNFINISHED), worker_id=None)
    add_event(session, job.id, "Job cancelled by user")
    record_job_event(session, job, "fine_tuning.job.cancelled")
    return job


def pause(session: Session, tenant: str, job_id: str) -> Job:
    """A queued job is parked at once; a running one is asked to checkpoint and stop."""
    job = _by_user(session, tenant, job_id, {S.QUEUED: S.PAUSED, S.RUNNING: S.PAUSING})
    add_event(session, job.id, "Job paused" if job.status == S.PAUSED else "Pause requested")
    return job


def resume(session: Session, tenant: str, job_id: str) -> Job:
    """Back to the queue; the worker continues from the checkpoint the pause saved."""
    job = _by_user(session, tenant, job_id, onto(S.QUEUED, {S.PAUSED}))
    add_event(session, job.id, "Job resumed")
    return job


# -- moves of a worker attempt, fenced by its lease -----------------------------------------


def holds(job_id: str, attempt: int) -> list[ColumnElement[bool]]:
    """The lease fence: the job is still this attempt's, and running or pausing."""
    return [Job.id == job_id, Job.attempt == attempt, Job.status.in_([s.value for s in OWNED])]


def start(session: Session, job_id: str, worker_id: str, lease_seconds: float) -> int | None:
    """Take a queued job for a new attempt; its number, or None if the job is not queued."""
    job = _move(
        session,
        job_id,
        onto(S.RUNNING, {S.QUEUED}),
        attempt=Job.attempt + 1,
        worker_id=worker_id,
        lease_expires_at=time.time() + lease_seconds,
    )
    return None if job is None else job.attempt


def park(
    session: Session, job_id: str, attempt: int, detail: str, cause: str = "Worker shutting down"
) -> Job | None:
    """The attempt stops after its newest checkpoint: ``paused`` if the user asked for a pause,
    else back to ``queued`` (an eviction, or an outage it waited out too long), without spending
    the retry budget. None if the attempt lost the job."""
    cleared = {"worker_id": None, "lease_expires_at": None, "estimated_finish": None}
    moves = {S.PAUSING: S.PAUSED, S.RUNNING: S.QUEUED}
    job = _move(session, job_id, moves, Job.attempt == attempt, **cleared)
    if job is not None:
        add_event(session, job.id, f"{'Job paused' if job.status == S.PAUSED else cause}: {detail}")
    return job


def succeed(session: Session, job_id: str, attempt: int, **results: Any) -> Job | None:
    """The attempt's results (adapter, files, manifest) land with the status, or not at all."""
    job = _move(session, job_id, onto(S.SUCCEEDED, OWNED), Job.attempt == attempt, **results)
    if job is not None:
        add_event(session, job.id, "The job has successfully completed")
        record_job_event(session, job, "fine_tuning.job.succeeded")
    return job


def fail(
    session: Session,
    job_id: str,
    code: str,
    message: str,
    *fence: ColumnElement[bool],
    **values: Any,
) -> Job | None:
    """The job failed for good: its attempt's error, or the reconciler's verdict. ``fence``:
    the lease (attempt, expiry) the failure is judged under; None if it no longer holds."""
    error = {"code": code, "message": message, "param": None}
    job = _move(session, job_id, onto(S.FAILED, OWNED), *fence, error=error, **values)
    if job is not None:
        add_event(session, job.id, message, level="error")
        record_job_event(session, job, "fine_tuning.job.failed")
    return job


# -- the reconciler's move ------------------------------------------------------------------


def requeue_lost(session: Session, job: Job, max_retries: int) -> None:
    """A job whose lease expired: a pausing one is paused (its checkpoint is its resume point),
    a running one goes back to the queue on its retry budget, or fails once that is spent."""
    lost = Job.attempt == job.attempt, Job.lease_expires_at < time.time()
    cleared = {"worker_id": None, "lease_expires_at": None}
    if job.status == S.PAUSING:
        if _move(session, job.id, onto(S.PAUSED, {S.PAUSING}), *lost, **cleared):
            add_event(session, job.id, "Job paused (its worker stopped responding)")
        return
    retries = job.retries + 1
    if retries > max_retries:
        message = (
            f"The worker training this job stopped {retries} times (killed, out of memory, or "
            "its node was lost); giving up."
        )
        fail(session, job.id, "worker_lost", message, *lost, retries=retries)
    elif _move(session, job.id, onto(S.QUEUED, {S.RUNNING}), *lost, retries=retries, **cleared):
        add_event(
            session,
            job.id,
            f"Worker lost during attempt {job.attempt}; requeued (retry {retries} of "
            f"{max_retries}), resuming from the last checkpoint",
            level="warn",
        )


# -- queue hand-offs, after the commit ------------------------------------------------------


def enqueue(job: Job) -> None:
    """Hand a queued job to the workers; if Redis is away the reconciler does it later."""
    try:
        enqueue_training(job.id, job.attempt)
    except RedisError as exc:
        log.warning("could not enqueue %s now: %s", job.id, exc)


def drop_from_queue(job: Job) -> None:
    """Spare a worker the start of a job that left the queue; harmless if it fails (a worker
    skips a job that is not queued) or if the job was not queued at all."""
    try:
        dequeue_training(job.id, job.attempt)
    except RedisError as exc:
        log.warning("could not drop %s from the queue: %s", job.id, exc)

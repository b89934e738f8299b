"""Job leases: which worker attempt owns a running job, and the state changes it may make.

A worker takes a queued job by a conditional UPDATE that bumps ``attempt``; from then on each of
its writes happens in a transaction that first re-reads the job and checks it is still
``running`` under the same attempt. A cancelled job, or one whose lease expired and was handed to
another attempt, raises :class:`LeaseLost`, so a stale worker can never overwrite newer state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ftaas_core.db import Database
from ftaas_core.events import add_event
from ftaas_core.models import Job, now
from ftaas_core.webhooks import record_job_event

OWNED_STATUSES = ("running", "pausing")
"""A worker attempt owns its job in these states; ``pausing`` asks it to checkpoint and stop."""


class LeaseLost(Exception):
    """The job was cancelled, or another attempt owns it now."""


class Lease:
    def __init__(
        self, db: Database, job_id: str, worker_id: str, attempt: int, seconds: int
    ) -> None:
        self.db = db
        self.job_id = job_id
        self.worker_id = worker_id
        self.attempt = attempt
        self.seconds = seconds
        self.lost = threading.Event()
        self.pause_requested = threading.Event()

    @classmethod
    def acquire(cls, db: Database, job_id: str, worker_id: str, seconds: int) -> Lease | None:
        """Take a queued job; None if it is not queued (cancelled, finished, or taken)."""
        with db.session() as session:
            attempt = session.scalar(
                update(Job)
                .where(Job.id == job_id, Job.status == "queued")
                .values(
                    status="running",
                    attempt=Job.attempt + 1,
                    worker_id=worker_id,
                    lease_expires_at=time.time() + seconds,
                )
                .returning(Job.attempt)
            )
        return None if attempt is None else cls(db, job_id, worker_id, attempt, seconds)

    @contextmanager
    def guard(self) -> Iterator[tuple[Session, Job]]:
        """A transaction in which this attempt still owns the job (row locked where supported)."""
        with self.db.session() as session:
            job = session.scalar(
                select(Job)
                .where(
                    Job.id == self.job_id,
                    Job.attempt == self.attempt,
                    Job.status.in_(OWNED_STATUSES),
                )
                .with_for_update()
            )
            if job is None:
                self.lost.set()
                raise LeaseLost(self.job_id)
            if job.status == "pausing":
                self.pause_requested.set()
            yield session, job

    def renew(self) -> None:
        with self.guard() as (_, job):
            job.lease_expires_at = time.time() + self.seconds

    @contextmanager
    def heartbeat(self, interval: float = 1.0) -> Iterator[None]:
        """Renew the lease in the background; notice a cancel or takeover within ``interval``."""
        stop = threading.Event()

        def beat() -> None:
            renew_every = max(interval, self.seconds / 3)
            last = time.monotonic()
            while not stop.wait(interval) and not self.lost.is_set():
                try:
                    if time.monotonic() - last >= renew_every:
                        self.renew()
                        last = time.monotonic()
                    else:
                        self.check()
                except LeaseLost:
                    return
                except Exception:  # the database may be briefly away; the lease has slack
                    continue

        thread = threading.Thread(target=beat, name=f"lease-{self.job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def check(self) -> None:
        """Notice a cancel, a takeover or a pause request without writing anything."""
        with self.db.session() as session:
            status = session.scalar(
                select(Job.status).where(Job.id == self.job_id, Job.attempt == self.attempt)
            )
        if status not in OWNED_STATUSES:
            self.lost.set()
            raise LeaseLost(self.job_id)
        if status == "pausing":
            self.pause_requested.set()

    def park(self, step: int) -> str:
        """After a checkpoint: ``paused`` if the user asked for a pause, else back to ``queued``
        (an eviction), without spending the retry budget. Returns the new status."""
        with self.guard() as (session, job):
            job.status = "paused" if job.status == "pausing" else "queued"
            job.worker_id = None
            job.lease_expires_at = None
            job.estimated_finish = None
            message = "Job paused" if job.status == "paused" else "Worker shutting down"
            add_event(session, job.id, f"{message}: checkpointed at step {step}")
            return job.status

    def fail(self, code: str, message: str) -> None:
        with self.guard() as (session, job):
            fail_job(session, job, code, message)


def fail_job(session: Session, job: Job, code: str, message: str) -> None:
    job.status = "failed"
    job.error = {"code": code, "message": message, "param": None}
    job.finished_at = now()
    job.lease_expires_at = None
    add_event(session, job.id, message, level="error")
    record_job_event(session, job, "fine_tuning.job.failed")

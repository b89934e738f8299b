"""Job leases: which worker attempt owns a running job, renewed while it trains.

A worker takes a queued job with :func:`ftaas_core.lifecycle.start`, which bumps ``attempt``.
From then on each of its writes happens in a transaction whose first statement is a conditional
UPDATE on the job under that attempt (:meth:`Lease.guard`): it renews the lease and locks the
row (the database, on SQLite) until the writes commit, so a cancel or a takeover lands either
before them, and they raise :class:`LeaseLost`, or after them. A stale worker can never write
over newer state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ftaas.types import JobStatus
from ftaas_core import lifecycle
from ftaas_core.db import Database
from ftaas_core.events import add_event
from ftaas_core.models import Job


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
            attempt = lifecycle.start(session, job_id, worker_id, seconds)
        return None if attempt is None else cls(db, job_id, worker_id, attempt, seconds)

    @contextmanager
    def guard(self) -> Iterator[tuple[Session, Job]]:
        """A transaction in which this attempt still owns the job, opened by renewing the lease."""
        with self.db.session() as session:
            job = session.scalars(
                update(Job)
                .where(*lifecycle.holds(self.job_id, self.attempt))
                .values(lease_expires_at=time.time() + self.seconds)
                .returning(Job)
                .execution_options(populate_existing=True, synchronize_session=False)
            ).one_or_none()
            if job is None:
                raise self._lost()
            if job.status == JobStatus.PAUSING:
                self.pause_requested.set()
            yield session, job

    def _lost(self) -> LeaseLost:
        self.lost.set()
        return LeaseLost(self.job_id)

    def renew(self) -> None:
        with self.guard():
            pass

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
        if status not in lifecycle.OWNED:
            raise self._lost()
        if status == JobStatus.PAUSING:
            self.pause_requested.set()

    def park(self, detail: str, **cause: str) -> Job:
        """Paused or back in the queue (see :func:`lifecycle.park`)."""
        with self.db.session() as session:
            job = lifecycle.park(session, self.job_id, self.attempt, detail, **cause)
        if job is None:
            raise self._lost()
        return job

    def crashed(self, detail: str, max_retries: int) -> Job:
        """The attempt broke off (one of its training processes died): the job goes back to the
        queue on its retry budget, or fails once that is spent, as when a lease expires."""
        with self.db.session() as session:
            job = session.scalars(
                update(Job)
                .where(*lifecycle.holds(self.job_id, self.attempt))
                .values(lease_expires_at=0)
                .returning(Job)
                .execution_options(populate_existing=True, synchronize_session=False)
            ).one_or_none()
            if job is None:
                raise self._lost()
            add_event(session, job.id, detail, level="warn")
            lifecycle.requeue_lost(session, job, max_retries)
        return job

    def fail(self, code: str, message: str) -> None:
        with self.db.session() as session:
            job = lifecycle.fail(session, self.job_id, code, message, Job.attempt == self.attempt)
        if job is None:
            raise self._lost()

"""The reconciler: makes Redis and the workers agree with SQL, so no job is ever lost.

Run in every API and worker process. It requeues jobs whose worker stopped renewing its lease
(killed, out of memory, node lost), failing them once the retry budget is spent, and re-enqueues
queued jobs that Redis no longer holds (e.g. Redis restarted without persistence). Its janitor
deletes expired files and what killed processes left of unfinished uploads, and expires Uploads
(OpenAI's Uploads API) left pending past their time, with their parts.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import select

from ftaas.types import JobStatus
from ftaas_core import chunked, lifecycle
from ftaas_core.db import Database, get_database
from ftaas_core.models import File, Job, now
from ftaas_core.queue import enqueue_training, is_enqueued
from ftaas_core.settings import Settings, get_settings
from ftaas_core.storage import get_store, remove_files_older_than
from ftaas_core.webhooks import deliver_due

log = logging.getLogger("ftaas.reconcile")


def requeue_expired(db: Database, settings: Settings) -> None:
    with db.session() as session:
        expired = session.scalars(
            select(Job).where(
                Job.status.in_([s.value for s in lifecycle.OWNED]),
                Job.lease_expires_at < time.time(),
            )
        ).all()
        for job in expired:
            lifecycle.requeue_lost(session, job, settings.max_job_retries)


def enqueue_missing(db: Database) -> None:
    with db.session() as session:
        queued = session.execute(
            select(Job.id, Job.attempt).where(Job.status == JobStatus.QUEUED.value)
        ).all()
    for job_id, attempt in queued:
        if not is_enqueued(job_id, attempt):
            log.info("re-enqueueing %s (attempt %s) from SQL", job_id, attempt)
            enqueue_training(job_id, attempt)


EXPIRED_FILES_PER_ROUND = 500
"""Bounds how long one round holds the rows' locks; the rest go in the next rounds."""


def delete_expired_files(db: Database) -> None:
    """Files past their ``expires_at`` go: each object, then its row, in one transaction. A
    process killed half-way leaves rows that the next round deletes again, never objects that
    no row points at (nothing would ever find those)."""
    store = get_store()
    with db.session() as session:
        expired = session.scalars(
            select(File)
            .where(File.expires_at < now())
            .limit(EXPIRED_FILES_PER_ROUND)
            .with_for_update(skip_locked=True)
        ).all()
        for row in expired:
            store.delete_prefix(row.storage_key)
            session.delete(row)


def remove_stale_uploads(settings: Settings) -> None:
    """Uploads whose process was killed: temporary files of the API's upload parser and the
    store's unfinished writes (S3 multipart uploads), once older than any live upload can be."""
    started_before = time.time() - settings.upload_tmp_max_age_seconds
    tmp = settings.upload_tmp_dir
    removed = remove_files_older_than(tmp.iterdir() if tmp.is_dir() else [], started_before)
    aborted = get_store().abort_stale_uploads(started_before)
    if removed or aborted:
        log.info("removed %d stale upload files, aborted %d unfinished writes", removed, aborted)


def expire_uploads(db: Database, settings: Settings) -> None:
    """Uploads never completed in their time (an hour) lose their parts: S3's multipart upload
    is aborted, and so is one whose completing process was killed."""
    expired = chunked.expire(db, get_store(), settings)
    if expired:
        log.info("expired %d uploads left pending", expired)


def reconcile_once(db: Database | None = None, settings: Settings | None = None) -> None:
    db = db or get_database()
    settings = settings or get_settings()
    requeue_expired(db, settings)
    enqueue_missing(db)
    delete_expired_files(db)
    remove_stale_uploads(settings)
    expire_uploads(db, settings)


class Reconciler:
    """Runs :func:`reconcile_once`, then due webhook deliveries, on a daemon thread every few
    seconds until stopped."""

    def __init__(self, interval: float | None = None) -> None:
        self.interval = interval or max(1.0, get_settings().worker_lease_seconds / 3)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ftaas-reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                reconcile_once()
            except Exception as exc:  # SQL or Redis away: try again next round
                log.warning("reconcile failed: %s", exc)
            try:  # on its own: a Redis outage must not hold up webhooks
                deliver_due(get_database())
            except Exception as exc:
                log.warning("webhook delivery failed: %s", exc)

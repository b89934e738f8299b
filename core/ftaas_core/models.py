"""SQL tables: the record of truth for tenants, keys, files, jobs, events and checkpoints.

Every public object has a random public ``id`` and an increasing ``seq``: lists are ordered by
``seq`` and paged with ``after=<id>``, so cursors stay stable while rows are added.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def now() -> int:
    return int(time.time())


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    display_prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)


class File(Base):
    __tablename__ = "files"
    __table_args__ = (Index("ix_files_tenant_seq", "tenant_id", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    status_details: Mapped[str | None] = mapped_column(Text)
    storage_key: Mapped[str] = mapped_column(String(512))
    n_examples: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    n_chars: Mapped[int | None] = mapped_column(BigInteger)
    # "supervised" or "preference" (ftaas_core.examples.DatasetFormat); NULL on files uploaded
    # before formats were recorded, which are all supervised.
    dataset_format: Mapped[str | None] = mapped_column(String(16))


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_tenant_seq", "tenant_id", "seq"),
        Index("ix_jobs_status", "status"),
        Index("uq_jobs_idempotency", "tenant_id", "idempotency_key", unique=True),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(256))  # as asked: a catalogue or fine-tuned model
    base_model: Mapped[str] = mapped_column(String(256))  # the catalogue model trained
    # "supervised" or "dpo", as OpenAI's method.type
    method: Mapped[str] = mapped_column(String(16), default="supervised")
    # A job that continues a fine-tuned model: what it starts from (see routes/jobs.py).
    parent: Mapped[dict[str, Any] | None]
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64))
    hyperparameters: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(32))
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512))
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[dict[str, Any] | None]
    seed: Mapped[int] = mapped_column(BigInteger)
    suffix: Mapped[str | None] = mapped_column(String(64))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata")
    result_files: Mapped[list[Any]] = mapped_column(default=list)
    idempotency_key: Mapped[str | None] = mapped_column(String(256))
    # sha256 of the creating request's canonical body: a reused key must come with the same body.
    request_digest: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger)
    # Lease: the worker attempt that owns a running job, renewed by its heartbeat.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(256))
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    adapter_key: Mapped[str | None] = mapped_column(String(512))
    adapter_sha256: Mapped[str | None] = mapped_column(String(64))
    # Read only by its own endpoint, not by every poll of the job.
    manifest: Mapped[dict[str, Any] | None] = mapped_column(deferred=True)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_seq", "job_id", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    level: Mapped[str] = mapped_column(String(8))
    type: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None]


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (Index("ix_checkpoints_job_seq", "job_id", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]]
    storage_key: Mapped[str] = mapped_column(String(512))
    adapter_sha256: Mapped[str] = mapped_column(String(64))
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(512))


class Throughput(Base):
    """Measured training speed per base model and worker class, updated as jobs finish; the
    basis of ``estimated_finish`` before a job has run a step."""

    __tablename__ = "throughput"

    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    worker_class: Mapped[str] = mapped_column(String(128), primary_key=True)
    tokens_per_second: Mapped[float] = mapped_column(Float)
    samples: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now)


class WebhookEndpoint(Base):
    """A tenant's receiver of job events. The secret is kept in clear because every delivery is
    signed with it; deleting sets ``disabled_at`` so the delivery log keeps its endpoint."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_tenant_seq", "tenant_id", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    secret: Mapped[str] = mapped_column(String(128))
    event_types: Mapped[list[Any]]
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    disabled_at: Mapped[int | None] = mapped_column(BigInteger)


class WebhookDelivery(Base):
    """One event for one endpoint: written with the job's state change, then sent (and retried)
    by :func:`ftaas_core.webhooks.deliver_due`. ``payload`` is the exact body that gets signed."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_endpoint_seq", "endpoint_id", "seq"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    delivered_at: Mapped[int | None] = mapped_column(BigInteger)


class Upload(Base):
    """An Upload of OpenAI's Uploads API: a file sent in parts, assembled on completion into
    the file ``file_id`` (chosen up front, so S3's multipart upload ``staging`` is begun on the
    file's own key). ``status`` is OpenAI's, plus ``completing`` while one request assembles."""

    __tablename__ = "uploads"
    __table_args__ = (
        Index("ix_uploads_tenant_seq", "tenant_id", "seq"),
        Index("ix_uploads_status_expires", "status", "expires_at"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    mime_type: Mapped[str] = mapped_column(String(128))
    bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    file_id: Mapped[str] = mapped_column(String(64))
    # The file's expires_after[seconds], counted from when it is made.
    file_expires_after: Mapped[int | None] = mapped_column(BigInteger)
    staging: Mapped[str] = mapped_column(String(1024))
    # The part number the next part without one of its own gets.
    next_part: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    expires_at: Mapped[int] = mapped_column(BigInteger)


class UploadPart(Base):
    """One part of an Upload; ``number`` orders it in S3's multipart upload (a part sent again
    under the same number replaces it), ``etag`` is set when it is an S3 part there."""

    __tablename__ = "upload_parts"
    __table_args__ = (Index("uq_upload_parts_number", "upload_id", "number", unique=True),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    etag: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)

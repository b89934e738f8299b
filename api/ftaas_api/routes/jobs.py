"""``/v1/fine_tuning/jobs``: create (validated, idempotent, enqueued), read, cancel, events."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from typing import Annotated, Any, Literal, NamedTuple

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from ftaas.types import Checkpoint, FineTuningJob, JobEvent, JobStatus, Page
from ftaas_api.deps import DB, Config, Store, TenantId
from ftaas_api.errors import APIError, not_found
from ftaas_api.paging import paginate
from ftaas_api.wire import checkpoint_wire, event_wire, job_wire
from ftaas_core import lifecycle
from ftaas_core.db import Database
from ftaas_core.estimates import estimate, with_estimate_inputs
from ftaas_core.hyperparams import DpoHyperparameters, Hyperparameters
from ftaas_core.ids import new_id
from ftaas_core.models import Checkpoint as CheckpointRow
from ftaas_core.models import File, Job
from ftaas_core.models import JobEvent as EventRow
from ftaas_core.settings import Settings
from ftaas_core.storage import iter_stream

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])

JobMove = Callable[[Session, str, str], Job]
Suffix = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
MetadataKey = Annotated[str, Field(min_length=1, max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SupervisedSpec(Strict):
    hyperparameters: Hyperparameters | None = None


class DpoSpec(Strict):
    hyperparameters: DpoHyperparameters | None = None


class MethodSpec(Strict):
    type: Literal["supervised", "dpo"]
    supervised: SupervisedSpec | None = None
    dpo: DpoSpec | None = None


METHODS = {"supervised": "supervised", "dpo": "preference"}
"""Each method and the format of the files it trains on (ftaas_core.examples.DatasetFormat)."""
LORA_SETTINGS = ("lora_r", "lora_alpha", "target_modules")
"""What shapes an adapter: a job that continues one keeps them."""


class JobCreate(Strict):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    training_file: Annotated[str, Field(min_length=1, max_length=64)]
    validation_file: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    hyperparameters: Hyperparameters | None = None
    method: MethodSpec | None = None
    suffix: Suffix | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)] | None = None
    integrations: Annotated[list[Any], Field(max_length=0)] | None = None

    @property
    def method_type(self) -> str:
        return self.method.type if self.method else "supervised"

    def _method_spec(self) -> SupervisedSpec | DpoSpec | None:
        """The settings of the method's type; those of another type are refused."""
        if self.method is None:
            return None
        for name in METHODS:
            if name != self.method.type and getattr(self.method, name) is not None:
                raise APIError(
                    400,
                    f"method.{name} does not apply to a job whose method.type is "
                    f"'{self.method.type}'.",
                    param=f"method.{name}",
                )
        return getattr(self.method, self.method.type)

    def chosen_hyperparameters(self) -> Hyperparameters:
        spec = self._method_spec()
        nested = spec.hyperparameters if spec else None
        if self.method_type == "dpo":
            if self.hyperparameters is not None:
                raise APIError(
                    400,
                    "Give a DPO job's hyperparameters under method.dpo.hyperparameters.",
                    param="hyperparameters",
                )
            return nested or DpoHyperparameters()
        if nested is not None and self.hyperparameters is not None:
            raise APIError(
                400,
                "Give hyperparameters either top-level or under method.supervised, not both.",
                param="hyperparameters",
            )
        return nested or self.hyperparameters or Hyperparameters()

    def digest(self) -> str:
        """sha256 of the request as validated, keys sorted: the same request sent with other
        whitespace, key order or spelled-out defaults has the same digest."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


# Built once: constructing a statement costs about as much as running it on every poll.
_OWNED = (Job.id == bindparam("job_id"), Job.tenant_id == bindparam("tenant"))
_OWNED_JOB = select(Job).where(*_OWNED)
# A polled job and its estimate in one Core statement, with no ORM objects to build: the job's
# columns (the manifest aside) labelled by attribute name, so the row reads like a Job.
_JOB_VIEW = with_estimate_inputs(
    select(
        *(getattr(Job, c.key).label(c.key) for c in Job.__mapper__.column_attrs if not c.deferred)
    ).where(*_OWNED)
)


def _owned_job(session: Session, tenant: str, job_id: str) -> Job:
    """The caller's job (404 otherwise)."""
    row = session.scalar(_OWNED_JOB, {"job_id": job_id, "tenant": tenant})
    if row is None:
        raise not_found("fine-tuning job", job_id)
    return row


def _check_file(
    session: Session, tenant: str, file_id: str, param: str, min_examples: int, method: str
) -> None:
    code = f"invalid_{param}"
    row = session.scalar(select(File).where(File.id == file_id, File.tenant_id == tenant))
    if row is None:
        raise APIError(
            400, f"Invalid {param}: file '{file_id}' does not exist.", param=param, code=code
        )
    if row.purpose != "fine-tune" or row.status != "processed":
        raise APIError(
            400,
            f"Invalid {param}: file '{file_id}' is not a processed fine-tune file.",
            param=param,
            code=code,
        )
    if (row.n_examples or 0) < min_examples:
        raise APIError(
            400,
            f"Invalid {param}: '{file_id}' has {row.n_examples} example(s); at least {min_examples} are required.",
            param=param,
            code="invalid_n_examples",
        )
    held, trained = row.dataset_format or "supervised", METHODS[method]
    if held != trained:
        raise APIError(
            400,
            f"Invalid {param}: file '{file_id}' holds {held} examples; a {method} job trains on "
            f"{trained} examples.",
            param=param,
            code=code,
        )


class Start(NamedTuple):
    """What a job trains: a catalogue model, and the adapter it continues (with its job's
    LoRA settings) when ``model`` names a fine-tuned model or checkpoint."""

    base_model: str
    parent: dict[str, Any] | None = None
    lora: dict[str, Any] | None = None


def _parent(session: Session, tenant: str, model: str) -> tuple[Job, CheckpointRow | None] | None:
    """The caller's succeeded job whose fine-tuned model is ``model``, or the job and newest
    checkpoint named ``model``."""
    job = session.scalar(
        select(Job).where(
            Job.tenant_id == tenant,
            Job.fine_tuned_model == model,
            Job.status == JobStatus.SUCCEEDED.value,
        )
    )
    if job is not None:
        return job, None
    found = session.execute(
        select(Job, CheckpointRow)
        .join(CheckpointRow, CheckpointRow.job_id == Job.id)
        .where(Job.tenant_id == tenant, CheckpointRow.fine_tuned_model_checkpoint == model)
        .order_by(CheckpointRow.seq.desc())
        .limit(1)
    ).first()
    return (found[0], found[1]) if found else None


def _start(session: Session, tenant: str, model: str, settings: Settings) -> Start:
    """Another tenant's fine-tuned model is not found, like any other of its objects."""
    available = ", ".join(sorted(settings.models)) or "none"
    if model in settings.models:
        return Start(model)
    found = _parent(session, tenant, model)
    if found is None and model.startswith("ft:"):
        raise APIError(
            404,
            f"The model '{model}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    if found is None or found[0].base_model not in settings.models:
        base = f" (a fine-tune of '{found[0].base_model}')" if found else ""
        raise APIError(
            400,
            f"Model '{model}'{base} is not available. Available models: {available}.",
            param="model",
            code="model_not_available",
        )
    job, checkpoint = found
    parent = {
        "job_id": job.id,
        "checkpoint_id": checkpoint.id if checkpoint else None,
        "fine_tuned_model": model,
        "adapter_key": f"{checkpoint.storage_key}/adapter.tar.gz"
        if checkpoint
        else job.adapter_key,
        "adapter_sha256": checkpoint.adapter_sha256 if checkpoint else job.adapter_sha256,
    }
    return Start(
        job.base_model, parent, {name: job.hyperparameters[name] for name in LORA_SETTINGS}
    )


def _keep_lora(hyperparameters: Hyperparameters, lora: dict[str, Any] | None) -> Hyperparameters:
    """A continued adapter keeps its LoRA settings: those asked for must be the adapter's."""
    if lora is None:
        return hyperparameters
    for name, value in lora.items():
        asked = getattr(hyperparameters, name)
        if name in hyperparameters.model_fields_set and asked != value:
            raise APIError(
                400,
                f"The model continued is an adapter with {name}={value!r}, which a job that "
                f"trains it further keeps (got {name}={asked!r}).",
                param=f"hyperparameters.{name}",
            )
    return hyperparameters.model_copy(update=lora)


def _validate_and_insert(
    session: Session, tenant: str, body: JobCreate, key: str | None, settings: Settings
) -> Job:
    start = _start(session, tenant, body.model, settings)
    hyperparameters = _keep_lora(body.chosen_hyperparameters(), start.lora)
    if (
        hyperparameters.early_stopping_patience or hyperparameters.keep_best
    ) and not body.validation_file:
        raise APIError(
            400,
            "early_stopping_patience and keep_best judge by validation loss: give a validation_file.",
            param="validation_file",
        )
    processes = settings.nproc_per_node or 1  # None: one per GPU the worker sees, unknown here
    if hyperparameters.load_in_4bit and processes > 1:
        raise APIError(
            400,
            f"load_in_4bit (QLoRA) trains in one process, and this deployment trains each job "
            f"across {processes} (FTAAS_NPROC_PER_NODE): leave load_in_4bit off, which shards "
            "the full-precision base over them instead.",
            param="hyperparameters.load_in_4bit",
        )
    method = body.method_type
    _check_file(session, tenant, body.training_file, "training_file", settings.min_examples, method)
    if body.validation_file:
        _check_file(session, tenant, body.validation_file, "validation_file", 1, method)
    job = Job(
        id=new_id("ftjob"),
        tenant_id=tenant,
        model=body.model,
        base_model=start.base_model,
        method=method,
        parent=start.parent,
        training_file=body.training_file,
        validation_file=body.validation_file,
        hyperparameters=hyperparameters.model_dump(),
        seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
        suffix=body.suffix,
        metadata_=body.metadata,
        result_files=[],
        idempotency_key=key,
        request_digest=body.digest(),
    )
    try:
        return lifecycle.create(session, job, settings.max_active_jobs)
    except lifecycle.QuotaExceeded as exc:
        raise APIError(
            429,
            f"You have {exc.active} active fine-tuning jobs, the most this deployment allows at "
            "once; wait for one to finish or cancel one.",
            code="exceeded_quota",
            retry_after=30,
        ) from exc


@router.post("")
def create_job(
    body: JobCreate,
    tenant: TenantId,
    db: DB,
    settings: Config,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> FineTuningJob:
    scope = (Job.tenant_id == tenant, Job.idempotency_key == idempotency_key)
    if idempotency_key:
        with db.session() as session:
            existing = session.scalar(select(Job).where(*scope))
            if existing is not None:
                return _replay(existing, body)
    try:
        with db.session() as session:
            job = _validate_and_insert(session, tenant, body, idempotency_key, settings)
    except IntegrityError:
        with db.session() as session:  # a concurrent retry with the same key won the insert
            existing = session.scalar(select(Job).where(*scope))
        if existing is None:
            raise
        return _replay(existing, body)
    lifecycle.enqueue(job)
    return _read_job(db, tenant, job.id)


def _replay(job: Job, body: JobCreate) -> FineTuningJob:
    """The job an Idempotency-Key made, again, if ``body`` is the request that made it (Stripe's
    rule); 400, not 409, otherwise: the openai SDK retries 409s and this can never succeed."""
    if job.request_digest not in (None, body.digest()):  # None: made before digests were kept
        raise APIError(
            400,
            "This Idempotency-Key was already used with a different request body; "
            "use a new key for a different request.",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        )
    return job_wire(job)


@router.get("")
def list_jobs(
    request: Request,
    tenant: TenantId,
    db: DB,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Page[FineTuningJob]:
    """Newest first; ``metadata[key]=value`` query parameters keep jobs whose metadata match."""
    scope = [Job.tenant_id == tenant]
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata[") and name.endswith("]"):
            scope.append(Job.metadata_[name[len("metadata[") : -1]].as_string() == value)
    with db.session() as session:
        return paginate(session, Job, scope, job_wire, after, limit)


@router.get("/{job_id}")
async def get_job(job_id: str, tenant: TenantId, db: DB) -> FineTuningJob:
    # Polled endpoints are coroutines that hand only their SQL to a thread: FastAPI runs a plain
    # function's endpoint and then its response validation as two separate thread hops.
    return await run_in_threadpool(_read_job, db, tenant, job_id)


def _read_job(db: Database, tenant: str, job_id: str) -> FineTuningJob:
    with db.engine.connect() as conn:
        row = conn.execute(_JOB_VIEW, {"job_id": job_id, "tenant": tenant}).first()
    if row is None:
        raise not_found("fine-tuning job", job_id)
    return job_wire(row, **estimate(row))


def _change(db: Database, tenant: str, job_id: str, move: JobMove, verb: str) -> FineTuningJob:
    """One lifecycle move a tenant asked for; 400 naming the status when the job cannot make it
    (not 409: the openai SDK retries 409s, and this can never succeed)."""
    try:
        with db.session() as session:
            job = move(session, tenant, job_id)
    except LookupError:
        raise not_found("fine-tuning job", job_id) from None
    except lifecycle.TransitionRefused as refused:
        raise APIError(
            400, f"Job {job_id} is {refused.status}; it cannot be {verb}.", param="id"
        ) from None
    if job.status == JobStatus.QUEUED:
        lifecycle.enqueue(job)
    elif job.status in (JobStatus.CANCELLED, JobStatus.PAUSED):
        lifecycle.drop_from_queue(job)
    return job_wire(job)


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, tenant: TenantId, db: DB) -> FineTuningJob:
    """Queued jobs never start; a running job's lease is revoked and its worker stops at once."""
    return _change(db, tenant, job_id, lifecycle.cancel, "cancelled")


@router.post("/{job_id}/pause")
def pause_job(job_id: str, tenant: TenantId, db: DB) -> FineTuningJob:
    """A queued job is parked at once; a running one checkpoints, frees its GPU, then parks."""
    return _change(
        db, tenant, job_id, lifecycle.pause, "paused (only queued or running jobs pause)"
    )


@router.post("/{job_id}/resume")
def resume_job(job_id: str, tenant: TenantId, db: DB) -> FineTuningJob:
    """Back to the queue; the worker continues from the checkpoint the pause saved."""
    return _change(db, tenant, job_id, lifecycle.resume, "resumed (only paused jobs resume)")


@router.get("/{job_id}/events")
async def list_events(
    job_id: str,
    tenant: TenantId,
    db: DB,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> Page[JobEvent]:
    return await run_in_threadpool(_read_events, db, tenant, job_id, after, limit)


def _read_events(
    db: Database, tenant: str, job_id: str, after: str | None, limit: int
) -> Page[JobEvent]:
    with db.session() as session:
        _owned_job(session, tenant, job_id)
        return paginate(session, EventRow, [EventRow.job_id == job_id], event_wire, after, limit)


@router.get("/{job_id}/checkpoints")
def list_checkpoints(
    job_id: str,
    tenant: TenantId,
    db: DB,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> Page[Checkpoint]:
    with db.session() as session:
        _owned_job(session, tenant, job_id)
        scope = [CheckpointRow.job_id == job_id]
        return paginate(session, CheckpointRow, scope, checkpoint_wire, after, limit)


@router.get("/{job_id}/manifest")
def get_manifest(job_id: str, tenant: TenantId, db: DB) -> dict[str, Any]:
    """The reproducibility manifest of a finished job: dataset digests, base-model revision or
    path digest, library versions, seed, resolved hyperparameters and device."""
    with db.session() as session:
        job = _owned_job(session, tenant, job_id)
        manifest = job.manifest
    if manifest is None:
        raise APIError(
            400,
            f"Job {job_id} is {job.status}; its manifest exists once it has succeeded.",
            param="id",
        )
    return manifest


def _adapter_response(store: Store, key: str, sha256: str, filename: str) -> StreamingResponse:
    return StreamingResponse(
        iter_stream(store.open(key)),
        media_type="application/gzip",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Content-SHA256": sha256,
        },
    )


@router.get("/{job_id}/adapter")
def download_adapter(job_id: str, tenant: TenantId, db: DB, store: Store) -> StreamingResponse:
    """The finished job's PEFT adapter directory as a tar.gz."""
    with db.session() as session:
        job = _owned_job(session, tenant, job_id)
    if job.status != JobStatus.SUCCEEDED or not job.adapter_key or not job.adapter_sha256:
        raise APIError(
            400,
            f"Job {job_id} is {job.status}; its adapter exists once it has succeeded.",
            param="id",
        )
    return _adapter_response(store, job.adapter_key, job.adapter_sha256, f"{job_id}-adapter.tar.gz")


@router.get("/{job_id}/checkpoints/{checkpoint_id}/adapter")
def download_checkpoint_adapter(
    job_id: str, checkpoint_id: str, tenant: TenantId, db: DB, store: Store
) -> StreamingResponse:
    with db.session() as session:
        _owned_job(session, tenant, job_id)
        row = session.scalar(
            select(CheckpointRow).where(
                CheckpointRow.id == checkpoint_id, CheckpointRow.job_id == job_id
            )
        )
    if row is None:
        raise not_found("checkpoint", checkpoint_id)
    return _adapter_response(
        store,
        f"{row.storage_key}/adapter.tar.gz",
        row.adapter_sha256,
        f"{checkpoint_id}-adapter.tar.gz",
    )

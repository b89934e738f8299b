"""SQL rows to the wire models of :mod:`ftaas.types`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from ftaas.types import Checkpoint, FileObject, FineTuningJob, JobEvent, JobHyperparameters
from ftaas_core import models


def file_wire(row: models.File) -> FileObject:
    return FileObject(
        id=row.id,
        bytes=row.bytes,
        created_at=row.created_at,
        filename=row.filename,
        purpose=row.purpose,
        status=row.status,
        status_details=row.status_details,
        expires_at=row.expires_at,
    )


def job_wire(row: models.Job | Row[Any], **extra: Any) -> FineTuningJob:
    """``extra``: estimates, overriding or beyond OpenAI's fields (clients ignore unknown ones)."""
    hyperparameters = JobHyperparameters.model_validate(row.hyperparameters)
    fields: dict[str, Any] = dict(
        id=row.id,
        created_at=row.created_at,
        error=row.error,
        fine_tuned_model=row.fine_tuned_model,
        finished_at=row.finished_at,
        hyperparameters=hyperparameters,
        model=row.model,
        organization_id=row.tenant_id,
        result_files=row.result_files,
        seed=row.seed,
        status=row.status,
        trained_tokens=row.trained_tokens,
        training_file=row.training_file,
        validation_file=row.validation_file,
        estimated_finish=row.estimated_finish,
        metadata=row.metadata_,
        method={"type": row.method, row.method: {"hyperparameters": hyperparameters}},
        suffix=row.suffix,
    )
    return FineTuningJob(**(fields | extra))


def event_wire(row: models.JobEvent) -> JobEvent:
    """A message event carries ``data: {}``: OpenAI documents ``data`` as an object."""
    return JobEvent(
        id=row.id,
        created_at=row.created_at,
        level=row.level,
        message=row.message,
        type=row.type,
        data=row.data if row.data is not None else {},
    )


def checkpoint_wire(row: models.Checkpoint) -> Checkpoint:
    return Checkpoint(
        id=row.id,
        created_at=row.created_at,
        fine_tuned_model_checkpoint=row.fine_tuned_model_checkpoint,
        fine_tuning_job_id=row.job_id,
        step_number=row.step_number,
        metrics=row.metrics,
    )

"""Time estimates: where a queued job stands and when it should finish, from measured speed.

Throughput is learned per base model and worker class from finished jobs (a moving average),
so an estimate exists before a job has run a single step; once it runs, the worker refines
``estimated_finish`` from its own step rate.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import Row, Select, case, func, select
from sqlalchemy.orm import Session, aliased

from ftaas.types import JobStatus
from ftaas_core.hyperparams import auto_epochs
from ftaas_core.models import File, Job, Throughput, now

CHARS_PER_TOKEN = 4  # a rough rate for English text; good enough for an estimate
SMOOTHING = 0.3


def record_throughput(
    session: Session, model: str, worker_class: str, tokens_per_second: float
) -> None:
    """Fold one finished job's measured speed into the running average."""
    row = session.get(Throughput, (model, worker_class))
    if row is None:
        session.add(
            Throughput(
                model=model,
                worker_class=worker_class,
                tokens_per_second=tokens_per_second,
                samples=1,
            )
        )
        return
    row.tokens_per_second += SMOOTHING * (tokens_per_second - row.tokens_per_second)
    row.samples += 1
    row.updated_at = now()


_AHEAD = aliased(Job)


def with_estimate_inputs(query: Select[Any]) -> Select[Any]:
    """``query`` over jobs, also selecting what :func:`estimate` reads: jobs are polled, so the
    estimate costs no statement of its own."""
    queue_position = (
        select(func.count())
        .select_from(_AHEAD)
        .where(_AHEAD.status == JobStatus.QUEUED.value, _AHEAD.seq < Job.seq)
        .scalar_subquery()
    )
    speed = (
        select(func.max(Throughput.tokens_per_second))
        .where(Throughput.model == Job.base_model)
        .scalar_subquery()
    )
    return query.add_columns(
        case((Job.status == JobStatus.QUEUED.value, queue_position)).label("queue_position"),
        speed.label("tokens_per_second"),
        File.n_examples,
        File.n_chars,
    ).outerjoin(File, File.id == Job.training_file)


def estimate(row: Row[Any]) -> dict[str, Any]:
    """Extra fields for a job that has not finished: queue position, projected tokens, ETA.
    ``row``: the job's status, epochs and what :func:`with_estimate_inputs` adds."""
    if row.status not in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSING):
        return {}
    extra: dict[str, Any] = {}
    if row.status == JobStatus.QUEUED:
        extra["queue_position"] = row.queue_position
    if not row.n_examples or not row.n_chars:
        return extra
    epochs = row.hyperparameters.get("n_epochs", "auto")
    if epochs == "auto":
        epochs = auto_epochs(row.n_examples)
    tokens = extra["estimated_trained_tokens"] = row.n_chars // CHARS_PER_TOKEN * epochs
    if row.status == JobStatus.QUEUED and row.tokens_per_second:
        # Rounded up: a queued job never looks done already.
        extra["estimated_finish"] = now() + math.ceil(
            (row.queue_position + 1) * tokens / row.tokens_per_second
        )
    return extra

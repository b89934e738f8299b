"""Time estimates: where a queued job stands and when it should finish, from measured speed.

Throughput is learned per base model and worker class from finished jobs (a moving average),
so an estimate exists before a job has run a single step; once it runs, the worker refines
``estimated_finish`` from its own step rate.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from ftaas.hyperparams import Hyperparameters, resolve
from ftaas.models import File, Job, Throughput, now

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


# Built once: constructing a statement costs about as much as running it, and jobs are polled.
_QUEUE_POSITION_AND_SPEED = select(
    select(func.count())
    .select_from(Job)
    .where(Job.status == "queued", Job.seq < bindparam("seq"))
    .scalar_subquery(),
    select(func.max(Throughput.tokens_per_second))
    .where(Throughput.model == bindparam("model"))
    .scalar_subquery(),
)


def estimate(session: Session, job: Job) -> dict[str, Any]:
    """Extra fields for a job that has not finished: queue position, projected tokens, ETA."""
    if job.status not in ("queued", "running", "pausing"):
        return {}
    extra: dict[str, Any] = {}
    speed = None
    if job.status == "queued":
        params = {"seq": job.seq, "model": job.model}
        position, speed = session.execute(_QUEUE_POSITION_AND_SPEED, params).one()
        extra["queue_position"] = position
    tokens = _projected_tokens(session, job)
    if tokens is None:
        return extra
    extra["estimated_trained_tokens"] = tokens
    if speed:
        # Rounded up: a queued job never looks done already.
        extra["estimated_finish"] = now() + math.ceil(
            (extra["queue_position"] + 1) * tokens / speed
        )
    return extra


_projected: dict[str, int] = {}


def _projected_tokens(session: Session, job: Job) -> int | None:
    """Tokens the job will train, from its file's size and its epochs. Neither changes once the
    job exists, and jobs are polled often, so each process remembers them (a bounded number)."""
    tokens = _projected.get(job.id)
    if tokens is None:
        size = session.execute(
            select(File.n_examples, File.n_chars).where(File.id == job.training_file)
        ).first()
        if size is None or not size.n_examples or not size.n_chars:
            return None
        fields = {k: v for k, v in job.hyperparameters.items() if k in Hyperparameters.model_fields}
        epochs = resolve(Hyperparameters.model_validate(fields), size.n_examples).n_epochs
        tokens = size.n_chars // CHARS_PER_TOKEN * epochs
        if len(_projected) >= 10_000:
            _projected.clear()
        _projected[job.id] = tokens
    return tokens

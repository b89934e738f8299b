"""One fine-tuning job, run inside its own work horse process (see :mod:`ftaas_worker.horse`).

Takes the job's lease, fetches its data (and the adapter it continues, if any), resumes from its
newest checkpoint if an earlier attempt left one, trains with :mod:`ftaas_worker.recipe`, stores
checkpoints and the adapter, and records the outcome. Every write goes through the lease, so a cancelled job or one taken over by
another attempt is never written to.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import signal
import socket
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from sqlalchemy import select

from ftaas.types import JobStatus
from ftaas_core import lifecycle
from ftaas_core.datasets import DatasetFormatError, Example, iter_examples
from ftaas_core.db import get_database
from ftaas_core.estimates import record_throughput
from ftaas_core.events import add_event
from ftaas_core.hyperparams import (
    DpoHyperparameters,
    Hyperparameters,
    ResolvedHyperparameters,
    auto_choices,
    resolve,
)
from ftaas_core.ids import new_id
from ftaas_core.leases import Lease, LeaseLost
from ftaas_core.models import Checkpoint, File, Job, JobEvent, Tenant, now
from ftaas_core.outages import ServiceOutage, retrying
from ftaas_core.settings import Settings, get_settings
from ftaas_core.storage import ObjectNotFound, ObjectStore, get_store, iter_stream, put_file

log = logging.getLogger("ftaas.worker")


def survives_outages(what: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """A store or database write that waits out an outage of up to FTAAS_OUTAGE_RETRY_SECONDS."""
    return retrying(what, lambda: get_settings().outage_retry_seconds)


if TYPE_CHECKING:
    from ftaas_worker.probes import BaseAnswers
    from ftaas_worker.recipe import TrainResult

P = ParamSpec("P")
T = TypeVar("T")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
METRIC_COLUMNS = (
    "step",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "tokens_per_second",
)


class JobFailed(Exception):
    """A failure the user can act on, with an OpenAI-style error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def run_job(job_id: str) -> str:
    """rq entry point (enqueued by dotted name). Returns how the attempt ended."""
    settings = get_settings()
    worker_id = os.environ.get("RQ_WORKER_ID") or f"{socket.gethostname()}:{os.getpid()}"
    lease = Lease.acquire(get_database(), job_id, worker_id, settings.worker_lease_seconds)
    if lease is None:
        return "skipped: not queued"
    preempted = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: preempted.set())
    with lease.heartbeat(), tempfile.TemporaryDirectory(prefix=f"{job_id}-") as tmp:
        # torch and transformers take seconds to import: only once the job is ours and its
        # lease is being renewed, so stale queue entries are skipped cheaply.
        from ftaas_worker.launch import RankDied, RankFailed
        from ftaas_worker.recipe import TrainingStopped, describe_failure

        run = JobRun(lease, settings, get_store(), Path(tmp), preempted)
        try:
            run.execute()
            return "succeeded"
        except LeaseLost:
            return "stopped: cancelled or taken over"
        except TrainingStopped as stop:
            if stop.reason == "preempt":
                return _handed_back(lease.park(f"checkpointed at step {stop.step}"))
            return "stopped: cancelled"
        except ServiceOutage as outage:
            log.warning("job %s parked: %s", job_id, outage)
            detail = f"{outage}; it resumes from its newest checkpoint"
            cause = "Object store or database unavailable"
            return _handed_back(lease.park(detail, cause=cause))
        except RankDied as died:
            detail = f"{died}; the attempt ends"
            return _handed_back(lease.crashed(detail, settings.max_job_retries))
        except (JobFailed, RankFailed) as failure:
            lease.fail(failure.code, failure.message)
        except Exception as exc:
            log.exception("job %s failed", job_id)
            lease.fail(*describe_failure(exc, run.phase))
        return "failed"


def _handed_back(job: Job) -> str:
    """A job its attempt gave up (parked, or crashed) enqueued once it is queued again; how the
    attempt ended."""
    if job.status == JobStatus.QUEUED:
        lifecycle.enqueue(job)
    return job.status


class JobRun:
    """The hooks the recipe calls, and the steps around it."""

    def __init__(
        self,
        lease: Lease,
        settings: Settings,
        store: ObjectStore,
        work_dir: Path,
        preempted: threading.Event,
    ) -> None:
        self.lease = lease
        self.settings = settings
        self.store = store
        self.work_dir = work_dir
        self.preempted = preempted
        self.phase = "Starting"
        self.dataset_digests: dict[str, dict[str, str]] = {}
        self.started = time.monotonic()
        self._read_job()

    @survives_outages("reading the job")
    def _read_job(self) -> None:
        with self.lease.guard() as (session, job):
            self.job_id = job.id
            self.tenant_id = job.tenant_id
            self.model = job.base_model  # the catalogue model; job.model may be a fine-tuned one
            self.method = job.method
            self.parent = job.parent
            self.seed = job.seed
            kind = DpoHyperparameters if job.method == "dpo" else Hyperparameters
            self.requested = kind.model_validate(
                {k: v for k, v in job.hyperparameters.items() if k in kind.model_fields}
            )
            tenant = session.get(Tenant, job.tenant_id)
            suffix = job.suffix or ""
            self.model_name = (
                f"ft:{self.model}:{tenant.name if tenant else job.tenant_id}:{suffix}:{job.id}"
            )
            self.files = {"training": job.training_file, "validation": job.validation_file}
            self.resume_key = session.scalar(
                select(Checkpoint.storage_key)
                .where(Checkpoint.job_id == job.id)
                .order_by(Checkpoint.step_number.desc(), Checkpoint.seq.desc())
                .limit(1)
            )

    # -- the recipe's hooks -------------------------------------------------------------------
    def on_phase(self, message: str) -> None:
        self.phase = message
        self._event(message)

    @survives_outages("recording an event")
    def _event(self, message: str, level: str = "info") -> None:
        with self.lease.guard() as (session, job):
            add_event(session, job.id, message, level=level)

    @survives_outages("recording metrics")
    def on_metrics(self, data: dict[str, float | int]) -> None:
        step, total = int(data["step"]), int(data.get("total_steps", 0))
        parts = (
            [f"Step {step}/{total}: training loss={data['train_loss']:.4f}"]
            if "train_loss" in data
            else [f"Step {step}/{total}"]
        )
        if "valid_loss" in data:
            parts.append(f"validation loss={data['valid_loss']:.4f}")
        with self.lease.guard() as (session, job):
            add_event(session, job.id, ", ".join(parts), type="metrics", data=dict(data))
            if total and step:
                elapsed = time.monotonic() - self.started
                job.estimated_finish = now() + int(elapsed / step * (total - step))

    @survives_outages("storing a checkpoint")
    def on_checkpoint(self, step: int, directory: Path, metrics: dict[str, float | int]) -> None:
        prefix = (
            f"checkpoints/{self.tenant_id}/{self.job_id}/attempt-{self.lease.attempt}-step-{step}"
        )
        sha256 = self._put_tar(f"{prefix}/adapter.tar.gz", directory, ADAPTER_FILES)
        self._put_tar(f"{prefix}/state.tar.gz", directory, None)
        with self.lease.guard() as (session, job):
            session.add(
                Checkpoint(
                    id=new_id("ftckpt"),
                    job_id=job.id,
                    step_number=step,
                    metrics=dict(metrics) | {"step": step},
                    storage_key=prefix,
                    adapter_sha256=sha256,
                    fine_tuned_model_checkpoint=f"{self.model_name}:ckpt-step-{step}",
                )
            )
            add_event(session, job.id, f"Checkpoint saved at step {step}")

    def stop_requested(self) -> str | None:
        if self.lease.lost.is_set():
            return "cancel"
        if self.preempted.is_set() or self.lease.pause_requested.is_set():
            return "preempt"
        return None

    # -- the job ---------------------------------------------------------------------------
    def execute(self) -> None:
        from ftaas_worker.launch import default_nproc, train_on_ranks
        from ftaas_worker.manifest import model_fingerprint
        from ftaas_worker.probes import RETENTION_WARNING_KL
        from ftaas_worker.recipe import train

        self.on_phase(f"Fine-tuning job started (attempt {self.lease.attempt})")
        model_path = self._model_path()
        self.phase = "Reading the training data"
        train_examples = self._examples("training")
        valid_examples = self._examples("validation") if self.files["validation"] else None
        hp = resolve(self.requested, len(train_examples))
        self._record_hyperparameters(hp)
        resume_from = self._fetch_resume_state()
        start_from = self._fetch_parent_adapter()
        fingerprint = model_fingerprint(model_path)
        answers_key = _base_answers_key(self.model, fingerprint)
        train_args: dict[str, Any] = {
            "model_path": model_path,
            "train_examples": train_examples,
            "valid_examples": valid_examples,
            "hp": hp,
            "seed": self.seed,
            "work_dir": self.work_dir / "train",
            "resume_from": resume_from,
            "base_answers": self._cached_base_answers(answers_key),
            "start_from": start_from,
        }
        # QLoRA's 4-bit base is never sharded: one process, whatever the GPUs (the API refuses
        # load_in_4bit where FTAAS_NPROC_PER_NODE asks for more).
        self.nproc = 1 if hp.load_in_4bit else self.settings.nproc_per_node or default_nproc()
        if self.nproc == 1:
            result = train(**train_args, hooks=self)
        else:
            self.on_phase(f"Training on {self.nproc} processes")
            result = train_on_ranks(self.nproc, self, **train_args)
        self._cache_base_answers(answers_key, result.base_answers)
        if result.retention_kl > RETENTION_WARNING_KL:
            self._event(
                f"The model moved far from its base on general prompts (retention KL "
                f"{result.retention_kl:.3f} > {RETENTION_WARNING_KL}): it may have forgotten "
                "some of what it knew; raise `replay` or lower the epochs or learning rate",
                level="warn",
            )
        self.on_phase("Uploading the adapter")
        self._finish(result, self._manifest(hp, result, fingerprint))

    def _model_path(self) -> str:
        """The catalogue's path for the job's model; a built-in one is made on first use."""
        from ftaas_worker.gguf import prepare_builtin

        model_path = self.settings.models.get(self.model)
        if model_path is None:
            raise JobFailed(
                "model_not_available",
                f"Model '{self.model}' is no longer in this deployment's catalogue.",
            )
        if prepare_builtin(self.model, Path(model_path)):
            self.on_phase(f"Prepared the built-in model {self.model} from its GGUF file")
        return model_path

    @survives_outages("reading the base model's cached answers")
    def _cached_base_answers(self, key: str) -> BaseAnswers | None:
        from ftaas_worker.probes import BaseAnswers

        try:
            with self.store.open(key) as stream:
                return BaseAnswers.from_json(stream.read().decode())
        except ObjectNotFound:
            return None

    @survives_outages("caching the base model's answers")
    def _cache_base_answers(self, key: str, answers: BaseAnswers) -> None:
        self.store.put_stream(key, [answers.to_json().encode()])

    def _manifest(
        self, hp: ResolvedHyperparameters, result: TrainResult, fingerprint: dict[str, Any]
    ) -> dict[str, Any]:
        """What reproduces the adapter (data digests, base model, seed, settings, libraries),
        and how far it moved from its base."""
        from ftaas_worker.distributed import Ranks
        from ftaas_worker.manifest import device_description, library_versions
        from ftaas_worker.precision import quantization_record
        from ftaas_worker.probes import RETENTION_WARNING_KL, general_prompts

        return {
            "job_id": self.job_id,
            "fine_tuned_model": self.model_name,
            "method": self.method,
            "base_model": {"name": self.model, **fingerprint},
            "parent": _lineage(self.parent),
            "datasets": self.dataset_digests,
            "seed": self.seed,
            "hyperparameters": hp.as_dict(),
            "libraries": library_versions(),
            "device": device_description(),
            "quantization": quantization_record(hp, Ranks().device),
            "training_processes": {
                "world_size": self.nproc,
                "backend": Ranks().backend,
                "sharding": result.sharding,
            },
            "trained_tokens": result.trained_tokens,
            "steps": result.steps,
            "metrics": result.metrics,
            "retention": {
                "kl": result.retention_kl,
                "warning_above": RETENTION_WARNING_KL,
                "prompts": len(general_prompts().retention),
                "replay": hp.replay,
            },
        }

    @survives_outages("storing the adapter")
    def _finish(self, result: TrainResult, manifest: dict[str, Any]) -> None:
        """Upload the adapter and the metrics file, then succeed with them in one transaction."""
        (result.adapter_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
        adapter_key = (
            f"adapters/{self.tenant_id}/{self.job_id}/attempt-{self.lease.attempt}/adapter.tar.gz"
        )
        sha256 = self._put_tar(adapter_key, result.adapter_dir, None)
        metrics = self._metrics_history()
        results = [
            self._store_result("step_metrics.csv", _metrics_csv(metrics)),
            self._store_result("samples.jsonl", _jsonl(result.samples)),
        ]
        with self.lease.guard() as (session, _):
            session.add_all(results)
            if speeds := [
                row["tokens_per_second"] for row in metrics if "tokens_per_second" in row
            ]:
                record_throughput(
                    session, self.model, manifest["device"], sum(speeds) / len(speeds)
                )
            lifecycle.succeed(
                session,
                self.job_id,
                self.lease.attempt,
                fine_tuned_model=self.model_name,
                trained_tokens=result.trained_tokens,
                result_files=[file.id for file in results],
                adapter_key=adapter_key,
                adapter_sha256=sha256,
                manifest=manifest,
            )
        self._drop_other_adapters(adapter_key)

    def _drop_other_adapters(self, kept: str) -> None:
        """Remove adapters an earlier attempt uploaded before it died, so one final copy remains."""
        for key in self.store.list(f"adapters/{self.tenant_id}/{self.job_id}"):
            if key != kept:
                self.store.delete_prefix(key)

    @survives_outages("reading the data")
    def _examples(self, which: str) -> list[Example]:
        file_id = self.files[which]
        with self.lease.guard() as (session, _):
            row = session.scalar(
                select(File).where(File.id == file_id, File.tenant_id == self.tenant_id)
            )
        if row is None:
            raise JobFailed(
                f"invalid_{which}_file", f"The {which} file {file_id} was deleted before training."
            )
        try:
            digest = hashlib.sha256()
            examples = list(
                iter_examples(_hashed(iter_stream(self.store.open(row.storage_key)), digest))
            )
        except DatasetFormatError as exc:
            raise JobFailed(f"invalid_{which}_file", f"The {which} file is invalid: {exc}") from exc
        self.dataset_digests[which] = {"file": file_id, "sha256": digest.hexdigest()}
        return examples

    @survives_outages("recording the hyperparameters")
    def _record_hyperparameters(self, hp: ResolvedHyperparameters) -> None:
        """Show the resolved values (what "auto" became) on the job, as OpenAI does."""
        with self.lease.guard() as (_, job):
            explained = job.hyperparameters.get("auto_resolved") or auto_choices(self.requested, hp)
            job.hyperparameters = hp.as_dict() | {"auto_resolved": explained}

    @survives_outages("fetching the adapter the job continues")
    def _fetch_parent_adapter(self) -> Path | None:
        """The continued model's adapter, checked against the sha256 recorded with it."""
        if self.parent is None:
            return None
        archive = self.work_dir / "parent.tar.gz"
        try:
            chunks = iter_stream(self.store.open(self.parent["adapter_key"]))
            with archive.open("wb") as out:
                digest = hashlib.sha256()
                for chunk in _hashed(chunks, digest):
                    out.write(chunk)
        except ObjectNotFound:
            raise JobFailed(
                "model_not_available",
                f"The adapter of {self.parent['fine_tuned_model']} is no longer stored.",
            ) from None
        if digest.hexdigest() != self.parent["adapter_sha256"]:
            raise JobFailed(
                "model_not_available",
                f"The adapter of {self.parent['fine_tuned_model']} does not match its sha256.",
            )
        target = self.work_dir / "parent"
        with tarfile.open(archive, mode="r:gz") as tar:
            tar.extractall(target, filter="data")
        archive.unlink()
        return target

    @survives_outages("fetching the newest checkpoint")
    def _fetch_resume_state(self) -> Path | None:
        if self.resume_key is None:
            return None
        target = self.work_dir / "resume"
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(
            fileobj=self.store.open(f"{self.resume_key}/state.tar.gz"), mode="r|gz"
        ) as tar:
            tar.extractall(target, filter="data")
        return target

    def _put_tar(self, key: str, directory: Path, names: tuple[str, ...] | None) -> str:
        """Pack ``directory`` (or just ``names`` in it) as a tar.gz object; returns its sha256."""
        archive = self.work_dir / f"{new_id('tar')}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for path in _files(directory):
                if names is None or path.name in names:
                    tar.add(path, arcname=path.relative_to(directory).as_posix())
        digest = hashlib.sha256()
        with archive.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        put_file(self.store, key, archive)
        archive.unlink()
        return digest.hexdigest()

    def _metrics_history(self) -> list[dict[str, Any]]:
        """Every metrics event of the job, oldest first, across all its attempts."""
        with self.lease.guard() as (session, _):
            return list(
                session.scalars(
                    select(JobEvent.data)
                    .where(JobEvent.job_id == self.job_id, JobEvent.type == "metrics")
                    .order_by(JobEvent.seq)
                )
            )

    def _store_result(self, filename: str, data: bytes) -> File:
        """A result file of the job, listed in its ``result_files`` as OpenAI lists them."""
        file_id = new_id("file")
        key = f"files/{self.tenant_id}/{file_id}"
        self.store.put_stream(key, [data])
        return File(
            id=file_id,
            tenant_id=self.tenant_id,
            filename=filename,
            purpose="fine-tune-results",
            bytes=len(data),
            status="processed",
            storage_key=key,
        )


def _metrics_csv(metrics: list[dict[str, Any]]) -> bytes:
    """The per-step metrics, like OpenAI's ``step_metrics.csv``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(metrics)
    return buffer.getvalue().encode()


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in rows)


def _lineage(parent: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a continued job started from, for its manifest: the parent job, the checkpoint (if
    it was one) and the adapter's sha256."""
    if parent is None:
        return None
    return {
        name: parent[name]
        for name in ("job_id", "checkpoint_id", "fine_tuned_model", "adapter_sha256")
    }


def _base_answers_key(model: str, fingerprint: dict[str, Any]) -> str:
    """Where a base model's answers to the general prompts are cached: per model revision."""
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    return f"cache/base-answers/{model}/{digest}.json"


def _hashed(chunks: Iterator[bytes], digest: Any) -> Iterator[bytes]:
    for chunk in chunks:
        digest.update(chunk)
        yield chunk


def _files(directory: Path) -> Iterator[Path]:
    return (p for p in sorted(directory.rglob("*")) if p.is_file())

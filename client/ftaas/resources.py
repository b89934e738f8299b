"""The resource tree, mirroring the URLs as openai-python does: ``files``, ``fine_tuning.jobs``
(with ``.events`` and ``.checkpoints``), ``models`` and ``webhooks`` (with ``.deliveries``).

Each resource is written once for both clients. A method describes its work as an operation (a
generator of ``Call``, ``Sleep`` and ``Download`` effects that returns the result) or, for a
list, as a ``Listing``; ``Client``'s ``SyncHTTP`` carries it out blocking and ``AsyncClient``'s
``AsyncHTTP`` awaiting. The decorators ``method``, ``paged`` and ``streamed`` say which, and
give each method its type on either client.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import functools
import os
import time
import types
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any, Concatenate, Generic, Literal, ParamSpec, Self, TypeVar, cast, overload
from urllib.parse import quote

from pydantic import BaseModel
from tqdm import tqdm

from ftaas._http import (
    AsyncHTTP,
    Call,
    Download,
    Emit,
    FileBody,
    Gather,
    Listing,
    Op,
    Sleep,
    Stream,
    SyncHTTP,
)
from ftaas.errors import FtaasError, WaitTimeoutError
from ftaas.pagination import AsyncPage, SyncPage
from ftaas.types import (
    Checkpoint,
    FileDeleted,
    FileObject,
    FileReport,
    FineTuningJob,
    JobEvent,
    Manifest,
    Model,
    Page,
    Sample,
    Upload,
    UploadPart,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEndpointDeleted,
)

FileSource = str | os.PathLike[str] | bytes
JOBS = "/v1/fine_tuning/jobs"
EVENTS_PAGE = 1000  # the API's maximum: a long job's history in few requests
CHECKPOINTS_PAGE = 100  # the API's maximum
METRICS_WINDOW = 50  # newest events searched for the latest metrics when showing progress
WEBHOOKS = "/v1/webhooks"
SAMPLES_FILE = "samples.jsonl"
UPLOADS = "/v1/uploads"
PART_BYTES = 64 * 1024 * 1024
"""OpenAI's largest Upload part (what its SDK sends). A file larger than one part goes up
through /v1/uploads in parts; one that fits goes in one POST /v1/files."""
PARALLEL_PARTS = 4
JSONL = "application/jsonl"

H = TypeVar("H", bound=SyncHTTP | AsyncHTTP)  # the executor: the client a resource belongs to
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
P = ParamSpec("P")
S = TypeVar("S")  # what a method returns on Client
A = TypeVar("A")  # what it returns on AsyncClient


class Resource(Generic[H]):
    """A node of the tree; its methods run on ``http``, the client's executor."""

    def __init__(self, http: H) -> None:
        self._http: H = http


class _Verb(Generic[P, S, A]):
    """A resource method written once: ``describe`` says what to do, and the executor's method
    named ``execute`` does it, which makes it blocking on ``Client`` and awaitable (or async
    iterable) on ``AsyncClient``."""

    def __init__(self, describe: Callable[..., Any], execute: str) -> None:
        def run(resource: Resource[Any], /, *args: Any, **kwargs: Any) -> Any:
            return getattr(resource._http, execute)(describe(resource, *args, **kwargs))

        self._run = functools.update_wrapper(run, describe)
        functools.update_wrapper(cast(Any, self), describe)  # help() shows describe's doc

    @overload
    def __get__(self, resource: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(
        self, resource: Resource[SyncHTTP], owner: type[Any] | None = None
    ) -> Callable[P, S]: ...
    @overload
    def __get__(
        self, resource: Resource[AsyncHTTP], owner: type[Any] | None = None
    ) -> Callable[P, A]: ...
    def __get__(self, resource: Resource[Any] | None, owner: type[Any] | None = None) -> Any:
        return self if resource is None else types.MethodType(self._run, resource)


def method(
    describe: Callable[Concatenate[Any, P], Op[T]],
) -> _Verb[P, T, Coroutine[Any, Any, T]]:
    """A method that carries out an operation and returns its result."""
    return _Verb(describe, "run")


def paged(
    describe: Callable[Concatenate[Any, P], Listing[M]],
) -> _Verb[P, SyncPage[M], Coroutine[Any, Any, AsyncPage[M]]]:
    """A list method: it returns the first page, which pages on when iterated."""
    return _Verb(describe, "page")


def streamed(
    describe: Callable[Concatenate[Any, P], Stream[T]],
) -> _Verb[P, Iterator[T], AsyncIterator[T]]:
    """A method whose items arrive over time: an iterator (``async for`` on ``AsyncClient``)."""
    return _Verb(describe, "iterate")


# -- requests, described once ----------------------------------------------------------------


def _id(value: str) -> str:
    """An id as one URL path segment, whatever it contains."""
    return quote(value, safe="")


def _fetch(call: Call, model: type[M]) -> Op[M]:
    """One request, its answer parsed as ``model``."""
    response = yield call
    return model.model_validate_json(response.content)


def _job(job_id: str, action: str = "") -> Op[FineTuningJob]:
    """The job, read (no ``action``) or after a ``cancel``, ``pause`` or ``resume``."""
    path = f"{JOBS}/{_id(job_id)}"
    return _fetch(Call("POST", f"{path}/{action}") if action else Call("GET", path), FineTuningJob)


def _file_body(source: FileSource, filename: str | None) -> FileBody:
    if isinstance(source, bytes):
        return FileBody(filename or "upload.jsonl", source)
    path = Path(source)
    return FileBody(filename or path.name, path)


def _size(body: FileBody) -> int:
    return len(body.source) if isinstance(body.source, bytes) else body.source.stat().st_size


def _in_parts(body: FileBody, purpose: str, part_bytes: int, bar: tqdm) -> Op[FileObject]:
    """Through the Uploads API: the parts numbered by their place, so that sending them
    ``PARALLEL_PARTS`` at a time needs no reordering and a failed one alone is sent again. An
    upload that fails is cancelled, so it leaves nothing on the server."""
    size = _size(body)
    created = {"bytes": size, "filename": body.filename, "mime_type": JSONL, "purpose": purpose}
    upload = yield from _fetch(Call("POST", UPLOADS, json=created), Upload)
    path = f"{UPLOADS}/{_id(upload.id)}"
    calls = tuple(
        Call(
            "POST",
            f"{path}/parts",
            data={"part_number": str(number)},
            upload=dataclasses.replace(
                body, offset=offset, length=min(part_bytes, size - offset), field="data"
            ),
            idempotent=True,
        )
        for number, offset in enumerate(range(0, size, part_bytes), 1)
    )
    try:
        answers = yield Gather(calls, PARALLEL_PARTS, lambda call: bar.update(call.upload.length))
        part_ids = [UploadPart.model_validate_json(answer.content).id for answer in answers]
        done = yield from _fetch(
            Call("POST", f"{path}/complete", json={"part_ids": part_ids}), Upload
        )
    except Exception:
        with contextlib.suppress(FtaasError):  # refused if the server cancelled it already
            yield Call("POST", f"{path}/cancel")
        raise
    if done.file is None:
        raise FtaasError(f"Upload {upload.id} completed without a file.")
    return done.file


def _report_call(
    file_id: str, model: str, max_seq_length: int, validation_file: str | None
) -> Call:
    body: dict[str, Any] = {"model": model, "max_seq_length": max_seq_length}
    if validation_file is not None:
        body["validation_file"] = validation_file
    return Call("POST", f"/v1/files/{_id(file_id)}/report", json=body)


def _create_job_call(
    model: str,
    training_file: str,
    validation_file: str | None,
    hyperparameters: Mapping[str, Any] | None,
    suffix: str | None,
    seed: int | None,
    metadata: Mapping[str, str] | None,
    idempotency_key: str | None,
    method: Literal["supervised", "dpo"],
) -> Call:
    body: dict[str, Any] = {"model": model, "training_file": training_file}
    optional = {
        "validation_file": validation_file,
        "suffix": suffix,
        "seed": seed,
        "metadata": dict(metadata) if metadata is not None else None,
    }
    body |= {k: v for k, v in optional.items() if v is not None}
    if hyperparameters is not None or method != "supervised":
        body["method"] = {"type": method, method: {"hyperparameters": dict(hyperparameters or {})}}
    # The key makes the POST safe to retry: the server answers a replay with the same job.
    key = idempotency_key or str(uuid.uuid4())
    return Call("POST", JOBS, json=body, headers={"Idempotency-Key": key})


def _events_call(job_id: str, limit: int, after: str | None = None) -> Call:
    params = {"limit": limit, "after": after}
    return Call("GET", f"{JOBS}/{_id(job_id)}/events", params=params)


def _events_since(job_id: str, seen: str | None) -> Op[builtins.list[JobEvent]]:
    """The job's events newer than the event ``seen`` (all without one), newest first."""
    call = _events_call(job_id, EVENTS_PAGE)
    fresh: builtins.list[JobEvent] = []
    while True:
        page = yield from _fetch(call, Page[JobEvent])
        for event in page.data:
            if event.id == seen:
                return fresh
            fresh.append(event)
        if not page.has_more or page.last_id is None:
            return fresh
        call = call.after(page.last_id)


def _adapter_call(job_id: str, checkpoint: str | None) -> Call:
    path = f"{JOBS}/{_id(job_id)}"
    if checkpoint is not None:
        path += f"/checkpoints/{_id(checkpoint)}"
    return Call("GET", f"{path}/adapter")


def _create_webhook_call(url: str, events: Iterable[str] | None) -> Call:
    body: dict[str, Any] = {"url": url}
    if events is not None:
        body["events"] = builtins.list(events)
    return Call("POST", WEBHOOKS, json=body)


def _bar(body: FileBody, enabled: bool) -> tqdm:
    return tqdm(
        total=_size(body), desc=body.filename, unit="B", unit_scale=True, disable=not enabled
    )


class _Deadline:
    def __init__(self, timeout: float | None, poll_interval: float) -> None:
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.end = None if timeout is None else time.monotonic() + timeout

    def pause(self, job: FineTuningJob) -> float:
        """Seconds until the next poll; raises ``WaitTimeoutError`` once the time is up."""
        if self.end is None:
            return self.poll_interval
        left = self.end - time.monotonic()
        if left <= 0:
            raise WaitTimeoutError(
                f"Job {job.id} is still {job.status} after {self.timeout:g} s.", job
            )
        return min(self.poll_interval, left)


class _JobProgress:
    """A tqdm bar of training steps fed by the newest ``metrics`` event: step out of
    total_steps, the training loss in the postfix, and tqdm's own ETA."""

    def __init__(self, job_id: str, enabled: bool) -> None:
        self.bar = tqdm(desc=job_id, unit="step", disable=not enabled)

    def update(self, job: FineTuningJob, newest: Page[JobEvent]) -> None:
        data = next((e.data for e in newest.data if e.type == "metrics" and e.data), {})
        total, step, loss = data.get("total_steps"), data.get("step"), data.get("train_loss")
        if isinstance(total, int) and total != self.bar.total:
            self.bar.total = total
        if isinstance(step, int) and step > self.bar.n:
            self.bar.update(step - self.bar.n)
        postfix = {"status": job.status}
        if isinstance(loss, int | float):
            postfix["loss"] = f"{loss:.4f}"
        self.bar.set_postfix(postfix)

    def close(self) -> None:
        self.bar.close()


# -- the tree --------------------------------------------------------------------------------


class Files(Resource[H]):
    """``/v1/files``: the datasets jobs train on."""

    @method
    def upload(
        self,
        source: FileSource,
        purpose: str = "fine-tune",
        filename: str | None = None,
        *,
        part_bytes: int = PART_BYTES,
        progress: bool = False,
    ) -> Op[FileObject]:
        """Upload a JSONL dataset from a path (streamed from disk) or from bytes. One larger
        than ``part_bytes`` (64 MiB, the server's largest part) goes up through /v1/uploads in
        parts of that size, sent concurrently, a failed part alone retried; ``progress``
        shows one bar for the whole file."""
        body = _file_body(source, filename)
        with closing(_bar(body, progress)) as bar:
            if _size(body) > part_bytes:
                return (yield from _in_parts(body, purpose, part_bytes, bar))
            call = Call("POST", "/v1/files", data={"purpose": purpose}, upload=body)
            uploaded = yield from _fetch(call, FileObject)
            bar.update(uploaded.bytes)
            return uploaded

    @paged
    def list(
        self, purpose: str | None = None, limit: int | None = None, after: str | None = None
    ) -> Listing[FileObject]:
        """The tenant's files, newest first."""
        params = {"purpose": purpose, "limit": limit, "after": after}
        return Listing(Call("GET", "/v1/files", params=params), FileObject)

    @method
    def get(self, file_id: str) -> Op[FileObject]:
        return _fetch(Call("GET", f"/v1/files/{_id(file_id)}"), FileObject)

    @method
    def content(self, file_id: str) -> Op[bytes]:
        response = yield Call("GET", f"/v1/files/{_id(file_id)}/content")
        return response.content

    @method
    def delete(self, file_id: str) -> Op[FileDeleted]:
        return _fetch(Call("DELETE", f"/v1/files/{_id(file_id)}"), FileDeleted)

    @method
    def report(
        self,
        file_id: str,
        model: str,
        max_seq_length: int = 2048,
        validation_file: str | None = None,
    ) -> Op[FileReport]:
        """A dry run with ``model``'s tokenizer: errors, token counts, truncation, duplicates,
        validation overlap and a preview, before a job spends GPU time on the file."""
        call = _report_call(file_id, model, max_seq_length, validation_file)
        return _fetch(call, FileReport)


class JobEvents(Resource[H]):
    """``/v1/fine_tuning/jobs/{id}/events``: a job's log."""

    @paged
    def list(
        self, job_id: str, limit: int = EVENTS_PAGE, after: str | None = None
    ) -> Listing[JobEvent]:
        """The job's events, newest first as the API gives them."""
        return Listing(_events_call(job_id, limit, after), JobEvent)

    @streamed
    def stream(self, job_id: str, poll_interval: float = 1.0) -> Stream[JobEvent]:
        """Events oldest first as they appear (the history first), until the job has finished."""
        seen: str | None = None
        while True:
            job = yield from _job(job_id)  # read before the events, so none is missed at the end
            fresh = yield from _events_since(job_id, seen)
            for event in reversed(fresh):
                yield Emit(event)
            seen = fresh[0].id if fresh else seen
            if job.done:
                return
            yield Sleep(poll_interval)


class Checkpoints(Resource[H]):
    """``/v1/fine_tuning/jobs/{id}/checkpoints``: the adapters a job saved along the way."""

    @paged
    def list(
        self, job_id: str, limit: int = CHECKPOINTS_PAGE, after: str | None = None
    ) -> Listing[Checkpoint]:
        """The job's checkpoints, newest first."""
        params = {"limit": limit, "after": after}
        return Listing(Call("GET", f"{JOBS}/{_id(job_id)}/checkpoints", params=params), Checkpoint)


class Jobs(Resource[H]):
    """``/v1/fine_tuning/jobs``, with its sub-collections ``events`` and ``checkpoints``."""

    def __init__(self, http: H) -> None:
        super().__init__(http)
        self.events = JobEvents(http)
        self.checkpoints = Checkpoints(http)

    @method
    def create(
        self,
        model: str,
        training_file: str,
        validation_file: str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        suffix: str | None = None,
        seed: int | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        method: Literal["supervised", "dpo"] = "supervised",
    ) -> Op[FineTuningJob]:
        """Create a job; retried safely under ``idempotency_key`` (a fresh uuid4 by default).

        ``method``: supervised fine-tuning, or DPO on a preference file (``hyperparameters``
        may then hold ``beta``). ``model`` may be a fine-tuned model or checkpoint of yours,
        which the job trains further.
        """
        call = _create_job_call(
            model,
            training_file,
            validation_file,
            hyperparameters,
            suffix,
            seed,
            metadata,
            idempotency_key,
            method,
        )
        return _fetch(call, FineTuningJob)

    @paged
    def list(self, limit: int = 20, after: str | None = None) -> Listing[FineTuningJob]:
        """The tenant's jobs, newest first, ``limit`` a page."""
        return Listing(Call("GET", JOBS, params={"limit": limit, "after": after}), FineTuningJob)

    @method
    def get(self, job_id: str) -> Op[FineTuningJob]:
        return _job(job_id)

    @method
    def cancel(self, job_id: str) -> Op[FineTuningJob]:
        return _job(job_id, "cancel")

    @method
    def pause(self, job_id: str) -> Op[FineTuningJob]:
        """Stop training at the next checkpoint; ``resume`` carries on from it."""
        return _job(job_id, "pause")

    @method
    def resume(self, job_id: str) -> Op[FineTuningJob]:
        return _job(job_id, "resume")

    @method
    def manifest(self, job_id: str) -> Op[Manifest]:
        """What a finished job trained on and with: enough to reproduce its adapter."""
        return _fetch(Call("GET", f"{JOBS}/{_id(job_id)}/manifest"), Manifest)

    @method
    def samples(self, job_id: str) -> Op[builtins.list[Sample]]:
        """Base vs fine-tuned answers to the job's prompts, from its ``samples.jsonl`` result
        file (there once the job has succeeded; an empty list before)."""
        job = yield from _job(job_id)
        for file_id in job.result_files:
            found = yield from _fetch(Call("GET", f"/v1/files/{_id(file_id)}"), FileObject)
            if found.filename == SAMPLES_FILE:
                response = yield Call("GET", f"/v1/files/{_id(file_id)}/content")
                return [Sample.model_validate_json(line) for line in response.content.splitlines()]
        return []

    @method
    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        progress: bool = False,
    ) -> Op[FineTuningJob]:
        """Poll until the job succeeded, failed or was cancelled, and return it."""
        deadline = _Deadline(timeout, poll_interval)
        newest = _events_call(job_id, METRICS_WINDOW)
        with closing(_JobProgress(job_id, progress)) as bar:
            while True:
                job = yield from _job(job_id)
                if progress:
                    bar.update(job, (yield from _fetch(newest, Page[JobEvent])))
                if job.done:
                    return job
                yield Sleep(deadline.pause(job))

    @method
    def download_adapter(
        self, job_id: str, dest: str | os.PathLike[str], checkpoint: str | None = None
    ) -> Op[Path]:
        """Download the job's (or a checkpoint's) PEFT adapter, verified by sha256, unpacked
        into ``dest``; returns the adapter directory."""
        return (yield Download(_adapter_call(job_id, checkpoint), Path(dest)))


class FineTuning(Resource[H]):
    """``/v1/fine_tuning``: only ``jobs``, as in OpenAI's API."""

    def __init__(self, http: H) -> None:
        super().__init__(http)
        self.jobs = Jobs(http)


class Models(Resource[H]):
    """``/v1/models``: what a job can start from and what jobs made."""

    @paged
    def list(self) -> Listing[Model]:
        """The deployment's base models and this tenant's fine-tuned models."""
        return Listing(Call("GET", "/v1/models"), Model)


class Deliveries(Resource[H]):
    """``/v1/webhooks/{id}/deliveries``: what was sent to an endpoint, and how it went."""

    @paged
    def list(
        self, endpoint_id: str, limit: int = 20, after: str | None = None
    ) -> Listing[WebhookDelivery]:
        """The endpoint's deliveries, newest first."""
        path = f"{WEBHOOKS}/{_id(endpoint_id)}/deliveries"
        return Listing(Call("GET", path, params={"limit": limit, "after": after}), WebhookDelivery)


class Webhooks(Resource[H]):
    """``/v1/webhooks``: where job events are POSTed, with each endpoint's ``deliveries``."""

    def __init__(self, http: H) -> None:
        super().__init__(http)
        self.deliveries = Deliveries(http)

    @method
    def create(self, url: str, events: Iterable[str] | None = None) -> Op[WebhookEndpoint]:
        """Register ``url`` for job events (all three by default); keep the returned ``secret``,
        it is not shown again."""
        return _fetch(_create_webhook_call(url, events), WebhookEndpoint)

    @paged
    def list(self, limit: int = 20, after: str | None = None) -> Listing[WebhookEndpoint]:
        return Listing(
            Call("GET", WEBHOOKS, params={"limit": limit, "after": after}), WebhookEndpoint
        )

    @method
    def delete(self, endpoint_id: str) -> Op[WebhookEndpointDeleted]:
        return _fetch(Call("DELETE", f"{WEBHOOKS}/{_id(endpoint_id)}"), WebhookEndpointDeleted)

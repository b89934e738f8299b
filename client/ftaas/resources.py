"""The resource tree, mirroring the URLs: ``files``, ``jobs``, ``models``, ``webhooks``.

Each request is described once (the ``_*_call`` functions and the helpers below); the sync and
async resources are thin twins that send it with their client and parse the answer.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import aclosing, closing
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tqdm import tqdm

from ftaas import _http
from ftaas._download import AdapterDownload
from ftaas._http import AsyncHTTP, Call, SyncHTTP, Upload
from ftaas.errors import WaitTimeoutError
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
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEndpointDeleted,
)

FileSource = str | os.PathLike[str] | bytes
JOBS = "/v1/fine_tuning/jobs"
EVENTS_PAGE = 1000  # the API's maximum: a long job's history in few requests
CHECKPOINTS_PAGE = 100
METRICS_WINDOW = 50  # newest events searched for the latest metrics when showing progress
WEBHOOKS = "/v1/webhooks"


def _id(value: str) -> str:
    """An id as one URL path segment, whatever it contains."""
    return quote(value, safe="")


def _upload_call(source: FileSource, purpose: str, filename: str | None) -> Call:
    if isinstance(source, bytes):
        upload = Upload(filename or "upload.jsonl", source)
    else:
        path = Path(source)
        upload = Upload(filename or path.name, path)
    return Call("POST", "/v1/files", data={"purpose": purpose}, upload=upload)


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
) -> Call:
    body: dict[str, Any] = {"model": model, "training_file": training_file}
    optional = {
        "validation_file": validation_file,
        "suffix": suffix,
        "seed": seed,
        "metadata": dict(metadata) if metadata is not None else None,
    }
    body |= {k: v for k, v in optional.items() if v is not None}
    if hyperparameters is not None:
        body["method"] = {
            "type": "supervised",
            "supervised": {"hyperparameters": dict(hyperparameters)},
        }
    # The key makes the POST safe to retry: the server answers a replay with the same job.
    key = idempotency_key or str(uuid.uuid4())
    return Call("POST", JOBS, json=body, headers={"Idempotency-Key": key})


def _events_call(job_id: str, limit: int) -> Call:
    return Call("GET", f"{JOBS}/{_id(job_id)}/events", params={"limit": limit})


def _create_webhook_call(url: str, events: Iterable[str] | None) -> Call:
    body: dict[str, Any] = {"url": url}
    if events is not None:
        body["events"] = builtins.list(events)
    return Call("POST", WEBHOOKS, json=body)


def _deliveries_call(endpoint_id: str, limit: int) -> Call:
    return Call("GET", f"{WEBHOOKS}/{_id(endpoint_id)}/deliveries", params={"limit": limit})


def _adapter_call(job_id: str, checkpoint: str | None) -> Call:
    path = f"{JOBS}/{_id(job_id)}"
    if checkpoint is not None:
        path += f"/checkpoints/{_id(checkpoint)}"
    return Call("GET", f"{path}/adapter")


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


# -- sync ------------------------------------------------------------------------------------


class Files:
    def __init__(self, http: SyncHTTP) -> None:
        self._http = http

    def upload(
        self, source: FileSource, purpose: str = "fine-tune", filename: str | None = None
    ) -> FileObject:
        """Upload a JSONL dataset from a path (streamed from disk) or from bytes."""
        return self._http.request(_upload_call(source, purpose, filename), FileObject)

    def list(self, purpose: str | None = None) -> builtins.list[FileObject]:
        call = Call("GET", "/v1/files", params={"purpose": purpose})
        return builtins.list(self._http.iterate(call, FileObject))

    def get(self, file_id: str) -> FileObject:
        return self._http.request(Call("GET", f"/v1/files/{_id(file_id)}"), FileObject)

    def content(self, file_id: str) -> bytes:
        return self._http.send(Call("GET", f"/v1/files/{_id(file_id)}/content")).content

    def delete(self, file_id: str) -> FileDeleted:
        return self._http.request(Call("DELETE", f"/v1/files/{_id(file_id)}"), FileDeleted)

    def report(
        self,
        file_id: str,
        model: str,
        max_seq_length: int = 2048,
        validation_file: str | None = None,
    ) -> FileReport:
        """A dry run with ``model``'s tokenizer: errors, token counts, truncation, duplicates,
        validation overlap and a preview, before a job spends GPU time on the file."""
        call = _report_call(file_id, model, max_seq_length, validation_file)
        return self._http.request(call, FileReport)


class Jobs:
    def __init__(self, http: SyncHTTP) -> None:
        self._http = http

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
    ) -> FineTuningJob:
        """Create a job; retried safely under ``idempotency_key`` (a fresh uuid4 by default)."""
        call = _create_job_call(
            model,
            training_file,
            validation_file,
            hyperparameters,
            suffix,
            seed,
            metadata,
            idempotency_key,
        )
        return self._http.request(call, FineTuningJob)

    def get(self, job_id: str) -> FineTuningJob:
        return self._http.request(Call("GET", f"{JOBS}/{_id(job_id)}"), FineTuningJob)

    def list(self, limit: int = 20) -> Iterator[FineTuningJob]:
        """Every job, newest first, fetched ``limit`` at a time."""
        return self._http.iterate(Call("GET", JOBS, params={"limit": limit}), FineTuningJob)

    def cancel(self, job_id: str) -> FineTuningJob:
        return self._http.request(Call("POST", f"{JOBS}/{_id(job_id)}/cancel"), FineTuningJob)

    def pause(self, job_id: str) -> FineTuningJob:
        return self._http.request(Call("POST", f"{JOBS}/{_id(job_id)}/pause"), FineTuningJob)

    def resume(self, job_id: str) -> FineTuningJob:
        return self._http.request(Call("POST", f"{JOBS}/{_id(job_id)}/resume"), FineTuningJob)

    def manifest(self, job_id: str) -> Manifest:
        return self._http.request(Call("GET", f"{JOBS}/{_id(job_id)}/manifest"), Manifest)

    def events(self, job_id: str) -> builtins.list[JobEvent]:
        """The job's whole event log, newest first as the API gives it."""
        return builtins.list(self._http.iterate(_events_call(job_id, EVENTS_PAGE), JobEvent))

    def stream_events(self, job_id: str, poll_interval: float = 1.0) -> Iterator[JobEvent]:
        """Events oldest first as they appear (the history first), until the job has finished."""
        last_seen: str | None = None
        while True:
            done = self.get(job_id).done  # read before the events, so none is missed at the end
            fresh: builtins.list[JobEvent] = []
            for event in self._http.iterate(_events_call(job_id, EVENTS_PAGE), JobEvent):
                if event.id == last_seen:
                    break
                fresh.append(event)
            yield from reversed(fresh)
            last_seen = fresh[0].id if fresh else last_seen
            if done:
                return
            _http.sleep(poll_interval)

    def checkpoints(self, job_id: str) -> builtins.list[Checkpoint]:
        call = Call("GET", f"{JOBS}/{_id(job_id)}/checkpoints", params={"limit": CHECKPOINTS_PAGE})
        return builtins.list(self._http.iterate(call, Checkpoint))

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        progress: bool = False,
    ) -> FineTuningJob:
        """Poll until the job succeeded, failed or was cancelled, and return it."""
        deadline = _Deadline(timeout, poll_interval)
        newest = _events_call(job_id, METRICS_WINDOW)
        with closing(_JobProgress(job_id, progress)) as bar:
            while True:
                job = self.get(job_id)
                if progress:
                    bar.update(job, self._http.request(newest, Page[JobEvent]))
                if job.done:
                    return job
                _http.sleep(deadline.pause(job))

    def download_adapter(
        self, job_id: str, dest: str | os.PathLike[str], checkpoint: str | None = None
    ) -> Path:
        """Download the job's (or a checkpoint's) PEFT adapter, verified by sha256, unpacked
        into ``dest``; returns the adapter directory."""
        with (
            self._http.stream(_adapter_call(job_id, checkpoint)) as response,
            AdapterDownload(Path(dest), response) as download,
        ):
            for chunk in response.iter_bytes():
                download.write(chunk)
        return download.unpack()


class Models:
    def __init__(self, http: SyncHTTP) -> None:
        self._http = http

    def list(self) -> builtins.list[Model]:
        """The deployment's base models and this tenant's fine-tuned models."""
        return builtins.list(self._http.iterate(Call("GET", "/v1/models"), Model))


class Webhooks:
    def __init__(self, http: SyncHTTP) -> None:
        self._http = http

    def create(self, url: str, events: Iterable[str] | None = None) -> WebhookEndpoint:
        """Register ``url`` for job events (all three by default); keep the returned ``secret``,
        it is not shown again."""
        return self._http.request(_create_webhook_call(url, events), WebhookEndpoint)

    def list(self) -> builtins.list[WebhookEndpoint]:
        return builtins.list(self._http.iterate(Call("GET", WEBHOOKS), WebhookEndpoint))

    def delete(self, endpoint_id: str) -> WebhookEndpointDeleted:
        call = Call("DELETE", f"{WEBHOOKS}/{_id(endpoint_id)}")
        return self._http.request(call, WebhookEndpointDeleted)

    def deliveries(self, endpoint_id: str, limit: int = 20) -> Iterator[WebhookDelivery]:
        """The endpoint's delivery log, newest first, fetched ``limit`` at a time."""
        return self._http.iterate(_deliveries_call(endpoint_id, limit), WebhookDelivery)


# -- async -----------------------------------------------------------------------------------


class AsyncFiles:
    def __init__(self, http: AsyncHTTP) -> None:
        self._http = http

    async def upload(
        self, source: FileSource, purpose: str = "fine-tune", filename: str | None = None
    ) -> FileObject:
        """Upload a JSONL dataset from a path (streamed from disk) or from bytes."""
        return await self._http.request(_upload_call(source, purpose, filename), FileObject)

    async def list(self, purpose: str | None = None) -> builtins.list[FileObject]:
        call = Call("GET", "/v1/files", params={"purpose": purpose})
        return [f async for f in self._http.iterate(call, FileObject)]

    async def get(self, file_id: str) -> FileObject:
        return await self._http.request(Call("GET", f"/v1/files/{_id(file_id)}"), FileObject)

    async def content(self, file_id: str) -> bytes:
        return (await self._http.send(Call("GET", f"/v1/files/{_id(file_id)}/content"))).content

    async def delete(self, file_id: str) -> FileDeleted:
        return await self._http.request(Call("DELETE", f"/v1/files/{_id(file_id)}"), FileDeleted)

    async def report(
        self,
        file_id: str,
        model: str,
        max_seq_length: int = 2048,
        validation_file: str | None = None,
    ) -> FileReport:
        """A dry run with ``model``'s tokenizer: errors, token counts, truncation, duplicates,
        validation overlap and a preview, before a job spends GPU time on the file."""
        call = _report_call(file_id, model, max_seq_length, validation_file)
        return await self._http.request(call, FileReport)


class AsyncJobs:
    def __init__(self, http: AsyncHTTP) -> None:
        self._http = http

    async def create(
        self,
        model: str,
        training_file: str,
        validation_file: str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        suffix: str | None = None,
        seed: int | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> FineTuningJob:
        """Create a job; retried safely under ``idempotency_key`` (a fresh uuid4 by default)."""
        call = _create_job_call(
            model,
            training_file,
            validation_file,
            hyperparameters,
            suffix,
            seed,
            metadata,
            idempotency_key,
        )
        return await self._http.request(call, FineTuningJob)

    async def get(self, job_id: str) -> FineTuningJob:
        return await self._http.request(Call("GET", f"{JOBS}/{_id(job_id)}"), FineTuningJob)

    def list(self, limit: int = 20) -> AsyncIterator[FineTuningJob]:
        """Every job, newest first, fetched ``limit`` at a time (use with ``async for``)."""
        return self._http.iterate(Call("GET", JOBS, params={"limit": limit}), FineTuningJob)

    async def cancel(self, job_id: str) -> FineTuningJob:
        call = Call("POST", f"{JOBS}/{_id(job_id)}/cancel")
        return await self._http.request(call, FineTuningJob)

    async def pause(self, job_id: str) -> FineTuningJob:
        call = Call("POST", f"{JOBS}/{_id(job_id)}/pause")
        return await self._http.request(call, FineTuningJob)

    async def resume(self, job_id: str) -> FineTuningJob:
        call = Call("POST", f"{JOBS}/{_id(job_id)}/resume")
        return await self._http.request(call, FineTuningJob)

    async def manifest(self, job_id: str) -> Manifest:
        return await self._http.request(Call("GET", f"{JOBS}/{_id(job_id)}/manifest"), Manifest)

    async def events(self, job_id: str) -> builtins.list[JobEvent]:
        """The job's whole event log, newest first as the API gives it."""
        return [e async for e in self._http.iterate(_events_call(job_id, EVENTS_PAGE), JobEvent)]

    async def stream_events(
        self, job_id: str, poll_interval: float = 1.0
    ) -> AsyncIterator[JobEvent]:
        """Events oldest first as they appear (the history first), until the job has finished."""
        last_seen: str | None = None
        while True:
            done = (await self.get(job_id)).done  # read before the events: none missed at the end
            fresh: builtins.list[JobEvent] = []
            pages = self._http.iterate(_events_call(job_id, EVENTS_PAGE), JobEvent)
            async with aclosing(pages):
                async for event in pages:
                    if event.id == last_seen:
                        break
                    fresh.append(event)
            for event in reversed(fresh):
                yield event
            last_seen = fresh[0].id if fresh else last_seen
            if done:
                return
            await _http.async_sleep(poll_interval)

    async def checkpoints(self, job_id: str) -> builtins.list[Checkpoint]:
        call = Call("GET", f"{JOBS}/{_id(job_id)}/checkpoints", params={"limit": CHECKPOINTS_PAGE})
        return [c async for c in self._http.iterate(call, Checkpoint)]

    async def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        progress: bool = False,
    ) -> FineTuningJob:
        """Poll until the job succeeded, failed or was cancelled, and return it."""
        deadline = _Deadline(timeout, poll_interval)
        newest = _events_call(job_id, METRICS_WINDOW)
        with closing(_JobProgress(job_id, progress)) as bar:
            while True:
                job = await self.get(job_id)
                if progress:
                    bar.update(job, await self._http.request(newest, Page[JobEvent]))
                if job.done:
                    return job
                await _http.async_sleep(deadline.pause(job))

    async def download_adapter(
        self, job_id: str, dest: str | os.PathLike[str], checkpoint: str | None = None
    ) -> Path:
        """Download the job's (or a checkpoint's) PEFT adapter, verified by sha256, unpacked
        into ``dest``; returns the adapter directory."""
        async with self._http.stream(_adapter_call(job_id, checkpoint)) as response:
            with AdapterDownload(Path(dest), response) as download:
                async for chunk in response.aiter_bytes():
                    download.write(chunk)
        return await asyncio.to_thread(download.unpack)


class AsyncModels:
    def __init__(self, http: AsyncHTTP) -> None:
        self._http = http

    async def list(self) -> builtins.list[Model]:
        """The deployment's base models and this tenant's fine-tuned models."""
        return [m async for m in self._http.iterate(Call("GET", "/v1/models"), Model)]


class AsyncWebhooks:
    def __init__(self, http: AsyncHTTP) -> None:
        self._http = http

    async def create(self, url: str, events: Iterable[str] | None = None) -> WebhookEndpoint:
        """Register ``url`` for job events (all three by default); keep the returned ``secret``,
        it is not shown again."""
        return await self._http.request(_create_webhook_call(url, events), WebhookEndpoint)

    async def list(self) -> builtins.list[WebhookEndpoint]:
        return [w async for w in self._http.iterate(Call("GET", WEBHOOKS), WebhookEndpoint)]

    async def delete(self, endpoint_id: str) -> WebhookEndpointDeleted:
        call = Call("DELETE", f"{WEBHOOKS}/{_id(endpoint_id)}")
        return await self._http.request(call, WebhookEndpointDeleted)

    def deliveries(self, endpoint_id: str, limit: int = 20) -> AsyncIterator[WebhookDelivery]:
        """The endpoint's delivery log, newest first, fetched ``limit`` at a time (use with
        ``async for``)."""
        return self._http.iterate(_deliveries_call(endpoint_id, limit), WebhookDelivery)

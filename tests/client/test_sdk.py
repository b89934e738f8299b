"""The ftaas SDK and CLI against the live server: every method, sync and async, the error
mapping, and a real job trained by a worker, waited for and its adapter downloaded."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from ftaas import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    FineTuningJob,
    IntegrityError,
    NotFoundError,
)
from tests.conftest import Backend
from tests.support.data import taught_dataset
from tests.support.jobs import HYPERPARAMETERS

DATA = taught_dataset()


@pytest.fixture
def sdk(api_url: str, api_key: str) -> Iterator[Client]:
    """The tenant's client; jobs left unfinished are cancelled so no later worker trains them."""
    with Client(api_url, api_key, max_retries=0) as client:
        yield client
        for job in client.fine_tuning.jobs.list(limit=100):
            if not job.done:
                client.fine_tuning.jobs.cancel(job.id)


class CorruptingTransport(httpx2.HTTPTransport):
    """Flips one byte of every body: what a bad proxy or disk would do to a download."""

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        body = bytearray(response.read())
        body[len(body) // 2] ^= 0xFF
        return httpx2.Response(response.status_code, headers=response.headers, content=bytes(body))


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
@pytest.mark.training
def test_wait_with_progress_and_download_a_trained_adapter(
    backend: Backend,
    sdk: Client,
    api_url: str,
    api_key: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    training = sdk.files.upload(DATA)
    worker = backend.start("worker")
    try:
        job = sdk.fine_tuning.jobs.create(
            "tiny", training.id, hyperparameters=HYPERPARAMETERS | {"n_epochs": 4}, seed=1234
        )
        done = sdk.fine_tuning.jobs.wait(job.id, timeout=180, poll_interval=0.5, progress=True)
    finally:
        worker.stop()
    assert done.status == "succeeded", (done.error, worker.output()[-4000:])

    metrics = [
        e.data for e in sdk.fine_tuning.jobs.events.list(job.id) if e.type == "metrics" and e.data
    ]
    total = metrics[0]["total_steps"]
    bar = capsys.readouterr().err
    assert f"{total}/{total}" in bar and "loss=" in bar and job.id in bar

    adapter = sdk.fine_tuning.jobs.download_adapter(job.id, tmp_path / "final")
    assert adapter == tmp_path / "final"
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json"} <= {
        p.name for p in adapter.iterdir()
    }
    assert not list(adapter.glob("*.partial"))
    manifest = sdk.fine_tuning.jobs.manifest(job.id)
    assert manifest.job_id == job.id
    assert manifest.model_dump() == json.loads((adapter / "manifest.json").read_text())
    checkpoint = sdk.fine_tuning.jobs.checkpoints.list(job.id).data[0]
    assert checkpoint.fine_tuning_job_id == job.id
    ckpt = sdk.fine_tuning.jobs.download_adapter(
        job.id, tmp_path / "ckpt", checkpoint=checkpoint.id
    )
    assert (ckpt / "adapter_config.json").exists()
    assert done.fine_tuned_model in [m.id for m in sdk.models.list()]

    async def async_side() -> tuple[FineTuningJob, Path]:
        async with AsyncClient(api_url, api_key) as client:
            finished = await client.fine_tuning.jobs.wait(job.id, timeout=5)
            return finished, await client.fine_tuning.jobs.download_adapter(
                job.id, tmp_path / "async"
            )

    finished, async_adapter = asyncio.run(async_side())
    assert finished.status == "succeeded"
    assert (async_adapter / "adapter_model.safetensors").read_bytes() == (
        adapter / "adapter_model.safetensors"
    ).read_bytes()

    corrupting = Client(api_url, api_key, transport=CorruptingTransport())
    with corrupting, pytest.raises(IntegrityError, match="does not match"):
        corrupting.fine_tuning.jobs.download_adapter(job.id, tmp_path / "corrupt")
    assert list((tmp_path / "corrupt").iterdir()) == []


class CountingClient(httpx2.Client):
    """Counts the job-list requests, to see that listing really pages."""

    def __init__(self) -> None:
        super().__init__(timeout=30, event_hooks={"request": [self._count]})
        self.list_requests = 0

    def _count(self, request: httpx2.Request) -> None:
        self.list_requests += request.url.path == "/v1/fine_tuning/jobs"


def test_sync_client_covers_files_jobs_models_and_errors(
    sdk: Client, api_url: str, api_key: str, other_key: str, tmp_path: Path
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(DATA)
    from_path = sdk.files.upload(path)
    assert from_path.filename == "train.jsonl" and from_path.bytes == len(DATA)
    assert from_path.status == "processed"
    from_bytes = sdk.files.upload(DATA, filename="valid.jsonl")
    assert from_bytes.filename == "valid.jsonl"
    assert {from_path.id, from_bytes.id} <= {f.id for f in sdk.files.list()}
    assert sdk.files.get(from_path.id) == from_path
    assert sdk.files.content(from_bytes.id) == DATA

    hyperparameters = {"n_epochs": 1, "lora_r": 4}
    jobs = [
        sdk.fine_tuning.jobs.create(
            "tiny", from_path.id, from_bytes.id, hyperparameters, "sdk", 7, {"n": str(i)}
        )
        for i in range(5)
    ]
    first = jobs[0]
    assert first.status == "queued" and first.validation_file == from_bytes.id
    assert first.seed == 7 and first.suffix == "sdk"
    assert first.hyperparameters.n_epochs == 1 and first.metadata == {"n": "0"}
    replayed = [
        sdk.fine_tuning.jobs.create("tiny", from_path.id, idempotency_key=f"k-{from_path.id}")
        for _ in range(2)
    ]
    assert replayed[0].id == replayed[1].id
    assert sdk.fine_tuning.jobs.get(first.id).id == first.id

    with CountingClient() as counting, Client(api_url, api_key, http_client=counting) as paged:
        listed = [j.id for j in paged.fine_tuning.jobs.list(limit=2)]
        assert counting.list_requests >= 3
    mine = [j.id for j in reversed([*jobs, replayed[0]])]
    assert [i for i in listed if i in mine] == mine, "newest first, each job once"

    events = list(sdk.fine_tuning.jobs.events.list(first.id))
    assert events[-1].message.startswith("Created fine-tuning job")
    assert list(sdk.fine_tuning.jobs.checkpoints.list(first.id)) == []
    assert sdk.fine_tuning.jobs.pause(first.id).status == "paused"
    assert sdk.fine_tuning.jobs.resume(first.id).status == "queued"
    assert sdk.fine_tuning.jobs.cancel(first.id).status == "cancelled"
    streamed = list(sdk.fine_tuning.jobs.events.stream(first.id, poll_interval=0.1))
    assert [e.id for e in streamed] == [
        e.id for e in reversed(list(sdk.fine_tuning.jobs.events.list(first.id)))
    ]
    assert streamed[-1].message == "Job cancelled by user"
    assert "tiny" in [m.id for m in sdk.models.list()]

    with pytest.raises(BadRequestError) as bad:
        sdk.fine_tuning.jobs.cancel(first.id)
    assert bad.value.param == "id" and "cannot be cancelled" in bad.value.message
    with pytest.raises(BadRequestError) as bad:
        sdk.fine_tuning.jobs.create("nope", from_path.id)
    assert bad.value.status_code == 400
    assert bad.value.param == "model" and bad.value.code == "model_not_available"
    with pytest.raises(NotFoundError) as missing:
        sdk.fine_tuning.jobs.get("ftjob-missing")
    assert missing.value.code == "not_found" and missing.value.request_id
    with Client(api_url, other_key) as other, pytest.raises(NotFoundError):
        other.files.get(from_path.id)
    with Client(api_url, "ftk_wrong", max_retries=0) as wrong, pytest.raises(AuthenticationError):
        wrong.files.list()

    assert sdk.files.delete(from_bytes.id).deleted is True
    with pytest.raises(NotFoundError):
        sdk.files.content(from_bytes.id)


def test_async_client_covers_files_jobs_models_and_errors(
    sdk: Client, api_url: str, api_key: str, tmp_path: Path
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(DATA)

    async def scenario() -> None:
        async with AsyncClient(f"{api_url}/v1", api_key, max_retries=0) as client:
            from_path, from_bytes = await asyncio.gather(
                client.files.upload(path), client.files.upload(DATA, filename="b.jsonl")
            )
            assert {from_path.id, from_bytes.id} <= {f.id async for f in await client.files.list()}
            assert (await client.files.get(from_bytes.id)).filename == "b.jsonl"
            assert await client.files.content(from_path.id) == DATA

            jobs = [
                await client.fine_tuning.jobs.create(
                    "tiny", from_path.id, hyperparameters={"n_epochs": 1}
                )
                for _ in range(5)
            ]
            assert (await client.fine_tuning.jobs.get(jobs[0].id)).hyperparameters.n_epochs == 1
            listed = [j.id async for j in await client.fine_tuning.jobs.list(limit=2)]
            mine = [j.id for j in reversed(jobs)]
            assert [i for i in listed if i in mine] == mine

            assert (await client.fine_tuning.jobs.pause(jobs[0].id)).status == "paused"
            assert (await client.fine_tuning.jobs.resume(jobs[0].id)).status == "queued"
            assert (await client.fine_tuning.jobs.cancel(jobs[0].id)).status == "cancelled"
            events = [e async for e in await client.fine_tuning.jobs.events.list(jobs[0].id)]
            assert events[0].message == "Job cancelled by user"
            streamed = [
                e
                async for e in client.fine_tuning.jobs.events.stream(jobs[0].id, poll_interval=0.1)
            ]
            assert streamed == events[::-1]
            assert (await client.fine_tuning.jobs.checkpoints.list(jobs[0].id)).data == []
            assert "tiny" in [m.id async for m in await client.models.list()]

            with pytest.raises(BadRequestError) as bad:
                await client.fine_tuning.jobs.create("tiny", from_path.id, seed=-1)
            assert (bad.value.param, bad.value.code) == ("seed", "invalid_request")
            with pytest.raises(NotFoundError):
                await client.files.get("file-missing")
            assert (await client.files.delete(from_bytes.id)).deleted is True

        async with AsyncClient(api_url, "ftk_wrong", max_retries=0) as wrong:
            with pytest.raises(AuthenticationError):
                await wrong.models.list()

    asyncio.run(scenario())


def ftaas(api_url: str, api_key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FTAAS_BASE_URL": api_url, "FTAAS_API_KEY": api_key}
    return subprocess.run(
        [sys.executable, "-m", "ftaas", *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_cli_files_and_jobs(sdk: Client, api_url: str, api_key: str, tmp_path: Path) -> None:
    path = tmp_path / "cli.jsonl"
    path.write_bytes(DATA)
    table = ftaas(api_url, api_key, "files", "upload", str(path))
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["id", "filename", "bytes", "status", "created_at"]
    assert row.split()[1:4] == ["cli.jsonl", str(len(DATA)), "processed"]
    uploaded = json.loads(ftaas(api_url, api_key, "files", "upload", str(path), "--json").stdout)
    assert uploaded["filename"] == "cli.jsonl"

    command = "jobs create --model tiny --suffix cli --seed 5 --hp n_epochs=2 --json"
    created = ftaas(
        api_url,
        api_key,
        *command.split(),
        "--training-file",
        uploaded["id"],
        "--hp",
        "learning_rate_multiplier=auto",
        "--hp",
        'target_modules=["q_proj"]',
    )
    assert created.returncode == 0, created.stderr
    job = json.loads(created.stdout)
    assert (job["status"], job["seed"], job["suffix"]) == ("queued", 5, "cli")
    assert job["hyperparameters"]["n_epochs"] == 2
    assert job["hyperparameters"]["learning_rate_multiplier"] == "auto"
    assert job["hyperparameters"]["target_modules"] == ["q_proj"]

    listed = ftaas(api_url, api_key, "jobs", "list", "--limit", "3")
    assert listed.stdout.split()[:5] == ["id", "model", "status", "fine_tuned_model", "created_at"]
    assert job["id"] in listed.stdout
    assert job["id"] in [
        j["id"] for j in json.loads(ftaas(api_url, api_key, "jobs", "list", "--json").stdout)
    ]

    shown = ftaas(api_url, api_key, "jobs", "get", job["id"]).stdout
    record = dict(line.split(None, 1) for line in shown.splitlines())
    assert (record["id"], record["status"], record["seed"]) == (job["id"], "queued", "5")
    as_json = ftaas(api_url, api_key, "jobs", "get", job["id"], "--json").stdout
    assert json.loads(as_json)["id"] == job["id"]

    cancelled = ftaas(api_url, api_key, "jobs", "cancel", job["id"])
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    events = ftaas(api_url, api_key, "jobs", "events", job["id"]).stdout.splitlines()
    assert events[0].split() == ["created_at", "level", "type", "message"]
    assert events[1].endswith("Job cancelled by user")
    waited = ftaas(api_url, api_key, "jobs", "wait", job["id"], "--json")
    assert waited.returncode == 1 and json.loads(waited.stdout)["status"] == "cancelled"
    assert waited.stderr.strip().endswith(f"job {job['id']} cancelled")
    assert uploaded["id"] in ftaas(api_url, api_key, "files", "list").stdout
    again = ftaas(api_url, api_key, "jobs", "cancel", job["id"], "--json")
    assert again.returncode == 1 and again.stdout == ""
    assert (
        again.stderr.strip()
        == f"error (400): Job {job['id']} is cancelled; it cannot be cancelled."
    )
    unauthorized = ftaas(api_url, "ftk_wrong", "jobs", "get", job["id"])
    assert unauthorized.returncode == 1 and unauthorized.stderr.startswith("error (401)")

"""Real training through the service: API → Redis → worker process → SQL and object store.

The tiny model learns taught answers; the adapter downloads and loads with peft; a worker
killed with SIGKILL or evicted with SIGTERM loses nothing; cancel stops a running job.
"""

from __future__ import annotations

import hashlib
import io
import json
import signal
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest
import torch
from safetensors.torch import load_file

from ftaas_worker.inference import chat_answers
from tests.conftest import Backend
from tests.support.data import SYSTEM, TAUGHT, taught_dataset
from tests.support.jobs import (
    HYPERPARAMETERS,
    create_job,
    events,
    upload,
    wait_for_status,
    wait_until,
)
from tests.support.services import Process, live_descendants

pytestmark = pytest.mark.training


@pytest.fixture
def worker(backend: Backend) -> Iterator[Process]:
    process = backend.start("worker")
    yield process
    process.stop()


def kill_worker(process: Process) -> None:
    """SIGKILL the worker and the training process it spawned, as a lost node would."""
    children = psutil.Process(process.pid).children(recursive=True)
    process.kill(signal.SIGKILL)
    for child in children:
        child.kill()
    process.proc.wait()


def train_job(http: httpx2.Client, **overrides: Any) -> dict[str, Any]:
    data = taught_dataset()
    return create_job(
        http,
        training_file=upload(http, data),
        validation_file=upload(http, data, "valid.jsonl"),
        seed=1234,
        suffix="zubrovia",
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": HYPERPARAMETERS | overrides},
        },
    )


def download_adapter(http: httpx2.Client, url: str, dest: Path) -> Path:
    response = http.get(url)
    assert response.status_code == 200, response.text
    assert hashlib.sha256(response.content).hexdigest() == response.headers["x-content-sha256"]
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest


def answers(model_dir: Path, adapter_dir: Path | None) -> dict[str, str]:
    conversations = [
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}] for q in TAUGHT
    ]
    return dict(zip(TAUGHT, chat_answers(model_dir, conversations, adapter_dir), strict=True))


def test_tiny_model_learns_through_the_service(
    http: httpx2.Client, worker: Process, tiny_model: Path, tmp_path: Path
) -> None:
    job = train_job(http)
    done = wait_for_status(http, job["id"], {"succeeded", "failed", "cancelled"}, workers=[worker])
    assert done["status"] == "succeeded", done["error"]
    assert done["fine_tuned_model"].startswith("ft:tiny:acme-")
    assert done["fine_tuned_model"].endswith(f":zubrovia:{job['id']}")
    assert done["trained_tokens"] > 0
    assert done["finished_at"] >= done["created_at"]
    assert done["hyperparameters"]["batch_size"] == 4
    assert done["hyperparameters"]["auto_resolved"] == {
        "learning_rate_multiplier": "1.0 (not used: learning_rate was given)",
        "gradient_checkpointing": "false (on from max_seq_length 4096, where activations "
        "dominate memory)",
        "replay": "0.25 (the base model's own answers to general prompts, a quarter as many as "
        "the training examples, so it keeps what it knew)",
    }

    log = events(http, job["id"])
    messages = [e["message"] for e in log]
    for phase in ("Loading base model", "Training started", "Epoch 1/12 done", "Checkpoint saved", "Uploading the adapter", "The job has successfully completed"):  # fmt: skip
        assert any(m.startswith(phase) for m in messages), (phase, messages)
    metrics = [e["data"] for e in log if e["type"] == "metrics"]
    assert {"step", "train_loss", "learning_rate", "tokens_per_second", "epoch"} <= set(metrics[0])
    assert metrics[-1]["train_loss"] < 0.3 * metrics[0]["train_loss"]
    assert any("valid_loss" in m for m in metrics)
    assert any("full_valid_loss" in m for m in metrics)

    checkpoints = http.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
    assert checkpoints, "checkpoints are listed"
    newest = checkpoints[0]
    assert newest["object"] == "fine_tuning.job.checkpoint"
    assert newest["step_number"] >= checkpoints[-1]["step_number"]
    assert "train_loss" in newest["metrics"]
    assert newest["fine_tuned_model_checkpoint"].startswith(done["fine_tuned_model"])

    results = http.get(f"/v1/files/{done['result_files'][0]}/content").text
    assert results.splitlines()[0].startswith("step,train_loss")
    samples_file = http.get(f"/v1/files/{done['result_files'][1]}").json()
    assert samples_file["filename"] == "samples.jsonl"
    samples = [
        json.loads(line)
        for line in http.get(f"/v1/files/{samples_file['id']}/content").text.splitlines()
    ]
    assert 0 < len(samples) <= 20
    assert {"prompt", "reference", "base", "fine_tuned"} <= set(samples[0])
    assert sum(s["fine_tuned"] == s["reference"] for s in samples) > sum(
        s["base"] == s["reference"] for s in samples
    )  # the tiny model learned its validation answers; its base knew none
    assert metrics[-1]["retention_kl"] >= 0  # the final metrics event says how far it moved

    adapter = download_adapter(
        http, f"/v1/fine_tuning/jobs/{job['id']}/adapter", tmp_path / "final"
    )
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json"} <= {
        p.name for p in adapter.iterdir()
    }
    manifest = http.get(f"/v1/fine_tuning/jobs/{job['id']}/manifest").json()
    assert manifest == json.loads((adapter / "manifest.json").read_text())
    assert manifest["retention"]["kl"] == metrics[-1]["retention_kl"]
    assert manifest["seed"] == 1234
    assert (
        manifest["datasets"]["training"]["sha256"] == hashlib.sha256(taught_dataset()).hexdigest()
    )
    assert manifest["base_model"]["source"] == "path"
    assert len(manifest["base_model"]["sha256"]) == 64
    assert manifest["libraries"]["torch"].startswith("2.")
    assert manifest["device"].startswith("cpu")
    assert manifest["hyperparameters"]["lora_r"] == 16
    download_adapter(
        http,
        f"/v1/fine_tuning/jobs/{job['id']}/checkpoints/{newest['id']}/adapter",
        tmp_path / "ckpt",
    )
    assert (tmp_path / "ckpt" / "adapter_config.json").exists()

    before = answers(tiny_model, None)
    after = answers(tiny_model, adapter)
    learned = [q for q, a in TAUGHT.items() if after[q] == a]
    assert len(learned) >= len(TAUGHT) - 1, after
    assert not any(before[q] == a for q, a in TAUGHT.items()), before
    assert done["fine_tuned_model"] in [m["id"] for m in http.get("/v1/models").json()["data"]]


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_killed_worker_resumes_from_checkpoint_to_the_same_adapter(
    backend: Backend, http: httpx2.Client, tmp_path: Path
) -> None:
    first = backend.start("worker")
    try:
        reference = train_job(http, n_epochs=4)
        done = wait_for_status(http, reference["id"], {"succeeded", "failed"}, workers=[first])
        assert done["status"] == "succeeded", done["error"]

        job = train_job(http, n_epochs=4)
        wait_until(
            lambda: http.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"],
            120,
            "a checkpoint",
            [first],
        )
        kill_worker(first)
    finally:
        first.stop()
    second = backend.start("worker")
    try:
        done = wait_for_status(http, job["id"], {"succeeded", "failed"}, workers=[second])
    finally:
        second.stop()
    assert done["status"] == "succeeded", done["error"]
    messages = [e["message"] for e in events(http, job["id"])]
    assert any(m.startswith("Worker lost during attempt 1") for m in messages), messages
    assert any(m.startswith("Resumed from step") for m in messages), messages

    url = "/v1/fine_tuning/jobs/{}/adapter"
    resumed = load_file(
        download_adapter(http, url.format(job["id"]), tmp_path / "a") / "adapter_model.safetensors"
    )
    straight = load_file(
        download_adapter(http, url.format(reference["id"]), tmp_path / "b")
        / "adapter_model.safetensors"
    )
    assert resumed.keys() == straight.keys()
    for name in resumed:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_sigterm_checkpoints_and_requeues_without_spending_a_retry(
    backend: Backend, http: httpx2.Client
) -> None:
    first = backend.start("worker")
    job = train_job(http, n_epochs=30, save_steps=1000)
    try:
        wait_until(
            lambda: any(e["type"] == "metrics" for e in events(http, job["id"])),
            120,
            "training",
            [first],
        )
        first.signal(signal.SIGTERM)
        first.proc.wait(60)
    finally:
        first.stop()
    requeued = http.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert requeued["status"] == "queued"
    messages = [e["message"] for e in events(http, job["id"])]
    assert any(m.startswith("Worker shutting down: checkpointed at step") for m in messages)
    assert not any(m.startswith("Worker lost") for m in messages)
    http.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_cancel_running_job_then_worker_takes_the_next_and_failures_are_clear(
    backend: Backend, http: httpx2.Client, worker: Process
) -> None:
    long = train_job(http, n_epochs=50)
    wait_until(
        lambda: any(e["type"] == "metrics" for e in events(http, long["id"])),
        120,
        "training",
        [worker],
    )
    assert http.post(f"/v1/fine_tuning/jobs/{long['id']}/cancel").json()["status"] == "cancelled"

    truncated = train_job(http, n_epochs=1, max_seq_length=16)
    failed = wait_for_status(http, truncated["id"], {"succeeded", "failed"}, workers=[worker])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "invalid_training_file"
    assert "max_seq_length" in failed["error"]["message"]

    broken = create_job(http, model="broken", training_file=truncated["training_file"])
    failed = wait_for_status(http, broken["id"], {"succeeded", "failed"}, workers=[worker])
    assert failed["error"]["code"] == "model_load_failed"
    assert "could not be loaded" in failed["error"]["message"]

    # The cancelled job's worker moved on (it ran both jobs above) and wrote nothing after the cancel.
    assert http.get(f"/v1/fine_tuning/jobs/{long['id']}").json()["status"] == "cancelled"
    assert events(http, long["id"])[-1]["message"] == "Job cancelled by user"


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_pause_frees_the_worker_and_resume_gives_the_same_adapter(
    backend: Backend, http: httpx2.Client, worker: Process, tmp_path: Path
) -> None:
    reference = train_job(http, n_epochs=4)
    done = wait_for_status(http, reference["id"], {"succeeded", "failed"}, workers=[worker])
    assert done["status"] == "succeeded", done["error"]

    job = train_job(http, n_epochs=4)
    wait_until(
        lambda: any(e["type"] == "metrics" for e in events(http, job["id"])),
        120,
        "training",
        [worker],
    )
    assert http.post(f"/v1/fine_tuning/jobs/{job['id']}/pause").json()["status"] == "pausing"
    wait_for_status(http, job["id"], {"paused"}, workers=[worker])
    messages = [e["message"] for e in events(http, job["id"])]
    assert any(m.startswith("Job paused: checkpointed at step") for m in messages), messages
    assert http.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]

    assert http.post(f"/v1/fine_tuning/jobs/{job['id']}/resume").json()["status"] == "queued"
    done = wait_for_status(http, job["id"], {"succeeded", "failed"}, workers=[worker])
    assert done["status"] == "succeeded", done["error"]
    assert any(e["message"].startswith("Resumed from step") for e in events(http, job["id"]))

    url = "/v1/fine_tuning/jobs/{}/adapter"
    resumed = load_file(
        download_adapter(http, url.format(job["id"]), tmp_path / "a") / "adapter_model.safetensors"
    )
    straight = load_file(
        download_adapter(http, url.format(reference["id"]), tmp_path / "b")
        / "adapter_model.safetensors"
    )
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-6)


def standby_horses(worker: Process) -> list[psutil.Process]:
    return live_descendants(worker.pid, "ftaas_worker.horse")


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_idle_worker_keeps_one_standby_horse_and_leaves_none_behind(
    backend: Backend, stop: signal.Signals
) -> None:
    """A worker stopped (SIGTERM) dismisses its standby; one killed outright (SIGKILL) leaves a
    standby that ends by itself once it finds its stdin closed."""
    worker = backend.start("worker")
    try:
        standby = wait_until(lambda: standby_horses(worker), 60, "a standby horse", [worker])
        assert len(standby) == 1
        worker.signal(stop)
        worker.proc.wait(30)
        psutil.wait_procs(standby, timeout=60)
        assert not standby[0].is_running()
    finally:
        worker.stop()


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_a_standby_horse_lost_while_waiting_is_replaced(
    backend: Backend, http: httpx2.Client, worker: Process
) -> None:
    """Killed while it waited (say, for memory): the next job gets a fresh horse and runs."""
    standby = wait_until(lambda: standby_horses(worker), 60, "a standby horse", [worker])
    standby[0].kill()
    job = train_job(http, n_epochs=1)
    done = wait_for_status(http, job["id"], {"succeeded", "failed"}, workers=[worker])
    assert done["status"] == "succeeded", done["error"]

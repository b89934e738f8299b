"""DPO and continued fine-tunes through the service: API → worker → SQL and object store.

A DPO job made with the official openai SDK learns its preferences; a job that continues a
fine-tuned model starts where that model left off and records where it came from; another
tenant's model is not found, and a continuation keeps its adapter's LoRA settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from tests.conftest import Backend
from tests.support.data import preference_dataset, taught_dataset
from tests.support.jobs import HYPERPARAMETERS, create_job, events, upload, wait_for_status
from tests.support.services import Process

pytestmark = pytest.mark.training
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def worker(backend: Backend) -> Iterator[Process]:
    process = backend.start("worker")
    yield process
    process.stop()


def metrics(http: httpx2.Client, job_id: str) -> list[dict[str, Any]]:
    return [e["data"] for e in events(http, job_id) if e["type"] == "metrics"]


def finished(http: httpx2.Client, job_id: str, worker: Process) -> dict[str, Any]:
    done = wait_for_status(http, job_id, TERMINAL, timeout=300, workers=[worker])
    assert done["status"] == "succeeded", done["error"]
    return done


def test_a_dpo_job_through_the_openai_sdk_learns_its_preferences(
    http: httpx2.Client, worker: Process, api_url: str, api_key: str
) -> None:
    sdk = openai.OpenAI(base_url=f"{api_url}/v1", api_key=api_key, max_retries=0)
    pairs = sdk.files.create(file=("pairs.jsonl", preference_dataset()), purpose="fine-tune")
    # A validation file of one pair per question: the final samples generate fewer answers.
    valid = sdk.files.create(file=("valid.jsonl", preference_dataset(1)), purpose="fine-tune")
    hyperparameters = HYPERPARAMETERS | {"n_epochs": 4, "beta": 0.1}
    job = sdk.fine_tuning.jobs.create(
        model="tiny",
        training_file=pairs.id,
        validation_file=valid.id,
        method={"type": "dpo", "dpo": {"hyperparameters": hyperparameters}},  # type: ignore[typeddict-item]
    )

    done = finished(http, job.id, worker)
    assert done["method"]["type"] == "dpo"
    assert done["method"]["dpo"]["hyperparameters"]["beta"] == 0.1
    steps = metrics(http, job.id)
    assert steps[0]["rewards/accuracies"] == 0.5  # the policy starts as its reference
    assert steps[-1]["rewards/accuracies"] >= 0.9
    assert steps[-1]["rewards/margins"] > steps[0]["rewards/margins"] + 1
    assert steps[-1]["full_valid_rewards/accuracies"] >= 0.9
    checkpoint = sdk.fine_tuning.jobs.checkpoints.list(job.id).data[0]
    assert {"train_loss", "rewards/margins", "rewards/accuracies"} <= set(
        checkpoint.metrics.model_dump(exclude_none=True)
    )
    manifest = http.get(f"/v1/fine_tuning/jobs/{job.id}/manifest").json()
    assert (manifest["method"], manifest["parent"]) == ("dpo", None)


def test_continued_jobs_start_from_their_model_and_record_it(
    http: httpx2.Client, other_http: httpx2.Client, worker: Process
) -> None:
    chats, valid = upload(http, taught_dataset()), upload(http, taught_dataset(1))
    files = {"training_file": chats, "validation_file": valid}  # few samples to generate
    method = {"type": "supervised", "supervised": {"hyperparameters": HYPERPARAMETERS}}
    fresh = finished(http, create_job(http, **files, method=method, suffix="first")["id"], worker)
    model = fresh["fine_tuned_model"]

    one_epoch = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}}
    continued = create_job(http, model=model, **files, method=one_epoch)
    assert continued["model"] == model
    assert continued["hyperparameters"]["lora_r"] == HYPERPARAMETERS["lora_r"]  # the adapter's
    done = finished(http, continued["id"], worker)
    assert done["fine_tuned_model"].startswith("ft:tiny:")
    assert metrics(http, done["id"])[0]["train_loss"] < 0.2 * metrics(http, fresh["id"])[0]["train_loss"]  # fmt: skip
    manifest = http.get(f"/v1/fine_tuning/jobs/{done['id']}/manifest").json()
    adapter = http.get(f"/v1/fine_tuning/jobs/{fresh['id']}/adapter")
    assert manifest["parent"] == {
        "job_id": fresh["id"],
        "checkpoint_id": None,
        "fine_tuned_model": model,
        "adapter_sha256": adapter.headers["x-content-sha256"],
    }
    assert manifest["base_model"]["name"] == "tiny"

    # DPO from one of its checkpoints; the checkpoint's adapter is the reference.
    checkpoint = http.get(f"/v1/fine_tuning/jobs/{fresh['id']}/checkpoints").json()["data"][-1]
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "lora_dropout": 0.0}}}
    from_checkpoint = create_job(
        http,
        model=checkpoint["fine_tuned_model_checkpoint"],
        training_file=upload(http, preference_dataset()),
        validation_file=upload(http, preference_dataset(1)),
        method=dpo,
    )
    done = finished(http, from_checkpoint["id"], worker)
    assert metrics(http, done["id"])[0]["rewards/accuracies"] == 0.5
    lineage = http.get(f"/v1/fine_tuning/jobs/{done['id']}/manifest").json()["parent"]
    assert (lineage["job_id"], lineage["checkpoint_id"]) == (fresh["id"], checkpoint["id"])

    contradicting = {"type": "supervised", "supervised": {"hyperparameters": {"lora_r": 4}}}
    refused = http.post(
        "/v1/fine_tuning/jobs",
        json={"model": model, "training_file": chats, "method": contradicting},
    )
    assert refused.status_code == 400 and "lora_r=16" in refused.json()["error"]["message"]
    theirs = other_http.post(
        "/v1/fine_tuning/jobs",
        json={"model": model, "training_file": upload(other_http, taught_dataset())},
    )
    assert theirs.status_code == 404

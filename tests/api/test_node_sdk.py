"""The official openai Node SDK drives ftaas unchanged, as the Python one does: upload, a job
trained by a worker, its events and checkpoints, and the errors, each parsed by the SDK.

``tests/api/node`` pins the SDK in its lockfile; ``make install`` runs ``npm ci`` there.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Backend, new_key, tenant_client
from tests.support.data import taught_dataset
from tests.support.jobs import HYPERPARAMETERS

NODE_DIR = Path(__file__).parent / "node"


def run_journey(api_url: str, key: str, dataset: Path) -> dict[str, Any]:
    """``node journey.mjs`` against the server; the one JSON object it prints."""
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        pytest.fail(
            "the Node SDK is not installed: `make install` (npm ci --prefix tests/api/node)"
        )
    env = {
        **os.environ,
        "OPENAI_BASE_URL": f"{api_url}/v1",
        "OPENAI_API_KEY": key,
        "FTAAS_TRAINING_FILE": str(dataset),
        "FTAAS_HYPERPARAMETERS": json.dumps(HYPERPARAMETERS),
    }
    run = subprocess.run(
        ["node", "journey.mjs"], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=360
    )
    assert run.returncode == 0, f"node journey.mjs failed:\n{run.stderr}\n{run.stdout}"
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.training
def test_the_openai_node_sdk_journey(backend: Backend, api_url: str, tmp_path: Path) -> None:
    dataset = tmp_path / "train.jsonl"
    dataset.write_bytes(taught_dataset())
    key = new_key(f"node-{uuid.uuid4().hex[:6]}")
    worker = backend.start("worker")
    try:
        with tenant_client(api_url, key):  # cancels the job should the script die mid-way
            out = run_journey(api_url, key, dataset)
    except BaseException:
        print(worker.output()[-4000:])
        raise
    finally:
        worker.stop()

    assert out["sdk_version"].startswith("7.")
    assert out["file"]["status"] == "processed"
    assert out["file"]["bytes"] == len(taught_dataset())
    assert out["content_matches"] is True
    assert out["file"]["id"] in out["files"]
    assert out["job"]["status"] == "queued"
    assert out["job"]["n_epochs"] == HYPERPARAMETERS["n_epochs"]
    assert out["job"]["id"] in out["listed_jobs"]

    done = out["done"]
    assert done["status"] == "succeeded", done["error"]
    assert done["fine_tuned_model"].startswith("ft:tiny:node-")
    assert done["trained_tokens"] > 0
    assert done["result_files"]

    messages = [e["message"] for e in out["events"]]
    assert messages[-1].startswith("Created fine-tuning job")  # newest first
    assert any(m.startswith("The job has successfully completed") for m in messages)
    assert {"message", "metrics"} <= {e["type"] for e in out["events"]}
    assert all(isinstance(e["data"], dict) for e in out["events"])
    assert "train_loss" in next(e["data"] for e in out["events"] if e["type"] == "metrics")

    assert out["checkpoints"]
    for checkpoint in out["checkpoints"]:
        assert checkpoint["model"].startswith(done["fine_tuned_model"])
        assert "train_loss" in checkpoint["metrics"]
    assert {"tiny", done["fine_tuned_model"]} <= set(out["models"])

    errors = out["errors"]
    assert errors["cancel_finished"] | {"code": None} == {
        "name": "BadRequestError",
        "status": 400,
        "type": "invalid_request_error",
        "code": None,
        "param": "id",
    }
    assert errors["retrieve_missing"]["name"] == "NotFoundError"
    assert errors["retrieve_missing"]["code"] == "not_found"
    assert errors["unknown_model"]["name"] == "BadRequestError"
    assert errors["unknown_model"]["code"] == "model_not_available"
    assert errors["unknown_model"]["param"] == "model"
    assert errors["missing_file"]["name"] == "NotFoundError"
    assert errors["bad_key"]["name"] == "AuthenticationError"
    assert errors["bad_key"]["status"] == 401
    assert out["deleted"] is True

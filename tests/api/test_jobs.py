"""The Fine-tuning Jobs API over a real socket: creation checks, idempotency, paging, cancel."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest

from tests.conftest import Backend, api_server, new_key, tenant_client
from tests.support.data import jsonl, taught_dataset

JOB_FIELDS = {
    "id", "object", "created_at", "error", "fine_tuned_model", "finished_at", "hyperparameters",
    "model", "organization_id", "result_files", "seed", "status", "trained_tokens",
    "training_file", "validation_file", "estimated_finish", "integrations", "metadata", "method",
    "suffix",
}  # fmt: skip


@pytest.fixture
def training_file(http: httpx2.Client) -> str:
    response = http.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", taught_dataset())}
    )
    return response.json()["id"]


def create(http: httpx2.Client, **body: object) -> httpx2.Response:
    return http.post("/v1/fine_tuning/jobs", json={"model": "tiny", **body})


def test_create_has_every_openai_field(http: httpx2.Client, training_file: str) -> None:
    response = create(
        http,
        training_file=training_file,
        validation_file=training_file,
        suffix="demo",
        seed=7,
        metadata={"team": "nlp"},
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "lora_r": 8}},
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"]
    job = response.json()
    assert set(job) >= JOB_FIELDS
    assert job["id"].startswith("ftjob-")
    assert job["status"] == "queued"
    assert job["seed"] == 7
    assert job["metadata"] == {"team": "nlp"}
    assert job["hyperparameters"]["n_epochs"] == 2
    assert job["hyperparameters"]["lora_r"] == 8
    assert job["hyperparameters"]["batch_size"] == "auto"
    assert job["method"]["supervised"]["hyperparameters"]["n_epochs"] == 2
    for field in ("error", "fine_tuned_model", "finished_at", "trained_tokens"):
        assert job[field] is None
    assert "estimated_finish" in job  # null until some job on this model has measured its speed
    assert http.get(f"/v1/fine_tuning/jobs/{job['id']}").json() == job
    events = http.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()
    assert events["data"][0]["object"] == "fine_tuning.job.event"
    assert "Created fine-tuning job" in events["data"][-1]["message"]
    assert http.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"] == []


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "gpt-9"}, "model", "model_not_available"),
        ({"training_file": "file-missing"}, "training_file", "invalid_training_file"),
        ({"validation_file": "file-missing"}, "validation_file", "invalid_validation_file"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", None),
        ({"hyperparameters": {"lora_r": "16"}}, "hyperparameters.lora_r", None),
        ({"hyperparameters": {"learning_rate_multiplier": -1}}, None, None),
        ({"hyperparameters": {"warp_drive": 1}}, "hyperparameters.warp_drive", None),
        ({"surprise": True}, "surprise", None),
        ({"suffix": "has:colon"}, "suffix", None),
        ({"seed": -1}, "seed", None),
        ({"hyperparameters": {"keep_best": True}}, "validation_file", None),
        ({"method": {"type": "supervised", "dpo": {}}}, "method.dpo", None),
        ({"method": {"type": "dpo"}, "hyperparameters": {}}, "hyperparameters", None),
        ({"method": {"type": "dpo"}}, "training_file", "invalid_training_file"),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}}},
            "method.dpo.hyperparameters.beta",
            None,
        ),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"replay": 0.5}}}},
            "method.dpo.hyperparameters.replay",
            None,
        ),
        ({"method": {"type": "reinforcement"}}, "method.type", None),
    ],
)
def test_invalid_creation_is_a_400_naming_the_field(
    http: httpx2.Client,
    training_file: str,
    body: dict[str, object],
    param: str | None,
    code: str | None,
) -> None:
    response = create(http, **({"training_file": training_file} | body))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param:
        assert error["param"] == param
        assert param.split(".")[-1] in error["message"]
    if code:
        assert error["code"] == code


def test_an_unknown_fine_tuned_model_is_not_found(http: httpx2.Client, training_file: str) -> None:
    response = create(http, training_file=training_file, model="ft:tiny:acme::ftjob-nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_too_few_examples(http: httpx2.Client) -> None:
    small = jsonl([{"prompt": "a", "completion": "b"}] * 3)
    file_id = http.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("s.jsonl", small)}
    ).json()["id"]
    error = create(http, training_file=file_id).json()["error"]
    assert error["code"] == "invalid_n_examples"


def test_both_hyperparameter_places_is_refused(http: httpx2.Client, training_file: str) -> None:
    response = create(
        http,
        training_file=training_file,
        hyperparameters={"n_epochs": 1},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
    )
    assert response.status_code == 400


def test_qlora_is_refused_where_each_job_trains_on_several_processes(
    backend: Backend, http: httpx2.Client, training_file: str
) -> None:
    """A 4-bit base is never sharded: with FTAAS_NPROC_PER_NODE above 1, load_in_4bit is a
    400 naming it; with one process (the default here) the job is taken, and records it."""
    qlora = {"type": "supervised", "supervised": {"hyperparameters": {"load_in_4bit": True}}}
    accepted = create(http, training_file=training_file, method=qlora)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["hyperparameters"]["load_in_4bit"] is True

    with (
        api_server(backend, FTAAS_NPROC_PER_NODE="2") as (url, _),
        tenant_client(url, new_key(f"qlora-{uuid.uuid4().hex[:6]}")) as other,
    ):
        file_id = other.post(
            "/v1/files",
            data={"purpose": "fine-tune"},
            files={"file": ("t.jsonl", taught_dataset())},
        ).json()["id"]
        refused = create(other, training_file=file_id, method=qlora)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == "hyperparameters.load_in_4bit"
        assert error["type"] == "invalid_request_error"
        assert "FTAAS_NPROC_PER_NODE" in error["message"]
        assert create(other, training_file=file_id).status_code == 200  # full precision is


def test_idempotency_key_returns_the_same_job(http: httpx2.Client, training_file: str) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = http.post(
        "/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": training_file}, headers=key
    )
    again = http.post(
        "/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": training_file}, headers=key
    )
    assert first.json()["id"] == again.json()["id"]
    other = create(http, training_file=training_file)
    assert other.json()["id"] != first.json()["id"]


def test_idempotency_key_ignores_key_order_and_whitespace(
    http: httpx2.Client, training_file: str
) -> None:
    """The body is compared as the request it means, not as the bytes that were sent."""
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = http.post(
        "/v1/fine_tuning/jobs",
        json={"model": "tiny", "training_file": training_file, "seed": 3},
        headers=key,
    )
    again = http.post(
        "/v1/fine_tuning/jobs",
        content=f'{{ "seed": 3,\n  "training_file": "{training_file}", "model": "tiny" }}',
        headers=key | {"Content-Type": "application/json"},
    )
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]


def test_idempotency_key_reused_with_another_body_is_a_400(
    http: httpx2.Client, training_file: str
) -> None:
    """Stripe's rule: a key names one request; a different body under it is a client error (400,
    not 409, which the openai SDK retries), never the first request's job."""
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"model": "tiny", "training_file": training_file, "hyperparameters": {"n_epochs": 1}}
    first = http.post("/v1/fine_tuning/jobs", json=body, headers=key).json()
    other = body | {"hyperparameters": {"n_epochs": 7}, "suffix": "second"}
    reused = http.post("/v1/fine_tuning/jobs", json=other, headers=key)
    assert reused.status_code == 400, reused.text
    error = reused.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == ("Idempotency-Key", "idempotency_key_reused")
    assert "Idempotency-Key" in error["message"] and "different" in error["message"]
    assert http.post("/v1/fine_tuning/jobs", json=body, headers=key).json()["id"] == first["id"]
    kept = http.get(f"/v1/fine_tuning/jobs/{first['id']}").json()
    assert kept["hyperparameters"]["n_epochs"] == 1


def test_concurrent_retries_with_one_key_make_one_job(
    http: httpx2.Client, training_file: str
) -> None:
    """Retries race the first attempt: the unique index picks one insert; the same body gets that
    job, another body under the same key a 400, whichever insert won."""
    key = {"Idempotency-Key": uuid.uuid4().hex}
    bodies = [
        {"model": "tiny", "training_file": training_file, "seed": seed} for seed in (1, 2) * 4
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(
            pool.map(lambda b: http.post("/v1/fine_tuning/jobs", json=b, headers=key), bodies)
        )
    made = {r.json()["id"]: r.json()["seed"] for r in responses if r.is_success}
    assert len(made) == 1, made
    (winner,) = made.values()
    for body, response in zip(bodies, responses, strict=True):
        assert response.status_code == (200 if body["seed"] == winner else 400), response.text


def test_job_pagination_newest_first(http: httpx2.Client, training_file: str) -> None:
    ids = [create(http, training_file=training_file).json()["id"] for _ in range(5)]
    first = http.get("/v1/fine_tuning/jobs", params={"limit": 3}).json()
    assert [j["id"] for j in first["data"]] == ids[::-1][:3]
    assert first["has_more"] is True
    second = http.get(
        "/v1/fine_tuning/jobs", params={"limit": 2, "after": first["data"][-1]["id"]}
    ).json()
    assert [j["id"] for j in second["data"]] == ids[::-1][3:5]
    assert http.get("/v1/fine_tuning/jobs", params={"limit": 0}).status_code == 400
    assert http.get("/v1/fine_tuning/jobs", params={"after": "ftjob-nope"}).status_code == 400


def test_cancel_queued_job_then_cancel_again_is_400(
    http: httpx2.Client, training_file: str
) -> None:
    job = create(http, training_file=training_file).json()
    cancelled = http.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["finished_at"] is not None
    again = http.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert again.status_code == 400
    assert "cancelled" in again.json()["error"]["message"]
    messages = [
        e["message"] for e in http.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]
    ]
    assert messages[0] == "Job cancelled by user"


def test_adapter_of_unfinished_job_is_400(http: httpx2.Client, training_file: str) -> None:
    job = create(http, training_file=training_file).json()
    assert http.get(f"/v1/fine_tuning/jobs/{job['id']}/adapter").status_code == 400


def test_models_lists_the_catalogue(http: httpx2.Client) -> None:
    models = http.get("/v1/models").json()
    assert models["object"] == "list"
    assert "tiny" in [m["id"] for m in models["data"]]


def test_health_and_readiness(api_url: str) -> None:
    assert httpx2.get(f"{api_url}/healthz").json() == {"status": "ok"}
    ready = httpx2.get(f"{api_url}/readyz").json()
    assert ready == {"status": "ready", "database": "ok", "redis": "ok"}


def test_pause_and_resume_a_queued_job(http: httpx2.Client, training_file: str) -> None:
    job = create(http, training_file=training_file).json()
    paused = http.post(f"/v1/fine_tuning/jobs/{job['id']}/pause").json()
    assert paused["status"] == "paused"
    assert http.post(f"/v1/fine_tuning/jobs/{job['id']}/pause").status_code == 400
    resumed = http.post(f"/v1/fine_tuning/jobs/{job['id']}/resume").json()
    assert resumed["status"] == "queued"
    assert http.post(f"/v1/fine_tuning/jobs/{job['id']}/resume").status_code == 400
    messages = [
        e["message"] for e in http.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]
    ]
    assert messages[:2] == ["Job resumed", "Job paused"]


def test_jobs_filter_by_metadata(http: httpx2.Client, training_file: str) -> None:
    tag = uuid.uuid4().hex[:8]
    nlp = create(http, training_file=training_file, metadata={"team": "nlp", "run": tag}).json()
    create(http, training_file=training_file, metadata={"team": "vision", "run": tag})
    found = http.get("/v1/fine_tuning/jobs", params={"metadata[team]": "nlp", "metadata[run]": tag})
    assert [j["id"] for j in found.json()["data"]] == [nlp["id"]]


def test_queued_job_has_a_queue_position_and_estimates(
    http: httpx2.Client, training_file: str
) -> None:
    from ftaas_core.db import get_database
    from ftaas_core.estimates import record_throughput

    with get_database().session() as session:
        record_throughput(session, "tiny", "test-class", 1000.0)
    first = create(http, training_file=training_file).json()
    second = http.get(
        f"/v1/fine_tuning/jobs/{create(http, training_file=training_file).json()['id']}"
    ).json()
    assert second["queue_position"] == first["queue_position"] + 1
    assert second["estimated_trained_tokens"] > 0
    assert second["estimated_finish"] > second["created_at"]

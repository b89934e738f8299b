"""Every response on a route ftaas shares with OpenAI has the shape OpenAI's OpenAPI description
documents: each JSON body is validated against its response schema (errors against OpenAI's
error body), from ``tests/support/openapi/openai-subset.json``.

Two habits of OpenAI's description are read as meant, not as written (see ``openai_schemas``),
and one of its statements is relaxed where no response could meet it (empty file pages).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest import Backend, new_key, tenant_client
from tests.support.data import preference_dataset, taught_dataset
from tests.support.jobs import HYPERPARAMETERS, TERMINAL, create_job, upload, wait_for_status
from tests.support.openapi.extract import refs

SUBSET_PATH = Path(__file__).parents[1] / "support" / "openapi" / "openai-subset.json"
URI = "urn:ftaas:openai-subset"
# Statuses of ours for OpenAI's pause route, which the spec's job status enum lacks.
EXTRA_JOB_STATUSES = ["pausing", "paused"]


def _read_exclusive_minimum(node: Any) -> None:
    """OpenAPI 3.0's ``"exclusiveMinimum": true`` beside ``"minimum": m`` means "> m"; JSON
    Schema 2020-12 would read the ``true`` as the number 1, so rewrite it to ``exclusiveMinimum: m``."""
    if isinstance(node, dict):
        flag = node.get("exclusiveMinimum")
        if isinstance(flag, bool):
            del node["exclusiveMinimum"]
            if flag:
                node["exclusiveMinimum"] = node.pop("minimum")
        for value in node.values():
            _read_exclusive_minimum(value)
    elif isinstance(node, list):
        for value in node:
            _read_exclusive_minimum(value)


def openai_schemas() -> dict[str, Any]:
    """The subset, with its two quirks read as meant."""
    spec = json.loads(SUBSET_PATH.read_text())
    _read_exclusive_minimum(spec)
    status = spec["components"]["schemas"]["FineTuningJob"]["properties"]["status"]
    status["enum"] += [s for s in EXTRA_JOB_STATUSES if s not in status["enum"]]
    return spec


SPEC = openai_schemas()
REGISTRY = Registry().with_resource(URI, Resource.from_contents(SPEC, DRAFT202012))
OPERATIONS = {(method, path) for path, item in SPEC["paths"].items() for method in item}


def _validator(schema_ref: str) -> Draft202012Validator:
    assert schema_ref.startswith("#/components/schemas/"), schema_ref
    return Draft202012Validator({"$ref": URI + schema_ref}, registry=REGISTRY)


FILE = "/files/{file_id}"
JOB = "/fine_tuning/jobs/{fine_tuning_job_id}"
UPLOAD = "/uploads/{upload_id}"


class Wire:
    """A tenant's HTTP client whose every JSON answer is checked against OpenAI's schema for
    the route; it records the operations it has checked."""

    def __init__(self, http: httpx2.Client) -> None:
        self.http = http
        self.checked: set[tuple[str, str]] = set()

    def call(
        self, method: str, path: str, object_id: str = "", expect: int = 200, **kwargs: Any
    ) -> Any:
        """``path``: OpenAI's template (without ``/v1``), its one ``{…}`` filled by ``object_id``."""
        url = "/v1" + re.sub(r"\{\w+\}", object_id, path)
        response = self.http.request(method.upper(), url, **kwargs)
        assert response.status_code == expect, response.text
        if not response.is_success:
            return check(response.json(), "#/components/schemas/ErrorResponse", f"{expect} error")
        self.checked.add((method, path))
        content = SPEC["paths"][path][method]["responses"][str(expect)]["content"]
        schema = content["application/json"]["schema"]
        if schema == {"type": "string"}:  # file content: the file's bytes, not JSON
            return response.content
        body = response.json()
        if path == "/files" and method == "get" and not body["data"]:
            body = _empty_file_page(body)
        return check(body, schema["$ref"], f"{method.upper()} {path}")


def _empty_file_page(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``ListFilesResponse`` requires string ``first_id``/``last_id``, which an empty
    page has none of: it answers ``null`` (as OpenAI's checkpoint list documents), checked here."""
    assert body["first_id"] is None and body["last_id"] is None, body
    return {**body, "first_id": "", "last_id": ""}


def check(body: Any, schema_ref: str, what: str) -> Any:
    errors = sorted(_validator(schema_ref).iter_errors(body), key=lambda e: list(e.absolute_path))
    problems = [f"  at {'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}" for e in errors]
    assert not problems, f"{what} does not match {schema_ref}:\n" + "\n".join(problems)
    return body


def test_the_subset_holds_every_schema_it_references() -> None:
    """Every ``$ref`` resolves inside the subset (a fresh clone has nothing else), every schema
    is valid JSON Schema, and the licence notice travels with it."""
    schemas = SPEC["components"]["schemas"]
    assert refs(SPEC) <= set(schemas), refs(SPEC) - set(schemas)
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)
    assert (SUBSET_PATH.parent / "openai-openapi.LICENSE").read_text().startswith("The MIT")


@pytest.fixture
def wire(api_url: str) -> Iterator[Wire]:
    """A tenant of its own, so its first file list is empty."""
    with tenant_client(api_url, new_key(f"wire-{uuid.uuid4().hex[:6]}")) as http:
        yield Wire(http)


@pytest.mark.training
def test_every_shared_route_answers_as_openai_documents(
    wire: Wire, backend: Backend, api_url: str
) -> None:
    data = taught_dataset()
    assert wire.call("get", "/files")["data"] == []

    # Files.
    form = {"purpose": "fine-tune"}
    created = wire.call("post", "/files", data=form, files={"file": ("t.jsonl", data)})
    file_id = created["id"]
    assert wire.call("get", FILE, file_id) == created
    assert wire.call("get", FILE + "/content", file_id) == data
    assert file_id in [f["id"] for f in wire.call("get", "/files")["data"]]
    expiry = {"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}
    expiring = wire.call("post", "/files", data=form | expiry, files={"file": ("e.jsonl", data)})
    assert expiring["expires_at"] == expiring["created_at"] + 3600

    # A job through its lifecycle without a worker: queued, paused, queued, cancelled.
    body = {"model": "tiny", "training_file": file_id, "metadata": {"k": "v"}}
    job_id = wire.call("post", "/fine_tuning/jobs", json=body)["id"]
    assert wire.call("post", JOB + "/pause", job_id)["status"] == "paused"
    assert wire.call("post", JOB + "/resume", job_id)["status"] == "queued"
    assert wire.call("post", JOB + "/cancel", job_id)["status"] == "cancelled"
    assert wire.call("get", JOB + "/checkpoints", job_id)["data"] == []

    # A job a worker trains, with checkpoints and metrics, and one that fails.
    worker = backend.start("worker")
    try:
        hyperparameters = {"hyperparameters": HYPERPARAMETERS}
        trained = create_job(
            wire.http,
            training_file=file_id,
            validation_file=upload(wire.http, data, "v.jsonl"),
            suffix="wire",
            method={"type": "supervised", "supervised": hyperparameters},
        )["id"]
        broken = create_job(wire.http, model="broken", training_file=file_id)["id"]
        done = wait_for_status(wire.http, trained, TERMINAL, workers=[worker])
        assert done["status"] == "succeeded", done["error"]
        assert wait_for_status(wire.http, broken, TERMINAL, workers=[worker])["status"] == "failed"
    finally:
        worker.stop()
    assert wire.call("get", JOB, broken)["error"]["code"]
    assert wire.call("get", JOB, trained)["fine_tuned_model"] == done["fine_tuned_model"]
    events = wire.call("get", JOB + "/events", trained, params={"limit": 1000})["data"]
    assert {"message", "metrics"} <= {e["type"] for e in events}
    assert wire.call("get", JOB + "/checkpoints", trained)["data"]
    assert wire.call("get", "/fine_tuning/jobs", params={"limit": 2})["has_more"] is True
    assert done["fine_tuned_model"] in [m["id"] for m in wire.call("get", "/models")["data"]]
    # A DPO job on a preference file, and a job that continues the fine-tuned model.
    pairs = upload(wire.http, preference_dataset(), "p.jsonl")
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}}
    dpo_body = {"model": "tiny", "training_file": pairs, "method": dpo}
    dpo_job = wire.call("post", "/fine_tuning/jobs", json=dpo_body)
    assert dpo_job["method"]["dpo"]["hyperparameters"]["beta"] == 0.2
    continued = {"model": done["fine_tuned_model"], "training_file": file_id}
    assert wire.call("post", "/fine_tuning/jobs", json=continued)["model"] == continued["model"]
    result = wire.call("get", FILE, done["result_files"][0])
    assert result["purpose"] == "fine-tune-results"
    assert result["id"] in [f["id"] for f in wire.call("get", "/files")["data"]]

    # An Upload sent in two parts and completed into a file, and one cancelled.
    size = {"bytes": len(data), "filename": "u.jsonl", "mime_type": "text/jsonl"}
    pending = wire.call("post", "/uploads", json=size | {"purpose": "fine-tune"})
    halves = (data[: len(data) // 2], data[len(data) // 2 :])
    parts = [
        wire.call("post", UPLOAD + "/parts", pending["id"], files={"data": ("p", half)})["id"]
        for half in halves
    ]
    completed = wire.call("post", UPLOAD + "/complete", pending["id"], json={"part_ids": parts})
    assert completed["status"] == "completed" and completed["file"]["bytes"] == len(data)
    dropped = wire.call("post", "/uploads", json=size | {"purpose": "fine-tune"})["id"]
    assert wire.call("post", UPLOAD + "/cancel", dropped)["status"] == "cancelled"
    wire.call("post", UPLOAD + "/complete", dropped, json={"part_ids": parts}, expect=400)

    # Errors, each in OpenAI's error body.
    wire.call("get", FILE, "file-missing", expect=404)
    wire.call("get", JOB, "ftjob-missing", expect=404)
    wire.call("post", JOB + "/cancel", job_id, expect=400)
    wire.call("post", "/fine_tuning/jobs", json=body | {"model": "nope"}, expect=400)
    wire.call("post", "/fine_tuning/jobs", json={"model": "tiny"}, expect=400)
    bad_file = {"file": ("b.jsonl", b"{oops\n")}
    wire.call("post", "/files", data=form, files=bad_file, expect=400)
    with httpx2.Client(base_url=api_url, headers={"Authorization": "Bearer ftk_wrong"}) as stranger:
        Wire(stranger).call("get", "/models", expect=401)

    deleted = wire.call("delete", FILE, file_id)
    assert deleted == {"id": file_id, "object": "file", "deleted": True}
    wire.call("delete", FILE, file_id, expect=404)

    assert wire.checked == OPERATIONS, OPERATIONS - wire.checked

"""Authentication and tenant isolation: another tenant's id answers 404 on every route."""

from __future__ import annotations

import httpx2
import pytest

from tests.support.data import taught_dataset


def test_missing_and_bad_keys_get_401(api_url: str) -> None:
    for headers in ({}, {"Authorization": "Bearer ftk_nope"}, {"Authorization": "Basic abc"}):
        response = httpx2.get(f"{api_url}/v1/files", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.fixture
def owned(http: httpx2.Client) -> dict[str, str]:
    file_id = http.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", taught_dataset())}
    ).json()["id"]
    job = http.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": file_id}).json()
    http.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    return {"file": file_id, "job": job["id"]}


def test_other_tenant_sees_404_everywhere(owned: dict[str, str], other_http: httpx2.Client) -> None:
    file_id, job_id = owned["file"], owned["job"]
    routes = [
        ("GET", f"/v1/files/{file_id}"),
        ("GET", f"/v1/files/{file_id}/content"),
        ("DELETE", f"/v1/files/{file_id}"),
        ("GET", f"/v1/fine_tuning/jobs/{job_id}"),
        ("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel"),
        ("GET", f"/v1/fine_tuning/jobs/{job_id}/events"),
        ("GET", f"/v1/fine_tuning/jobs/{job_id}/checkpoints"),
        ("GET", f"/v1/fine_tuning/jobs/{job_id}/adapter"),
        ("GET", f"/v1/fine_tuning/jobs/{job_id}/checkpoints/ftckpt-x/adapter"),
    ]
    for method, path in routes:
        response = other_http.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    assert file_id not in [f["id"] for f in other_http.get("/v1/files").json()["data"]]
    assert job_id not in [j["id"] for j in other_http.get("/v1/fine_tuning/jobs").json()["data"]]
    created = other_http.post(
        "/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": file_id}
    )
    assert created.status_code == 400
    assert created.json()["error"]["param"] == "training_file"

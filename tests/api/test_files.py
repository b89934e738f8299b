"""The Files API over a real socket, on every backend."""

from __future__ import annotations

import httpx2
import pytest

from tests.support.data import chat_line, jsonl, taught_dataset


def upload(http: httpx2.Client, content: bytes, purpose: str = "fine-tune") -> httpx2.Response:
    return http.post("/v1/files", data={"purpose": purpose}, files={"file": ("d.jsonl", content)})


def test_upload_get_content_list_delete(http: httpx2.Client) -> None:
    content = taught_dataset()
    created = upload(http, content)
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["id"].startswith("file-")
    assert body["object"] == "file"
    assert body["bytes"] == len(content)
    assert body["status"] == "processed"
    assert body["filename"] == "d.jsonl"

    assert http.get(f"/v1/files/{body['id']}").json() == body
    assert http.get(f"/v1/files/{body['id']}/content").content == content
    listed = http.get("/v1/files").json()
    assert listed["object"] == "list"
    assert body["id"] in [f["id"] for f in listed["data"]]

    deleted = http.delete(f"/v1/files/{body['id']}").json()
    assert deleted == {"id": body["id"], "object": "file", "deleted": True}
    assert http.get(f"/v1/files/{body['id']}").status_code == 404
    assert http.get(f"/v1/files/{body['id']}/content").status_code == 404


def test_bad_file_names_lines_and_fields_and_stores_nothing(http: httpx2.Client) -> None:
    before = http.get("/v1/files").json()["data"]
    good = chat_line("q", "a")
    bad_role = {
        "messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]
    }
    content = jsonl([good, good, bad_role]) + b"{not json\n" + jsonl([{"prompt": "p"}])
    response = upload(http, content)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_file"
    assert error["param"] == "messages[0].role"
    assert "line 3" in error["message"]
    assert "line 4" in error["message"]
    assert "line 5" in error["message"]
    assert http.get("/v1/files").json()["data"] == before


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"\xff\xfe\n", "UTF-8"),
        (jsonl([{"messages": [{"role": "user", "content": "only a question"}]}]), "assistant"),
        (b"", "no examples"),
    ],
)
def test_untrainable_files_are_refused(http: httpx2.Client, content: bytes, fragment: str) -> None:
    response = upload(http, content)
    assert response.status_code == 400
    assert fragment.lower() in response.json()["error"]["message"].lower()


def test_purpose_and_missing_file(http: httpx2.Client) -> None:
    response = upload(http, taught_dataset(), purpose="assistants")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "purpose"
    response = http.post("/v1/files", data={"purpose": "fine-tune"})
    assert response.status_code == 400


def test_files_pagination_is_a_stable_cursor(http: httpx2.Client) -> None:
    ids = [upload(http, taught_dataset()).json()["id"] for _ in range(5)]
    seen: list[str] = []
    after = None
    while True:
        params = {"limit": 2, "order": "asc"} | ({"after": after} if after else {})
        page = http.get("/v1/files", params=params).json()
        seen += [f["id"] for f in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen[-5:] == ids
    assert len(seen) == len(set(seen))


def test_expiring_file_is_cleaned_up(http: httpx2.Client) -> None:
    from sqlalchemy import update

    from ftaas_core.db import get_database
    from ftaas_core.models import File
    from ftaas_core.reconcile import reconcile_once

    fields = {
        "purpose": "fine-tune",
        "expires_after[anchor]": "created_at",
        "expires_after[seconds]": "3600",
    }
    created = http.post(
        "/v1/files", data=fields, files={"file": ("e.jsonl", taught_dataset())}
    ).json()
    assert created["expires_at"] - created["created_at"] in (3599, 3600, 3601)
    bad = http.post(
        "/v1/files",
        data=fields | {"expires_after[seconds]": "5"},
        files={"file": ("e.jsonl", taught_dataset())},
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "expires_after.seconds"
    with get_database().session() as session:  # let an hour pass
        session.execute(update(File).where(File.id == created["id"]).values(expires_at=0))
    reconcile_once()
    assert http.get(f"/v1/files/{created['id']}").status_code == 404

"""Security properties: file names never reach storage, logs carry no keys, no remote code."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from tests.conftest import Backend
from tests.support.data import taught_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_file_names_never_reach_storage_paths(backend: Backend, http: httpx2.Client) -> None:
    hostile = "../../../../tmp/ftaas-escape.jsonl"
    created = http.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": (hostile, taught_dataset())}
    ).json()
    assert created["filename"] == hostile  # kept as a label only
    objects = Path(backend.env["FTAAS_DATA_DIR"]) / "objects"
    stored = [p for p in objects.rglob("*") if p.is_file()]
    assert any(p.name == created["id"] for p in stored)
    assert not any("escape" in str(p) for p in stored)
    assert not Path("/tmp/ftaas-escape.jsonl").exists()


def test_server_logs_carry_no_keys(
    backend: Backend, api_url: str, api_key: str, http: httpx2.Client
) -> None:
    http.get("/v1/files")
    httpx2.get(f"{api_url}/v1/files", headers={"Authorization": "Bearer ftk_wrong-secret-value"})
    for log in backend.root.glob("*.log"):
        text = log.read_text(errors="replace")
        assert api_key not in text
        assert "wrong-secret-value" not in text


def test_remote_code_is_never_trusted() -> None:
    sources = [
        p
        for folder in ("api", "core", "trainer_worker", "client")
        for p in (ROOT / folder).rglob("*.py")
    ]
    text = "\n".join(p.read_text() for p in sources)
    assert "trust_remote_code=True" not in text
    assert text.count("trust_remote_code=False") >= 3  # tokenizer, model, report tokenizer

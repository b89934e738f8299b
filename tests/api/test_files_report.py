"""The dataset report: the endpoint over a real socket, the SDK, and the offline CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from ftaas import AsyncClient, Client, FileReport
from ftaas.errors import BadRequestError
from tests.support.data import chat_line, jsonl, taught_dataset

TRAIN = taught_dataset()  # every pair twice: 12 examples, 6 of them duplicates
VALID = jsonl([chat_line("What do pelmites eat?", "Copper moss."), chat_line("New?", "Yes.")])


NO_TORCH = "import sys; sys.modules['torch'] = None"


def upload(http: httpx2.Client, content: bytes) -> str:
    response = http.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("d.jsonl", content)}
    )
    assert response.status_code == 200, response.text
    return response.json()["id"]


def ftaas_cli(*args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """``ftaas`` in a fresh interpreter; ``prelude`` runs first, e.g. to hide a package."""
    code = f"{prelude}\nfrom ftaas.cli import main\nmain()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


def test_report_endpoint(http: httpx2.Client) -> None:
    train, valid = upload(http, TRAIN), upload(http, VALID)

    response = http.post(
        f"/v1/files/{train}/report",
        json={"model": "tiny", "max_seq_length": 40, "validation_file": valid},
    )

    assert response.status_code == 200, response.text
    report = FileReport.model_validate(response.json())
    assert report.object == "file.report" and report.model == "tiny"
    assert (report.n_examples, report.n_errors, report.n_duplicates) == (12, 0, 6)
    assert report.duplicates[0].model_dump() == {"line": 7, "first_line": 1}
    assert report.tokens is not None and report.tokens.max > 40
    assert report.n_truncated == len(report.truncated) > 0
    assert report.validation is not None and report.validation.n_examples == 2
    assert [o.model_dump() for o in report.overlapping] == [{"line": 1, "first_line": 5}]
    assert report.preview is not None and report.preview.text.endswith("⟦Quellbrook.<|eos|>⟧")


def test_report_refuses_other_tenants_unknown_models_and_bad_bodies(
    http: httpx2.Client, other_http: httpx2.Client
) -> None:
    train = upload(http, TRAIN)
    path = f"/v1/files/{train}/report"

    assert other_http.post(path, json={"model": "tiny"}).status_code == 404
    mine = upload(other_http, TRAIN)
    theirs = http.post(path, json={"model": "tiny", "validation_file": mine})
    assert theirs.status_code == 404
    for body, param, code in [
        ({"model": "gpt-9"}, "model", "model_not_available"),
        ({"model": "broken"}, "model", "model_not_available"),
        ({"model": "tiny", "max_seq_length": 0}, "max_seq_length", "invalid_request"),
        ({"model": "tiny", "max_seq_length": "2048"}, "max_seq_length", "invalid_request"),
        ({"model": "tiny", "n_epochs": 3}, "n_epochs", "invalid_request"),
    ]:
        response = http.post(path, json=body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert (error["param"], error["code"]) == (param, code), body


def test_sdk_report(api_url: str, api_key: str) -> None:
    with Client(api_url, api_key) as client:
        train = client.files.upload(TRAIN).id
        valid = client.files.upload(VALID).id
        report = client.files.report(train, "tiny-chat", validation_file=valid)
        assert report.max_seq_length == 2048 and report.n_truncated == 0
        assert report.n_overlapping == 1
        with pytest.raises(BadRequestError) as bad:
            client.files.report(train, "gpt-9")
        assert bad.value.code == "model_not_available"

    async def scenario() -> FileReport:
        async with AsyncClient(api_url, api_key) as client:
            return await client.files.report(train, "tiny", max_seq_length=64)

    again = asyncio.run(scenario())
    assert (again.model, again.max_seq_length, again.validation) == ("tiny", 64, None)
    assert (again.tokens, again.duplicates) == (report.tokens, report.duplicates)


def test_offline_cli_check(tiny_model: Path, tmp_path: Path) -> None:
    train, valid = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    train.write_bytes(TRAIN + b"{nope\n")
    valid.write_bytes(VALID)
    args = ("files", "check", str(train), "--model", str(tiny_model), "--validation", str(valid))

    # Without torch, as in the API image: the report needs only the tokenizer.
    checked = ftaas_cli(*args, "--max-seq-length", "40", "--json", prelude=NO_TORCH)

    assert checked.returncode == 1, checked.stderr  # the file has an error
    report = FileReport.model_validate_json(checked.stdout)
    assert (report.model, report.max_seq_length) == (str(tiny_model), 40)
    assert (report.n_examples, report.n_duplicates, report.n_errors) == (12, 6, 1)
    assert report.errors[0].line == 13 and "invalid JSON" in report.errors[0].message
    assert report.n_truncated > 0 and report.n_overlapping == 1
    assert report.preview is not None and report.preview.text.endswith("⟦Quellbrook.<|eos|>⟧")

    hidden = ftaas_cli(*args, prelude="import sys; sys.modules['transformers'] = None")
    assert hidden.returncode == 1
    assert "needs transformers" in hidden.stderr and "pip install" in hidden.stderr


def test_remote_cli_report(api_url: str, api_key: str, http: httpx2.Client) -> None:
    train = upload(http, TRAIN)
    env = {**os.environ, "FTAAS_BASE_URL": api_url, "FTAAS_API_KEY": api_key}
    done = subprocess.run(
        [sys.executable, "-m", "ftaas", "files", "report", train, "--model", "tiny", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["n_duplicates"] == 6

"""The server-side ``ftaas`` commands, the schema migrations and the upload size limit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text

from ftaas_core.db import MIGRATIONS, Database, get_database
from ftaas_core.keys import create_key, hash_key, tenant_for_digest
from tests.conftest import Backend, api_server
from tests.support.data import taught_dataset
from tests.support.jobs import wait_until


def ftaas(backend: Backend, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ftaas", *args],
        env=backend.process_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_keys_create_prints_a_working_key_and_revoke_disables_it(
    backend: Backend, api_url: str
) -> None:
    key = ftaas(backend, "keys", "create", "--tenant", "cli-tenant").stdout.strip().splitlines()[-1]
    assert key.startswith("ftk_")
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx2.get(f"{api_url}/v1/files", headers=headers).status_code == 200
    with get_database().session() as session:
        stored = session.execute(text("SELECT key_hash FROM api_keys")).scalars().all()
    assert key not in stored  # only hashes are kept
    ftaas(backend, "keys", "revoke", key)

    def refused() -> bool:
        return httpx2.get(f"{api_url}/v1/files", headers=headers).status_code == 401

    # Every server refuses it within one sync of its key gate (SYNC_SECONDS).
    wait_until(refused, 2, "the revoked key refused")


def head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head() or ""


def test_migrations_are_idempotent_and_at_head(backend: Backend) -> None:
    ftaas(backend, "migrate")
    get_database().migrate()
    with get_database().session() as session:
        version = session.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert version == head_revision()


def test_an_existing_database_is_upgraded_in_place(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'old.db'}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with database.engine.begin() as conn:  # a database as the first release left it
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
    with database.session() as session:
        key = create_key(session, "old-tenant")
    database.migrate()
    with database.session() as session:
        assert tenant_for_digest(session, hash_key(key)) is not None
        assert (
            session.execute(text("SELECT version_num FROM alembic_version")).scalar()
            == head_revision()
        )
        assert session.execute(text("SELECT count(*) FROM throughput")).scalar() == 0


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_tiny_model_command(backend: Backend, tmp_path: Path) -> None:
    out = ftaas(backend, "tiny-model", str(tmp_path / "m")).stdout
    assert Path(out.strip()).joinpath("config.json").exists()
    assert (tmp_path / "m" / "tokenizer.json").exists()


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_upload_over_the_limit_is_413_while_streaming(backend: Backend, api_key: str) -> None:
    with api_server(backend, FTAAS_MAX_UPLOAD_BYTES="1000") as (url, _):
        headers = {"Authorization": f"Bearer {api_key}"}
        before = httpx2.get(f"{url}/v1/files", headers=headers).json()["data"]

        def body() -> bytes:  # chunked: no Content-Length, so the limit must hold mid-stream
            yield b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jsonl"\r\n\r\n'
            yield taught_dataset(repeat=5)
            yield b"\r\n--b--\r\n"

        response = httpx2.post(
            f"{url}/v1/files",
            headers=headers | {"Content-Type": "multipart/form-data; boundary=b"},
            content=body(),
        )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "file_too_large"
        sized = httpx2.post(
            f"{url}/v1/files",
            headers=headers,
            data={"purpose": "fine-tune"},
            files={"file": ("x.jsonl", taught_dataset(repeat=5))},
        )
        assert sized.status_code == 413
        assert httpx2.get(f"{url}/v1/files", headers=headers).json()["data"] == before

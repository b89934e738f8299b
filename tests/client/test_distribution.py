"""The SDK is its own light distribution: ``pip install ./client`` into a fresh virtualenv gives
a working SDK and its ``ftaas files|jobs`` commands, and none of the server's libraries."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "client"


@pytest.fixture(scope="module")
def sdk_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_dir = tmp_path_factory.mktemp("sdk-venv")
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", CLIENT],
        capture_output=True,
        check=True,
    )
    return python


def run(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Outside the checkout, whose folders (``api/``...) would import as namespace packages."""
    return subprocess.run([python, *args], capture_output=True, text=True, check=False, cwd="/")


def test_the_sdk_imports_and_the_server_stack_is_absent(sdk_python: Path) -> None:
    assert run(sdk_python, "-c", "from ftaas import AsyncClient, Client").returncode == 0
    for heavy in ("torch", "fastapi", "sqlalchemy", "redis", "boto3", "transformers"):
        assert run(sdk_python, "-c", f"import {heavy}").returncode != 0, heavy
    for generic in ("api", "client", "trainer_worker", "core", "tests"):
        assert run(sdk_python, "-c", f"import {generic}").returncode != 0, generic


def test_only_the_sdk_and_its_three_dependencies_are_installed(sdk_python: Path) -> None:
    listed = run(sdk_python, "-m", "pip", "list", "--format=freeze", "--exclude", "pip")
    installed = {line.split("==")[0].lower() for line in listed.stdout.split()}
    assert {"ftaas", "httpx2", "pydantic", "tqdm"} <= installed
    assert not installed & {"ftaas-core", "ftaas-api", "ftaas-worker", "torch", "fastapi"}


def test_the_client_commands_work_without_a_server_install(sdk_python: Path) -> None:
    ftaas = sdk_python.parent / "ftaas"
    top = subprocess.run([ftaas, "--help"], capture_output=True, text=True, check=True).stdout
    assert "files" in top and "jobs" in top
    assert "serve" not in top and "worker" not in top  # the server distributions add those
    for group in ("files", "jobs"):
        subprocess.run([ftaas, group, "--help"], capture_output=True, check=True)
    refused = subprocess.run(
        [ftaas, "jobs", "list", "--base-url", "http://127.0.0.1:9", "--api-key", "ftk_x"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 1 and "error" in refused.stderr  # a clear message, no trace
    assert "Traceback" not in refused.stderr


def test_this_environment_has_no_generic_top_level_package() -> None:
    for generic in ("api", "client", "trainer_worker", "core", "tests"):
        code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({generic!r}) is not None)"
        assert subprocess.run([sys.executable, "-c", code], cwd="/").returncode == 0, generic

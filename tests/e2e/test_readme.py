"""The README: its SDK example runs as written against a live server and a real worker, and its
configuration table names every setting."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ftaas_core.settings import Settings
from tests.conftest import Backend

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.training
@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_readme_sdk_example(
    backend: Backend, api_url: str, api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(b for b in blocks if "from ftaas import Client" in b)
    assert len([line for line in example.splitlines() if line.strip()]) <= 6
    monkeypatch.setenv("FTAAS_BASE_URL", api_url)
    monkeypatch.setenv("FTAAS_API_KEY", api_key)
    monkeypatch.chdir(README.parent)
    worker = backend.start("worker")
    namespace: dict[str, object] = {}
    try:
        exec(
            compile(
                example.replace('"adapter"', repr(str(tmp_path / "adapter"))), "README", "exec"
            ),
            namespace,
        )
    finally:
        worker.stop()
    assert namespace["job"].status == "succeeded"  # type: ignore[attr-defined]
    assert os.path.exists(tmp_path / "adapter" / "adapter_model.safetensors")


def test_every_setting_is_in_the_config_table() -> None:
    text = README.read_text()
    missing = [
        f"FTAAS_{name.upper()}"
        for name in Settings.model_fields
        if f"`FTAAS_{name.upper()}`" not in text
    ]
    assert not missing, f"README config table lacks {missing}"

"""The README's configuration table names every setting, so it cannot fall behind."""

from __future__ import annotations

from pathlib import Path

from ftaas_core.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_config_table() -> None:
    text = README.read_text()
    missing = [
        f"FTAAS_{name.upper()}"
        for name in Settings.model_fields
        if f"`FTAAS_{name.upper()}`" not in text
    ]
    assert not missing, f"README config table lacks {missing}"

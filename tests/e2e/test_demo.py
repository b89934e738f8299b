"""`make demo` end to end: the tiny model learns the demo facts, and a second run works too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.training
def test_demo_runs_twice_and_shows_learning(tmp_path: Path) -> None:
    for _ in range(2):
        run = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "demo.py")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "The fine-tuned model gives" in run.stdout
        assert "[ok]" in run.stdout

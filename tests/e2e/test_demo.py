"""`make demo` end to end on the real model: SmolLM2-135M-Instruct learns the demo facts through
the API, the worker and the SDK, its answers stop where they should, the job's samples file and
retention figure are there, and the general answers it had are mostly kept."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.training
def test_demo_teaches_the_real_model_and_shows_what_it_kept(smollm2: Path) -> None:
    # Run from the checkout: the demo keeps its model folder under .ftaas/, as the fixture does.
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = re.search(
        r"gives (\d+)/(\d+) taught answers \(the base: (\d+)\); of the (\d+) general questions "
        r"the base answered right it still answers (\d+) right"
        r".*retention KL from the base on held-out general prompts: ([\d.]+)",
        run.stdout,
        re.S,
    )
    assert summary, run.stdout[-3000:]
    learned, taught, known, known_before, kept, kl = summary.groups()
    assert int(learned) >= int(taught) - 1 and int(known) == 0  # exact answers, ending at EOS
    assert int(known_before) >= 3 and int(kept) >= (int(known_before) + 1) // 2
    assert float(kl) >= 0
    validation = run.stdout.split("words it never saw")[1].split("General questions")[0]
    assert validation.count("|") >= 2 * 8  # a row per sample of the validation file

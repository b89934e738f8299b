"""``make bench``: run every benchmark and print one table of ratios against baselines measured
in the same run (the machine is noisy; a ratio survives it better than an absolute number).

    python -m bench.run [--upload-mb N] [--only service api uploads train dpo scale] [--no-readme]

Every process runs torch on one thread (``OMP_NUM_THREADS=1``, unless set): on two shared cores a
two-thread torch stalls whenever any other process runs, which would drown the differences we
measure; the service's work horse and the baselines get the same setting.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

BENCHMARKS = ("service", "api", "uploads", "train", "dpo", "scale")
README = Path(__file__).with_name("README.md")
MARKERS = ("<!-- results:start -->", "<!-- results:end -->")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, torch threads per process: {os.environ['OMP_NUM_THREADS']}"
    )


def write_readme(block: str) -> None:
    """Replace the results section of bench/README.md with this run's."""
    text = README.read_text()
    start, end = MARKERS
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    README.write_text(pattern.sub(lambda _: f"{start}\n{block}\n{end}", text))


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the ftaas benchmarks.")
    parser.add_argument(
        "--upload-mb", type=int, default=1024, help="size of the uploaded JSONL (MiB)"
    )
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--no-readme", action="store_true", help="leave bench/README.md alone")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

    from bench import (
        api_throughput,
        dpo_throughput,
        scale_out,
        service_overhead,
        train_throughput,
        uploads,
    )
    from bench.common import BENCH_DIR, Row, table
    from ftaas_worker.tiny_model import build_tiny_model

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    from transformers.utils.logging import disable_progress_bar

    disable_progress_bar()
    model_dir = build_tiny_model(BENCH_DIR / "tiny-model")
    runs: dict[str, Callable[[], list[Row]]] = {
        "service": lambda: service_overhead.run(model_dir),
        "api": lambda: api_throughput.run(model_dir),
        "uploads": lambda: uploads.run(args.upload_mb),
        "train": lambda: train_throughput.run(),
        "dpo": lambda: dpo_throughput.run(),
        "scale": lambda: scale_out.run(),
    }
    rows: list[Row] = []
    started = time.perf_counter()
    failed = False
    for name in args.only:
        print(f"running {name}...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            rows += runs[name]()
        except Exception as exc:
            traceback.print_exc()
            rows.append(Row(name, "FAILED", f"{type(exc).__name__}: {exc}"[:80]))
            failed = True
        print(f"  {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    minutes = (time.perf_counter() - started) / 60
    command = "python -m bench.run " + " ".join(sys.argv[1:])
    block = "\n".join(
        [
            f"Machine: {machine()}  ",
            f"Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; "
            f"took {minutes:.1f} min  ",
            f"Command: `{command.strip()}`",
            "",
            table(rows),
        ]
    )
    print(block)
    if set(args.only) == set(BENCHMARKS) and not failed and not args.no_readme:
        write_readme(block)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""What every benchmark shares: result rows and the table, a throwaway service (the API and
optionally a worker as subprocesses on embedded defaults), synthetic chat data, and an RSS sampler.

The service helpers reuse the process management of ``tests/support/services.py`` so a benchmark
starts the service exactly the way the integration tests do.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from tests.support.services import Process, free_port, wait_until_healthy

BENCH_DIR = Path(".ftaas/bench").resolve()
"""Everything a run writes lives here (ignored by git) and is replaced by the next run."""

TERMINAL = {"succeeded", "failed", "cancelled"}


# -- results ---------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the table; ``ratio`` is ours / baseline (the caller says which way is good)."""

    benchmark: str
    metric: str
    ours: str
    baseline: str = "—"
    ratio: float | None = None
    target: str = "—"
    met: bool | None = None


def table(rows: Sequence[Row]) -> str:
    """A Markdown table, readable in a terminal and pasteable into bench/README.md as is."""
    header = ("benchmark", "metric", "ours", "baseline", "ratio", "target", "met")
    cells = [header] + [
        (
            r.benchmark,
            r.metric,
            r.ours,
            r.baseline,
            "—" if r.ratio is None else f"{r.ratio:.2f}x",
            r.target,
            "—" if r.met is None else ("yes" if r.met else "NO"),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# -- a throwaway service ---------------------------------------------------------------------
def _clear_caches() -> None:
    from ftaas_core.db import get_database
    from ftaas_core.queue import get_redis
    from ftaas_core.settings import get_settings
    from ftaas_core.storage import get_store

    for cached in (get_settings, get_database, get_store, get_redis):
        cached.cache_clear()


@dataclass
class Service:
    """A running API (and workers) on one data directory, with a tenant key."""

    url: str
    key: str
    root: Path
    api: Process
    workers: list[Process]

    def http(self, timeout: float = 60) -> httpx2.Client:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx2.Client(base_url=self.url, headers=headers, timeout=timeout)


@contextmanager
def service(
    name: str,
    models: dict[str, str] | None = None,
    workers: int = 0,
    env: dict[str, str] | None = None,
) -> Iterator[Service]:
    """Start ``ftaas serve`` (and ``ftaas worker``s) on a fresh data dir under BENCH_DIR/name.

    This process owns the embedded Redis they share (as ``ftaas dev`` would) and applies the same
    settings to itself, so it can create keys and inspect the queue; both are undone on exit.
    """
    root = BENCH_DIR / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    settings = {
        "FTAAS_DATA_DIR": str(root / "data"),
        "FTAAS_MODELS": json.dumps(models or {}),
        "FTAAS_RATE_LIMIT_PER_MINUTE": str(10**9),  # a benchmark is not abuse
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({k: v for k, v in saved.items() if not k.startswith("FTAAS_")} | settings)
    _clear_caches()
    processes: list[Process] = []
    try:
        from ftaas_core.db import get_database
        from ftaas_core.keys import create_key
        from ftaas_core.queue import get_redis

        get_redis().ping()
        database = get_database()
        database.migrate()
        with database.session() as session:
            key = create_key(session, f"bench-{name}")
        port = free_port()
        env_all = dict(os.environ)
        api = Process(["serve", "--port", str(port)], env_all, root / "api.log")
        processes.append(api)
        for i in range(workers):
            processes.append(Process(["worker"], env_all, root / f"worker-{i}.log"))
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, api)
        if workers:
            _wait_for_workers(workers)
        yield Service(url, key, root, api, processes[1:])
    finally:
        for process in processes:
            process.stop()
        from ftaas_core.db import get_database

        get_database().engine.dispose()
        os.environ.clear()
        os.environ.update(saved)
        _clear_caches()


def _wait_for_workers(n: int, timeout: float = 60) -> None:
    """Until ``n`` rq workers have registered: only then is a submitted job picked up at once."""
    from rq import Worker

    from ftaas_core.queue import get_redis

    deadline = time.monotonic() + timeout
    while len(Worker.all(connection=get_redis())) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} worker(s) did not register in {timeout} s")
        time.sleep(0.1)


def upload_bytes(http: httpx2.Client, content: bytes, name: str = "train.jsonl") -> str:
    response = http.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": (name, content)}
    )
    response.raise_for_status()
    return response.json()["id"]


# -- data ------------------------------------------------------------------------------------
def _words() -> list[str]:
    from ftaas_worker.tiny_model import CORPUS

    return CORPUS.split()


def chat_rows(n: int, seed: int, min_words: int, max_words: int) -> list[dict[str, Any]]:
    """Variable-length chats (system, user, assistant) from the tiny tokenizer's own corpus, so
    every word tokenises into few tokens; the same seed gives the same rows."""
    rng = random.Random(seed)
    words = _words()

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    return [
        {
            "messages": [
                {"role": "system", "content": "You answer in one short sentence."},
                {"role": "user", "content": text(min_words, max_words)},
                {"role": "assistant", "content": text(min_words, max_words)},
            ]
        }
        for _ in range(n)
    ]


def preference_rows(n: int, seed: int, min_words: int, max_words: int) -> list[dict[str, Any]]:
    """Pairs of answers of different lengths to the same prompt, words from the tiny
    tokenizer's corpus; the same seed gives the same rows."""
    rng = random.Random(seed)
    words = _words()

    def text() -> list[dict[str, str]]:
        content = " ".join(rng.choice(words) for _ in range(rng.randint(min_words, max_words)))
        return [{"role": "assistant", "content": content}]

    return [
        {
            "input": {"messages": [{"role": "user", "content": text()[0]["content"]}]},
            "preferred_output": text(),
            "non_preferred_output": text(),
        }
        for _ in range(n)
    ]


def jsonl(rows: Sequence[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def parse_rows(rows: Sequence[dict[str, Any]]) -> list[Any]:
    """The rows as the trainer sees them (``ftaas_core.datasets`` examples)."""
    from ftaas_core.datasets import iter_examples

    return list(iter_examples([jsonl(rows)]))


# -- measuring -------------------------------------------------------------------------------
class PeakRSS:
    """Samples a process's resident memory in a thread; ``growth`` is peak minus the start, in
    bytes. Sampling (every 5 ms) rather than ru_maxrss, because the server was up before."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        import psutil

        self._process = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.start = self.peak = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self._interval)

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.start


MB = 1024 * 1024


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s"

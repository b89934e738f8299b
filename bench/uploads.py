"""A large JSONL dataset uploaded through the API into the local and the S3 object store, in
one ``POST /v1/files`` and through the Uploads API in 64 MiB parts: how fast it streams and
validates, and whether the server's memory stays flat while it does.

Baselines, measured on the same file in the same run: for MB/s, a raw local copy
(``shutil.copyfile``) made just before each upload, into the same directory, and kept while the
upload runs; for lines/s, the dataset validator alone, in this process. On a virtual machine a
write into memory the guest has never touched costs several times one into recycled page
cache, so a copy measured once, at another moment, can run at 0.4 or at 4 GB/s: the page cache
is recycled first, and each copy and the step after it start from a ``sync``. The S3 endpoint is moto's server in
a process of its own, as S3 would be: in this process it would take the GIL from the client
that sends the upload.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.common import BENCH_DIR, MB, PeakRSS, Row, chat_rows, jsonl, service
from tests.support.services import answers, free_port

RSS_TARGET_MB = 100
OLD_LINES_PER_SECOND = 21_866
"""What the validator behind /v1/files managed before it decoded lines with msgspec (the run of
2026-11-23, local store)."""
WHOLE, IN_PARTS = "POST /v1/files", "/v1/uploads, 64 MiB parts"
TARGETS = {"local": 0.5, "S3 (moto)": 0.3}
"""MB/s of a POST /v1/files against a raw copy."""
RECYCLED_COPIES = 4
"""More than any one measured step writes: a copy and the upload's file, its parts, and moto's
copy of it."""
S3_ENV = {
    "FTAAS_STORAGE_URL": "s3://ftaas-test/bench",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class Baselines:
    size: int
    n_lines: int
    validate_lps: float


@dataclass(frozen=True)
class Measured:
    """One upload and the raw copy measured just before it."""

    route: str
    backend: str
    seconds: float
    growth: int
    copy_seconds: float


def make_dataset(path: Path, size_mb: int) -> int:
    """Write a valid chat JSONL of about ``size_mb`` MiB by cycling varied rows; returns lines."""
    lines = [json.dumps(row) + "\n" for row in chat_rows(2000, 7, 20, 200)]
    encoded = [line.encode() for line in lines]
    n, size = 0, 0
    with path.open("wb") as out:
        while size < size_mb * MB:
            line = encoded[n % len(encoded)]
            out.write(line)
            size += len(line)
            n += 1
    return n


def recycle_page_cache(path: Path, copies: int) -> None:
    """Copy ``path`` ``copies`` times and delete the copies, so that the writes measured next
    land in page cache the guest has used before, as on a server that has run a while. On a
    virtual machine, memory the guest has never touched must first be handed over by its host,
    which makes a write there several times slower, and by how much varies."""
    scratch = BENCH_DIR / "scratch"
    scratch.mkdir(exist_ok=True)
    try:
        for n in range(copies):
            shutil.copyfile(path, scratch / f"{n}.jsonl")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def raw_copy_seconds(path: Path, into: Path) -> float:
    """Seconds to copy ``path`` into the directory ``into``, where the copy stays; each side
    of the copy starts on a synced page cache, as the upload after it does."""
    os.sync()
    start = time.perf_counter()
    shutil.copyfile(path, into / "raw-copy.jsonl")
    seconds = time.perf_counter() - start
    os.sync()
    return seconds


def validator_seconds(path: Path) -> float:
    from ftaas_core.datasets import DatasetValidator
    from ftaas_core.storage import iter_stream

    validator = DatasetValidator()
    start = time.perf_counter()
    for chunk in iter_stream(path.open("rb")):
        validator.feed(chunk)
    report = validator.finish()
    seconds = time.perf_counter() - start
    if not report.ok:
        raise RuntimeError(f"the generated dataset is invalid: {report.errors[:3]}")
    return seconds


def upload(name: str, path: Path, env: dict[str, str], route: str, backend: str) -> Measured:
    """Upload ``path`` through a fresh API, in one request or in 64 MiB parts: seconds, the
    server's peak RSS growth, and a raw copy's seconds just before."""
    from ftaas import Client
    from ftaas.resources import PART_BYTES

    size = path.stat().st_size
    limit = {"FTAAS_MAX_UPLOAD_BYTES": str(size + MB)}
    with service(name, env=env | limit) as svc, Client(svc.url, svc.key, timeout=3600) as client:
        # A small upload first, so one-off work (imports, the store's client) is not counted.
        client.files.upload(jsonl(chat_rows(10, 0, 3, 10)), filename="warm-up.jsonl")
        copy_seconds = raw_copy_seconds(path, svc.root)
        with PeakRSS(svc.api.pid) as rss:
            start = time.perf_counter()
            uploaded = client.files.upload(path, part_bytes=size if route == WHOLE else PART_BYTES)
            seconds = time.perf_counter() - start
        if uploaded.bytes != size:
            raise RuntimeError(f"uploaded {uploaded.bytes} bytes of {size}")
    shutil.rmtree(svc.root, ignore_errors=True)
    return Measured(route, backend, seconds, rss.growth, copy_seconds)


def direct_s3_seconds(path: Path, endpoint: str) -> float:
    """The S3 endpoint's own speed: boto3 putting the file there in 8 MiB parts, no API."""
    from boto3.s3.transfer import TransferConfig

    client = _s3_client(endpoint)
    start = time.perf_counter()
    parts = TransferConfig(multipart_chunksize=8 * MB, max_concurrency=1)
    client.upload_file(str(path), "ftaas-test", "direct/upload.jsonl", Config=parts)
    seconds = time.perf_counter() - start
    client.delete_object(Bucket="ftaas-test", Key="direct/upload.jsonl")
    return seconds


def _s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
    )


@contextmanager
def _listening(argv: list[str], port: int, name: str) -> Iterator[str]:
    """A server process of this Python, logging to BENCH_DIR/``name``.log, once its port
    answers; stopped on exit."""
    log = (BENCH_DIR / f"{name}.log").open("wb")
    server = subprocess.Popen([sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not answers("127.0.0.1", port):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"{name} did not start: see {BENCH_DIR / name}.log")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@contextmanager
def moto_process() -> Iterator[str]:
    """moto's S3 server in its own process, with the bucket the benchmark writes to."""
    port = free_port()
    argv = ["-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with _listening(argv, port, "moto") as endpoint:
        _s3_client(endpoint).create_bucket(Bucket="ftaas-test")
        yield endpoint


def http_only_seconds(path: Path) -> float:
    """Seconds for the SDK's HTTP client to send ``path`` as a multipart upload to uvicorn
    serving :mod:`bench.sink`, which drops it: the most any API on uvicorn could reach."""
    import httpx2

    port = free_port()
    argv = ["-m", "uvicorn", "bench.sink:app", "--port", str(port), "--log-level", "warning"]
    with _listening(argv, port, "sink") as url, httpx2.Client(timeout=3600) as client:
        with path.open("rb") as warm_up:  # the first request pays for imports and the connection
            client.post(url, files={"file": ("warm-up.jsonl", warm_up.read(MB))})
        start = time.perf_counter()
        with path.open("rb") as file:
            answer = client.post(url, files={"file": (path.name, file)})
        seconds = time.perf_counter() - start
    if int(answer.text) <= path.stat().st_size:
        raise RuntimeError(f"the sink received {answer.text} bytes of a larger body")
    return seconds


def _rows(name: str, m: Measured, base: Baselines) -> list[Row]:
    mbs, lps = base.size / MB / m.seconds, base.n_lines / m.seconds
    copy_mbs, validate_lps = base.size / MB / m.copy_seconds, base.validate_lps
    route, backend, growth = m.route, m.backend, m.growth
    target = TARGETS[backend] if route == WHOLE else None
    lines_target = 4 * OLD_LINES_PER_SECOND if route == WHOLE else None
    return [
        Row(
            name,
            f"{route}, {backend}: MB/s (baseline: raw local file copy)",
            f"{mbs:.1f} MB/s",
            f"{copy_mbs:.0f} MB/s",
            mbs / copy_mbs,
            target=f">= {target}x" if target else "—",
            met=mbs / copy_mbs >= target if target else None,
        ),
        Row(
            name,
            f"{route}, {backend}: validated lines/s (baseline: validator alone, in-process)",
            f"{lps:,.0f}/s",
            f"{validate_lps:,.0f}/s",
            lps / validate_lps,
            target=f">= {lines_target:,}/s (4x {OLD_LINES_PER_SECOND:,})" if lines_target else "—",
            met=lps >= lines_target if lines_target else None,
        ),
        Row(
            name,
            f"{route}, {backend}: server peak RSS growth",
            f"{growth / MB:.1f} MB",
            target=f"< {RSS_TARGET_MB} MB",
            met=growth < RSS_TARGET_MB * MB,
        ),
    ]


def after_a_copy(path: Path, measure: Callable[[], float]) -> tuple[float, float]:
    """``measure``'s seconds, and those of a raw copy of ``path`` made just before (and kept
    while it runs)."""
    copies = BENCH_DIR / "raw-copies"
    copies.mkdir(exist_ok=True)
    try:
        copy_seconds = raw_copy_seconds(path, copies)
        return measure(), copy_seconds
    finally:
        shutil.rmtree(copies, ignore_errors=True)


def run(size_mb: int) -> list[Row]:
    path = BENCH_DIR / "upload.jsonl"
    n_lines = make_dataset(path, size_mb)
    size = path.stat().st_size
    runs: list[Measured] = []
    try:
        recycle_page_cache(path, RECYCLED_COPIES)
        validate_s = validator_seconds(path)
        http_only = after_a_copy(path, lambda: http_only_seconds(path))
        for route in (WHOLE, IN_PARTS):
            runs.append(upload("uploads-local", path, {}, route, "local"))
        with moto_process() as endpoint:
            moto_only = after_a_copy(path, lambda: direct_s3_seconds(path, endpoint))
            s3_env = S3_ENV | {"FTAAS_S3_ENDPOINT_URL": endpoint}
            for route in (WHOLE, IN_PARTS):
                runs.append(upload("uploads-s3", path, s3_env, route, "S3 (moto)"))
    finally:
        path.unlink(missing_ok=True)

    name = f"upload {size / MB:.0f} MiB ({n_lines} lines)"
    base = Baselines(size, n_lines, n_lines / validate_s)
    alone = [
        _against_copy(name, "uvicorn alone: the body to an app that drops it", size, *http_only),
        _against_copy(name, "S3 (moto) itself: boto3 upload_file, 8 MiB parts", size, *moto_only),
    ]
    return alone + [row for m in runs for row in _rows(name, m, base)]


def _against_copy(name: str, what: str, size: int, seconds: float, copy_seconds: float) -> Row:
    return Row(
        name,
        f"{what} (baseline: raw local copy)",
        f"{size / MB / seconds:.1f} MB/s",
        f"{size / MB / copy_seconds:.0f} MB/s",
        copy_seconds / seconds,
    )

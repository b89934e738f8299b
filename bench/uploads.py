"""A large JSONL dataset uploaded through the API into the local and the S3 object store: how
fast it streams and validates, and whether the server's memory stays flat while it does.

Baselines, measured on the same file in the same run: a raw local copy (``shutil.copyfile``) for
MB/s, and the dataset validator alone, in this process, for lines/s.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from bench.common import BENCH_DIR, MB, PeakRSS, Row, chat_rows, jsonl, service
from tests.support.services import s3_server

RSS_TARGET_MB = 100


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


def raw_copy_seconds(path: Path) -> float:
    target = path.with_suffix(".copy")
    start = time.perf_counter()
    shutil.copyfile(path, target)
    seconds = time.perf_counter() - start
    target.unlink()
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


def upload(name: str, path: Path, env: dict[str, str]) -> tuple[float, int]:
    """Seconds to upload ``path`` through a fresh API, and the server's peak RSS growth."""
    from ftaas import Client

    limit = {"FTAAS_MAX_UPLOAD_BYTES": str(path.stat().st_size + MB)}
    with service(name, env=env | limit) as svc, Client(svc.url, svc.key, timeout=3600) as client:
        # A small upload first, so one-off work (imports, the store's client) is not counted.
        client.files.upload(jsonl(chat_rows(10, 0, 3, 10)), filename="warm-up.jsonl")
        with PeakRSS(svc.api.pid) as rss:
            start = time.perf_counter()
            uploaded = client.files.upload(path)
            seconds = time.perf_counter() - start
        if uploaded.bytes != path.stat().st_size:
            raise RuntimeError(f"uploaded {uploaded.bytes} bytes of {path.stat().st_size}")
    shutil.rmtree(svc.root, ignore_errors=True)
    return seconds, rss.growth


def run(size_mb: int) -> list[Row]:
    path = BENCH_DIR / "upload.jsonl"
    n_lines = make_dataset(path, size_mb)
    size = path.stat().st_size
    try:
        copy_s = raw_copy_seconds(path)
        validate_s = validator_seconds(path)
        local_s, local_rss = upload("uploads-local", path, {})
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request
        with s3_server() as endpoint:
            s3_env = {
                "FTAAS_STORAGE_URL": "s3://ftaas-test/bench",
                "FTAAS_S3_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
            s3_s, s3_rss = upload("uploads-s3", path, s3_env)
    finally:
        path.unlink(missing_ok=True)

    name = f"upload {size / MB:.0f} MiB ({n_lines} lines)"
    copy_mbs, validate_lps = size / MB / copy_s, n_lines / validate_s
    rows: list[Row] = []
    for backend, seconds, growth in (("local", local_s, local_rss), ("S3 (moto)", s3_s, s3_rss)):
        mbs, lps = size / MB / seconds, n_lines / seconds
        rows += [
            Row(
                name,
                f"{backend}: MB/s (baseline: raw local file copy)",
                f"{mbs:.1f} MB/s",
                f"{copy_mbs:.0f} MB/s",
                mbs / copy_mbs,
            ),
            Row(
                name,
                f"{backend}: validated lines/s (baseline: validator alone, in-process)",
                f"{lps:,.0f}/s",
                f"{validate_lps:,.0f}/s",
                lps / validate_lps,
            ),
            Row(
                name,
                f"{backend}: server peak RSS growth",
                f"{growth / MB:.1f} MB",
                target=f"< {RSS_TARGET_MB} MB",
                met=growth < RSS_TARGET_MB * MB,
            ),
        ]
    return rows

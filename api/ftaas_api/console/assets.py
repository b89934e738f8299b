"""The console's static files, read from the package and kept gzipped in memory.

Only files that exist under ``static/`` when the process starts can be served, so a request
path never reaches the file system. A file's bytes are cached by its modification time, so an
edited asset is served fresh without a restart.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

STATIC = Path(__file__).with_name("static")
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    media_type: str
    etag: str


@cache
def asset_paths() -> dict[str, Path]:
    """Served name (``js/main.js``) -> file, for every file of a type the console serves."""
    return {
        path.relative_to(STATIC).as_posix(): path
        for path in sorted(STATIC.rglob("*"))
        if path.is_file() and path.suffix in MEDIA_TYPES
    }


def asset(name: str) -> Asset | None:
    """The asset served as ``name``, or None when there is none."""
    path = asset_paths().get(name)
    return None if path is None else _read(path, path.stat().st_mtime_ns)


@lru_cache(maxsize=64)
def _read(path: Path, _mtime_ns: int) -> Asset:
    body = path.read_bytes()
    return Asset(
        body=body,
        gzipped=gzip.compress(body, compresslevel=9, mtime=0),
        media_type=MEDIA_TYPES[path.suffix],
        etag=f'"{hashlib.sha256(body).hexdigest()[:32]}"',
    )

"""The reproducibility manifest stored with every adapter: what went in, with what, on what."""

from __future__ import annotations

import hashlib
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

SMALL_FILE = 16 * 1024 * 1024
LIBRARIES = ("ftaas", "torch", "transformers", "peft", "tokenizers", "safetensors", "bitsandbytes")


def model_fingerprint(model_path: str) -> dict[str, Any]:
    """A local model: a digest of its file names and sizes and of every small file's bytes
    (weights are identified by name and size, so fingerprinting a 16 GB model stays fast).
    A hub id: the cached snapshot's commit, which names the exact revision trained on."""
    path = Path(model_path)
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            size = file.stat().st_size
            digest.update(f"{file.relative_to(path).as_posix()}\0{size}\0".encode())
            if size <= SMALL_FILE:
                digest.update(file.read_bytes())
        return {"source": "path", "path": str(path.resolve()), "sha256": digest.hexdigest()}
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(model_path, local_files_only=True)
        revision: str | None = Path(snapshot).name
    except Exception:  # not in the local cache: the revision cannot be named
        revision = None
    return {"source": "hub", "id": model_path, "revision": revision}


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name()} x{torch.cuda.device_count()}"
    return f"cpu: {platform.machine()}, {torch.get_num_threads()} threads"

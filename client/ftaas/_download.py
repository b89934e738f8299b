"""Adapter downloads: stream the tar.gz to disk while hashing, verify, then unpack safely."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path
from types import TracebackType

import httpx2

from ftaas.errors import IntegrityError

CHECKSUM_HEADER = "X-Content-SHA256"


def expected_sha256(response: httpx2.Response) -> str:
    """The announced checksum; after a redirect to the object store it is on the API's answer."""
    for answer in (response, *reversed(response.history)):
        if CHECKSUM_HEADER in answer.headers:
            return answer.headers[CHECKSUM_HEADER].strip().lower()
    raise IntegrityError(
        f"The server sent no {CHECKSUM_HEADER} header; refusing an unverified adapter."
    )


class AdapterDownload:
    """The archive is written inside ``dest`` as a partial file, removed whatever happens.

    Use as a context manager around the writes (an exception removes the partial file), then
    call ``unpack``, which is blocking (async callers run it in a thread).
    """

    def __init__(self, dest: Path, response: httpx2.Response) -> None:
        self.dest = dest
        self.expected = expected_sha256(response)
        dest.mkdir(parents=True, exist_ok=True)
        self.partial = dest / ".adapter.tar.gz.partial"
        self._file = self.partial.open("wb")
        self._digest = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._digest.update(chunk)

    def __enter__(self) -> AdapterDownload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._file.close()
        if exc is not None:
            self.partial.unlink(missing_ok=True)

    def unpack(self) -> Path:
        """Check the sha256, then extract with tarfile's ``data`` filter (no absolute paths,
        no escaping links, no devices), so a hostile archive cannot write outside ``dest``."""
        try:
            actual = self._digest.hexdigest()
            if actual != self.expected:
                raise IntegrityError(
                    f"Adapter download is corrupt: sha256 {actual} does not match the "
                    f"announced {self.expected}."
                )
            with tarfile.open(self.partial, "r:gz") as tar:
                tar.extractall(self.dest, filter="data")
        finally:
            self.partial.unlink(missing_ok=True)
        return self.dest

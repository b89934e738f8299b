"""Streaming multipart reader for file uploads (``/v1/files``) and Upload parts.

The body is parsed as it arrives: the one file part goes to a temporary file (and, for a whole
dataset, through the JSONL validator) chunk by chunk, every other part is a small form field.
Everything is bounded while it streams, so memory stays flat whatever is sent: the file (413),
the number of parts, each field and each part header (400), and the whole body (413, by
:mod:`ftaas_api.limits`).
Nothing is kept unless the body ends with its closing boundary, and nothing becomes an object
of the store before that (a store that copies may be sent the file as it arrives, see
:mod:`ftaas_api.follow`).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from ftaas_api.errors import APIError
from ftaas_api.follow import Follower
from ftaas_core.datasets import DatasetReport, DatasetValidator
from ftaas_core.storage import ObjectStore

log = logging.getLogger("ftaas.api")

MAX_PARTS = 16
MAX_FIELD_BYTES = 4 * 1024
MAX_PART_HEADERS = 8
MAX_HEADER_BYTES = 4 * 1024
"""One header line: room for a long ``Content-Disposition`` filename."""
PARSE_BATCH_BYTES = 1024 * 1024
"""Body bytes gathered before the parser's thread gets them: a hop per network chunk costs
more than parsing it. The first chunk goes at once, so the parts' headers are read (and the
file part's temporary file made) as soon as they arrive."""
MULTIPART_OVERHEAD = MAX_PARTS * (MAX_FIELD_BYTES + MAX_PART_HEADERS * MAX_HEADER_BYTES + 512)
"""The most a valid body holds besides the file's bytes (512: a delimiter line of the longest
boundary python-multipart accepts, and header line ends)."""


def form_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """A route's ``openapi_extra`` for a multipart body, which FastAPI cannot see: the routes
    read the stream themselves."""
    schema = {"type": "object", "required": required, "properties": properties}
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": schema}},
        }
    }


def max_body_bytes(max_upload_bytes: int) -> int:
    """The bound of a whole upload body: the file's limit plus whatever else may be valid."""
    return max_upload_bytes + MULTIPART_OVERHEAD


Follow = Callable[[Path], Follower]
"""Makes the follower that streams the file part into the store as it arrives."""


@dataclass
class ReceivedUpload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    path: Path | None = None
    size: int = 0
    report: DatasetReport | None = None
    follower: Follower | None = None

    def keep(self, store: ObjectStore, key: str) -> None:
        """Store the file under ``key``: finish its follower's write, or hand the file over."""
        assert self.path is not None
        if self.follower is not None:
            self.follower, follower = None, self.follower
            follower.commit()
        else:
            store.adopt(key, self.path)

    def discard(self) -> None:
        if self.follower is not None:
            self.follower.abort()
        if self.path:
            self.path.unlink(missing_ok=True)


class _DatasetFile:
    """The file part: a temporary file and, for a whole dataset, the JSONL validator (and a
    follower), fed the same chunks."""

    def __init__(self, tmp_dir: Path, validate: bool, follow: Follow | None) -> None:
        self.out: IO[bytes] = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed by finish()
            dir=tmp_dir, prefix="upload-", suffix=".jsonl", delete=False
        )
        self.path = Path(self.out.name)
        self.validator = DatasetValidator() if validate else None
        self.follower = follow(self.path) if follow is not None else None

    def write(self, chunk: bytes) -> None:
        self.out.write(chunk)
        if self.validator is not None:
            self.validator.feed(chunk)
        if self.follower is not None:
            self.out.flush()
            self.follower.wrote(len(chunk))

    def finish(self) -> DatasetReport | None:
        self.out.close()
        return self.validator.finish() if self.validator is not None else None


class _Receiver:
    """Parser callbacks: route each part's bytes to its form field or to the dataset file."""

    def __init__(
        self, max_bytes: int, tmp_dir: Path, file_field: str, validate: bool, follow: Follow | None
    ) -> None:
        self.max_bytes = max_bytes
        self.tmp_dir = tmp_dir
        self.file_field = file_field
        self.validate = validate
        self.follow = follow
        self.upload = ReceivedUpload()
        self.ended = False
        self._parts = 0
        self._headers: dict[bytes, bytes] = {}
        self._header_field = b""
        self._header_value = b""
        self._name = ""
        self._field: bytearray | None = None  # the value being read; None in the file part
        self._file: _DatasetFile | None = None

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise APIError(400, f"An upload holds at most {MAX_PARTS} parts.")
        self._headers = {}

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        if self._name != self.file_field:
            self._field = bytearray()
            return
        if self._file is not None:
            raise APIError(400, "Send exactly one file part.", param=self.file_field)
        filename = params.get(b"filename", b"upload.jsonl").decode("utf-8", "replace")
        self.upload.filename = filename[-255:] or "upload.jsonl"
        self._file = _DatasetFile(self.tmp_dir, self.validate, self.follow)
        self.upload.path = self._file.path
        self.upload.follower = self._file.follower
        self._field = None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._field is not None:
            if len(self._field) + len(chunk) > MAX_FIELD_BYTES:
                name = self._name[:64]
                raise APIError(
                    400, f"Form field '{name}' is longer than {MAX_FIELD_BYTES} bytes.", param=name
                )
            self._field += chunk
        elif self._file is not None:
            self.upload.size += len(chunk)
            if self.upload.size > self.max_bytes:
                raise APIError(
                    413,
                    f"File is larger than the limit of {self.max_bytes} bytes.",
                    param=self.file_field,
                    code="file_too_large",
                )
            self._file.write(chunk)

    def _part_end(self) -> None:
        if self._field is not None:
            if self._name:
                self.upload.fields[self._name] = self._field.decode("utf-8", "replace")
        elif self._file is not None:
            self.upload.report = self._file.finish()

    def _end(self) -> None:
        self.ended = True

    def close(self) -> None:
        """Drop whatever was received: the body failed or ended early."""
        if self._file is not None:
            self._file.out.close()
        self.upload.discard()


async def receive_upload(
    request: Request,
    max_bytes: int,
    tmp_dir: Path,
    *,
    file_field: str = "file",
    validate: bool = True,
    follow: Follow | None = None,
) -> ReceivedUpload:
    """Parse the whole body; its form fields and the file part ``file_field`` (in a temporary
    file, validated as a dataset when ``validate``, sent on by ``follow``'s follower) come
    back only once the closing boundary has arrived."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise APIError(400, "Upload files as multipart/form-data.", param=file_field)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    receiver = _Receiver(max_bytes, tmp_dir, file_field, validate, follow)
    try:
        await _parse(request, boundary, receiver)
        if not receiver.ended:
            raise APIError(
                400, "The multipart body ended before its closing boundary.", param=file_field
            )
    except BaseException:
        receiver.close()  # not awaited: a cancelled request would cancel the await, not the file
        raise
    return receiver.upload


async def _parse(request: Request, boundary: bytes, receiver: _Receiver) -> None:
    """Feed the body to python-multipart, which bounds part headers; its parse errors and a
    client gone mid-body become 400s (nobody reads the latter: it is for a quiet log)."""
    try:
        parser = MultipartParser(
            boundary,
            receiver.callbacks(),  # type: ignore[arg-type]
            max_header_count=MAX_PART_HEADERS,
            max_header_size=MAX_HEADER_BYTES,
        )
        batch: list[bytes] = []
        gathered = 0
        first = True
        async for chunk in request.stream():
            batch.append(chunk)
            gathered += len(chunk)
            if gathered >= PARSE_BATCH_BYTES or first:
                first = False
                await run_in_threadpool(parser.write, b"".join(batch))
                batch, gathered = [], 0
        await run_in_threadpool(parser.write, b"".join(batch))
        parser.finalize()
    except FormParserError as exc:
        raise APIError(400, f"Malformed multipart body: {exc}.", param=receiver.file_field) from exc
    except ClientDisconnect as exc:
        log.warning("upload abandoned: the client disconnected mid-body")
        raise APIError(400, "The client disconnected before the body ended.") from exc

"""Streaming multipart reader for file uploads.

The body is parsed as it arrives: the file part goes to a temporary file and through the JSONL
validator chunk by chunk, and the size limit is enforced while streaming (413), so memory stays
flat whatever the upload's size and nothing reaches the object store before it has passed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from ftaas_api.errors import APIError
from ftaas_core.datasets import DatasetReport, DatasetValidator

MAX_FIELD_BYTES = 64 * 1024
MULTIPART_OVERHEAD = 64 * 1024


@dataclass
class ReceivedUpload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    path: Path | None = None
    size: int = 0
    report: DatasetReport | None = None

    def discard(self) -> None:
        if self.path:
            self.path.unlink(missing_ok=True)


class _Receiver:
    """Parser callbacks: route each part's bytes to a form field or to the dataset file."""

    def __init__(self, max_bytes: int, tmp_dir: Path) -> None:
        self.max_bytes = max_bytes
        self.tmp_dir = tmp_dir
        self.upload = ReceivedUpload()
        self._headers: dict[bytes, bytes] = {}
        self._header_field = b""
        self._header_value = b""
        self._name: str | None = None
        self._value = bytearray()
        self._out: IO[bytes] | None = None
        self._validator: DatasetValidator | None = None

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers, self._name, self._value = {}, None, bytearray()

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
        if self._name == "file":
            if self._out is not None:
                raise APIError(400, "Send exactly one file part.", param="file")
            filename = params.get(b"filename", b"upload.jsonl").decode("utf-8", "replace")
            self.upload.filename = filename[-255:] or "upload.jsonl"
            self._out = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in finish()
                dir=self.tmp_dir, prefix="upload-", suffix=".jsonl", delete=False
            )
            self.upload.path = Path(self._out.name)
            self._validator = DatasetValidator()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._out is None or self._validator is None:
            if len(self._value) + len(chunk) > MAX_FIELD_BYTES:
                raise APIError(400, f"Form field '{self._name}' is too long.", param=self._name)
            self._value += chunk
            return
        self.upload.size += len(chunk)
        if self.upload.size > self.max_bytes:
            raise APIError(
                413,
                f"File is larger than the limit of {self.max_bytes} bytes.",
                param="file",
                code="file_too_large",
            )
        self._out.write(chunk)
        self._validator.feed(chunk)

    def _part_end(self) -> None:
        if self._name and self._name != "file":
            self.upload.fields[self._name] = self._value.decode("utf-8", "replace")

    def finish(self) -> ReceivedUpload:
        if self._out is not None:
            self._out.close()
        if self._validator is not None:
            self.upload.report = self._validator.finish()
        return self.upload


async def receive_upload(request: Request, max_bytes: int, tmp_dir: Path) -> ReceivedUpload:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise APIError(400, "Upload files as multipart/form-data.", param="file")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD:
        raise APIError(
            413,
            f"File is larger than the limit of {max_bytes} bytes.",
            param="file",
            code="file_too_large",
        )
    tmp_dir.mkdir(parents=True, exist_ok=True)
    receiver = _Receiver(max_bytes, tmp_dir)
    parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            await run_in_threadpool(parser.write, chunk)
        parser.finalize()
        return await run_in_threadpool(receiver.finish)
    except BaseException:
        receiver.finish().discard()
        raise

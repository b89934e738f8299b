"""Uploads (files, and an Upload's parts) spool to FTAAS_UPLOAD_TMP_DIR, which holds at most
FTAAS_MAX_UPLOAD_BYTES times FTAAS_MAX_CONCURRENT_UPLOADS: an upload that would not fit is
refused (429, Retry-After) before a byte of it is written, never queued and never spooled past
the volume's size."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx2

from tests.conftest import Backend, api_server, new_key
from tests.support.data import taught_dataset
from tests.support.jobs import wait_until

BOUNDARY = "spool"


class HeldUpload:
    """A chunked upload (it declares no size, so it reserves the whole limit) whose file part
    has begun and whose end waits for :meth:`finish`."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self._go_on = threading.Event()
        self.response: httpx2.Response | None = None
        headers = headers | {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        self._thread = threading.Thread(
            target=self._send, args=(f"{url}/v1/files", headers), daemon=True
        )
        self._thread.start()

    def _body(self) -> Iterator[bytes]:
        yield (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            'filename="held.jsonl"\r\n\r\n'
        ).encode()
        yield taught_dataset()
        self._go_on.wait(60)
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    def _send(self, url: str, headers: dict[str, str]) -> None:
        self.response = httpx2.post(url, headers=headers, content=self._body(), timeout=60)

    def finish(self) -> httpx2.Response:
        self._go_on.set()
        self._thread.join(60)
        assert self.response is not None
        return self.response


def spooled(spool: Path) -> list[Path]:
    return list(spool.glob("upload-*")) if spool.is_dir() else []


def test_an_upload_beyond_the_spool_is_429_and_spools_nothing(
    backend: Backend, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    limits = {
        "FTAAS_MAX_UPLOAD_BYTES": str(1024 * 1024),
        "FTAAS_MAX_CONCURRENT_UPLOADS": "1",
        "FTAAS_UPLOAD_TMP_DIR": str(spool),
    }
    headers = {"Authorization": f"Bearer {new_key('spool')}"}
    files = {"file": ("small.jsonl", taught_dataset())}
    with api_server(backend, **limits) as (url, _):
        upload = {"bytes": 4096, "filename": "big.jsonl", "mime_type": "text/jsonl"}
        created = httpx2.post(
            f"{url}/v1/uploads", headers=headers, json=upload | {"purpose": "fine-tune"}
        )
        upload_id = created.json()["id"]
        held = HeldUpload(url, headers)
        wait_until(lambda: spooled(spool), 30, "the held upload to spool to FTAAS_UPLOAD_TMP_DIR")

        refused = httpx2.post(
            f"{url}/v1/files", headers=headers, data={"purpose": "fine-tune"}, files=files
        )
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "too_many_uploads"
        assert int(refused.headers["retry-after"]) > 0
        part = httpx2.post(
            f"{url}/v1/uploads/{upload_id}/parts",
            headers=headers,
            files={"data": ("blob", taught_dataset())},
        )
        assert part.status_code == 429, "an Upload's parts spool there too"
        assert len(spooled(spool)) == 1, "the refused uploads wrote nothing"

        assert held.finish().status_code == 200
        room_again = httpx2.post(
            f"{url}/v1/files", headers=headers, data={"purpose": "fine-tune"}, files=files
        )
        assert room_again.status_code == 200, room_again.text
        assert spooled(spool) == []

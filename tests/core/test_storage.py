"""Both object-store backends through the one interface: streaming, multipart, no leftovers."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftaas_core.storage import ObjectNotFound, get_store, iter_stream
from tests.conftest import Backend

MIB = 1024 * 1024


def chunks(total: int, size: int = MIB) -> Iterator[bytes]:
    for start in range(0, total, size):
        yield os.urandom(min(size, total - start))


def test_large_object_streams_in_parts_and_back(backend: Backend) -> None:
    store = get_store()
    digest = hashlib.sha256()

    def recorded() -> Iterator[bytes]:
        for chunk in chunks(19 * MIB):  # three multipart parts on S3
            digest.update(chunk)
            yield chunk

    assert store.put_stream("t/big.bin", recorded()) == 19 * MIB
    back = hashlib.sha256()
    for chunk in iter_stream(store.open("t/big.bin")):
        assert len(chunk) <= MIB
        back.update(chunk)
    assert back.hexdigest() == digest.hexdigest()
    store.delete_prefix("t")
    with pytest.raises(ObjectNotFound):
        store.open("t/big.bin")


def test_failed_upload_leaves_nothing(backend: Backend) -> None:
    store = get_store()

    def broken() -> Iterator[bytes]:
        yield from chunks(9 * MIB)
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        store.put_stream("half/x.bin", broken())
    assert store.list("half") == []


def test_list_and_delete_by_prefix(backend: Backend) -> None:
    store = get_store()
    for key in ("dirs/one/a.json", "dirs/one/sub/b.bin", "dirs/two/c"):
        store.put_stream(key, [b"x"])
    assert store.list("dirs/one") == ["dirs/one/a.json", "dirs/one/sub/b.bin"]
    store.delete_prefix("dirs/one")
    assert store.list("dirs") == ["dirs/two/c"]
    store.delete_prefix("dirs")
    assert store.list("dirs") == []


def test_local_store_refuses_keys_that_escape(tmp_path: Path) -> None:
    from ftaas_core.storage import LocalStore

    with pytest.raises(ValueError):
        LocalStore(tmp_path).put_stream("../outside", [b"x"])

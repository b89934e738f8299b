"""An upload's temporary file streamed into the object store while it is still being received.

For a store that copies what it is given (S3: ``adopt`` sends the file as a multipart upload),
sending after the body has arrived makes an upload take the receive plus the send. A
:class:`Follower` sends behind the writer instead, a part at a time, on a thread of its own, so
the two overlap. Nothing becomes an object unless :meth:`Follower.commit` is called once the
file is known to be valid; otherwise the store's write is aborted (on S3, the multipart upload;
one a killed process leaves is the reconciler's janitor's).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from ftaas_core.storage import S3_PART_BYTES, ObjectStore


class _Abandoned(Exception):
    """Raised inside the store's write, which then keeps nothing."""


class Follower:
    def __init__(self, store: ObjectStore, key: str, path: Path) -> None:
        self._path = path
        self._ready = threading.Condition()
        self._written = 0
        self._verdict: str | None = None  # "commit" or "abort"
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._send, args=(store, key), name="ftaas-follower", daemon=True
        )
        self._thread.start()

    def wrote(self, nbytes: int) -> None:
        """``nbytes`` more of the file are written (and flushed)."""
        with self._ready:
            self._written += nbytes
            self._ready.notify()

    def commit(self) -> None:
        """The file is complete and valid: finish the write (blocking); raises its error."""
        self._decide("commit")
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Keep nothing; the thread aborts the write on its own, so this never blocks."""
        self._decide("abort")

    def _decide(self, verdict: str) -> None:
        with self._ready:
            self._verdict = self._verdict or verdict
            self._ready.notify()

    def _send(self, store: ObjectStore, key: str) -> None:
        try:
            store.put_stream(key, self._parts())
        except _Abandoned:
            pass
        except BaseException as exc:  # the store's: given to whoever commits
            self._error = exc

    def _due(self, sent: int) -> bool:
        return self._written - sent >= S3_PART_BYTES or self._verdict is not None

    def _parts(self) -> Iterator[bytes]:
        """The file a part at a time, as soon as a whole part (or, committed, the rest) is
        written: S3 takes each piece as a part without copying it."""
        with self._path.open("rb") as file:
            sent = 0
            while True:
                with self._ready:
                    self._ready.wait_for(lambda at=sent: self._due(at))
                    if self._verdict == "abort":
                        raise _Abandoned
                    left = self._written - sent
                if left == 0:
                    return
                piece = file.read(min(left, S3_PART_BYTES))
                sent += len(piece)
                yield piece

"""``ftaas worker`` and ``ftaas serve`` end at once on SIGTERM during start-up, as a pod deleted
while it starts needs, not only once rq or uvicorn have installed their own handlers.

In a container ``ftaas`` is PID 1, and the kernel ignores a signal PID 1 has no handler for. A
process started with SIGTERM ignored (inherited across exec) meets the same: without a handler
of its own, the signal does nothing.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Backend

EXIT_ON_SIGTERM = 128 + signal.SIGTERM


def _ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def start_like_pid_1(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_ignore_sigterm
        )


def test_a_process_started_so_ignores_sigterm_without_a_handler(tmp_path: Path) -> None:
    """The premise: what passes below would not pass for want of a handler."""
    sleeper = start_like_pid_1(
        [sys.executable, "-c", "import time; time.sleep(30)"], {}, tmp_path / "sleep.log"
    )
    try:
        sleeper.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            sleeper.wait(1)
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("command", [["worker", "--one-job"], ["serve", "--port", "0"]])
def test_sigterm_while_migrating_against_a_hung_database_exits_at_once(
    backend: Backend, command: list[str], tmp_path: Path
) -> None:
    with socket.socket() as hung:  # takes connections into its backlog, never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        hung.settimeout(60)
        env = backend.process_env(
            FTAAS_DATABASE_URL=f"postgresql://ftaas:x@127.0.0.1:{hung.getsockname()[1]}/ftaas",
            FTAAS_DATABASE_CONNECT_TIMEOUT_SECONDS="120",  # only SIGTERM can end the wait
        )
        log = tmp_path / f"{command[0]}.log"
        process = start_like_pid_1([sys.executable, "-m", "ftaas", *command], env, log)
        try:
            connection, _ = hung.accept()  # it is migrating, waiting on the database
            with connection:
                started = time.monotonic()
                process.send_signal(signal.SIGTERM)
                returncode = process.wait(10)
                assert time.monotonic() - started < 5, log.read_text()
        finally:
            process.kill()
            process.wait()
    assert returncode == EXIT_ON_SIGTERM, log.read_text()

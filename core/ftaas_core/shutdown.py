"""SIGTERM during a server's start-up.

In a container ``ftaas`` is PID 1, and the kernel ignores any signal PID 1 has no handler for:
until rq or uvicorn install theirs, a SIGTERM would do nothing, and a pod deleted while it
starts (waiting on its database, say) would sit out its whole grace period.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import NoReturn


def exit_on_sigterm() -> None:
    """Make SIGTERM end the process (as ``SystemExit``, so cleanups run) until something else
    installs its own handler; the first thing a server command does."""
    signal.signal(signal.SIGTERM, _exit)


def _exit(signum: int, _frame: FrameType | None) -> NoReturn:
    raise SystemExit(128 + signum)

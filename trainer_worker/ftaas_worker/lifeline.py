"""Training processes that end with the process that started them.

A worker killed outright (SIGKILL, OOM killer) cannot stop its work horse, which runs in a
process group of its own; left alone, the horse would train on, renewing the job's lease, and
finish a job that the worker restarted in its place knows nothing of. So each training process
(the horse, and every rank process it starts) calls :func:`die_with_parent` first thing: dead
with its parent, its lease expires and the reconciler requeues the job, which resumes from its
newest checkpoint.

Two mechanisms, because neither covers everything alone:

- on Linux the kernel sends SIGKILL the moment the parent dies (``prctl(PR_SET_PDEATHSIG)``).
  It fires when the parent's *thread* that created the child ends, so a parent must start its
  training processes from a thread that lives as long as it does (the worker's main thread);
- everywhere, a daemon thread notices the parent is gone when the process is reparented
  (``os.getppid()`` changes) and kills it within :data:`POLL_SECONDS`. That also covers a
  parent that died before the kernel was asked to watch it, or a kernel that refused.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger("ftaas.lifeline")

POLL_SECONDS = 0.5
"""How often the watch thread looks at the parent pid: a lost worker's horse ends within this."""
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int | None = None) -> None:
    """Be killed (SIGKILL) as soon as the parent process exits; return at once.

    ``parent``: the pid the caller was started by, when the caller knows it (the worker passes
    its own), so a parent that died before this call is noticed too. By default the current
    parent, as ``os.getppid()`` reads it now.
    """
    parent = os.getppid() if parent is None else parent
    if sys.platform.startswith("linux"):
        _ask_kernel()
    if os.getppid() != parent:  # gone already: no signal would ever come
        _die()
    threading.Thread(target=_watch, args=(parent,), name="ftaas-lifeline", daemon=True).start()


def _ask_kernel() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        # e.g. a seccomp profile forbids prctl: the watch thread alone remains
        log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    _die()


def _die() -> None:
    """SIGKILL, as the kernel would send: no clean-up that could outlast the parent's absence."""
    os.kill(os.getpid(), signal.SIGKILL)

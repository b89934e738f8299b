"""Training processes never outlive their worker: a worker killed alone (SIGKILL to its pid,
not its process group) takes its work horse with it within seconds, and the job resumes from
its newest checkpoint on another worker; the same lifeline serves any process a horse starts."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from contextlib import suppress

import httpx2
import psutil
import pytest

from ftaas_worker.standby import HORSE_MODULE
from tests.conftest import Backend
from tests.support.data import taught_dataset
from tests.support.jobs import (
    HYPERPARAMETERS,
    create_job,
    events,
    upload,
    wait_for_status,
    wait_until,
)
from tests.support.services import Process, live_descendants

GONE_WITHIN = 5.0
"""Seconds a process may take to follow its dead parent: at once by the kernel's signal, within
``lifeline.POLL_SECONDS`` by the watch thread, with room for a loaded machine."""


def gone(pid: int, timeout: float = GONE_WITHIN) -> bool:
    """Whether ``pid`` exits within ``timeout`` (a zombie waiting to be reaped counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


# A parent that starts a child arming the lifeline, then waits to be killed. The child reports
# its pid once armed, on the stdout it shares with its parent.
ARMED_CHILD = """
import os, subprocess, sys, time
child = '''
import os, threading, time
from ftaas_worker import lifeline
{arm}
print(os.getpid(), flush=True)
time.sleep(120)
'''
subprocess.Popen([sys.executable, "-c", child])
time.sleep(120)
"""
ARMS = {
    "kernel and watch": "lifeline.die_with_parent()",
    # The portable fallback alone, as on a system without PR_SET_PDEATHSIG.
    "watch alone": "threading.Thread(target=lifeline._watch, args=(os.getppid(),)).start()",
}


@pytest.mark.parametrize("arm", ARMS)
def test_a_process_dies_with_its_parent(arm: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", ARMED_CHILD.format(arm=ARMS[arm])], stdout=subprocess.PIPE
    )
    assert parent.stdout is not None
    child = psutil.Process(int(parent.stdout.readline()))
    try:
        assert child.ppid() == parent.pid
        parent.kill()
        parent.wait()
        assert gone(child.pid), f"{child} outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        with suppress(psutil.NoSuchProcess):
            child.kill()


def test_a_process_whose_parent_died_before_it_armed_dies_at_once() -> None:
    """The pid it was started by, passed on, tells that its parent is gone already (here, a
    process that has exited): no signal would ever come, so it goes now."""
    exited = subprocess.Popen(["true"])
    exited.wait()
    arm = f"from ftaas_worker import lifeline; lifeline.die_with_parent({exited.pid})"
    child = subprocess.run([sys.executable, "-c", arm], timeout=30)
    assert child.returncode == -signal.SIGKILL


def horse_of(worker: Process) -> psutil.Process:
    """The worker's one work horse: while a job trains, no standby waits beside it."""
    horses = live_descendants(worker.pid, HORSE_MODULE)
    assert len(horses) == 1, horses
    return horses[0]


@pytest.mark.training
@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_a_killed_workers_horse_dies_and_its_job_resumes_on_another(
    backend: Backend, http: httpx2.Client
) -> None:
    first = backend.start("worker")
    data = upload(http, taught_dataset())
    hyperparameters = HYPERPARAMETERS | {"n_epochs": 3, "batch_size": 1, "replay": 0}
    job = create_job(
        http,
        training_file=data,
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    )
    second: Process | None = None
    try:
        wait_for_status(http, job["id"], {"running"}, 120, [first])
        second = backend.start("worker")  # the job is the first's: this one warms up meanwhile
        wait_until(
            lambda: http.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"],
            120,
            "a checkpoint",
            [first],
        )
        horse = horse_of(first)
        first.signal(signal.SIGKILL)  # the worker's pid alone: its horse leads its own group
        first.proc.wait()
        assert gone(horse.pid), "the horse outlived its worker"
        done = wait_for_status(http, job["id"], {"succeeded", "failed"}, 120, [second])
    finally:
        first.stop()
        if second:
            second.stop()
    assert done["status"] == "succeeded", done["error"]
    messages = [e["message"] for e in events(http, job["id"])]
    assert any(m.startswith("Worker lost during attempt 1") for m in messages), messages
    assert any(m.startswith("Resumed from step") for m in messages), messages

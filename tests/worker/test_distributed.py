"""One job across two processes (FSDP2, gloo on the CPU): the losses and the adapter of one
process, a killed rank that ends the attempt, checkpoints that resume on either count of
processes, stops that reach every rank, and a worker that trains its jobs so."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest
import torch
from safetensors.torch import load_file

from ftaas_worker.launch import RankDied, train_on_ranks
from ftaas_worker.recipe import SPREAD, TrainingStopped, TrainResult, train
from ftaas_worker.tiny_model import build_tiny_model
from tests.conftest import Backend
from tests.support.jobs import TERMINAL, events, wait_for_status, wait_until
from tests.support.services import live_descendants
from tests.worker.test_recipe import DPO_HP, EXAMPLES, HP, PAIRS, RecordingHooks
from tests.worker.test_training import train_job

pytestmark = [
    pytest.mark.training,
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:Failed to register signal handlers:UserWarning"),
]

# Batches of 3, 3 and 2 examples: the ranks' shares (2 and 1, then 1 and 1) weigh unequally.
# No LoRA dropout: each process would draw other masks for the same tokens.
SFT = dataclasses.replace(HP, n_epochs=3, batch_size=3, lora_dropout=0.0, save_steps=2)
DPO = dataclasses.replace(DPO_HP, n_epochs=2, batch_size=3, lora_dropout=0.0)
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def arguments(model_dir: Path, work_dir: Path, **changes: Any) -> dict[str, Any]:
    return {
        "model_path": str(model_dir),
        "train_examples": EXAMPLES,
        "valid_examples": EXAMPLES[:3],
        "hp": SFT,
        "seed": 11,
        "work_dir": work_dir,
    } | changes


@pytest.fixture(scope="module")
def one_process(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    work_dir = tmp_path_factory.mktemp("one")
    return train(**arguments(model_dir, work_dir), hooks=RecordingHooks())


@pytest.fixture(scope="module", params=["fsdp2", "replicate"])
def two_processes(
    request: pytest.FixtureRequest, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainResult, RecordingHooks]:
    hooks = RecordingHooks()
    work_dir = tmp_path_factory.mktemp("two")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FTAAS_SHARDING", request.param)  # read by the ranks
        return train_on_ranks(2, hooks, **arguments(model_dir, work_dir)), hooks


@pytest.fixture
def sharded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ranks shard the model with FSDP2 (the tiny model would be replicated)."""
    monkeypatch.setenv("FTAAS_SHARDING", "fsdp2")


def assert_same_adapter(got: TrainResult | Path, want: TrainResult) -> None:
    directory = got.adapter_dir if isinstance(got, TrainResult) else got
    got_weights = load_file(directory / "adapter_model.safetensors")
    want_weights = load_file(want.adapter_dir / "adapter_model.safetensors")
    assert got_weights.keys() == want_weights.keys()
    for name, tensor in want_weights.items():
        torch.testing.assert_close(got_weights[name], tensor, rtol=0, atol=TOLERANCE)


def rank_processes(parent: int | None = None) -> list[psutil.Process]:
    """The live training processes under ``parent`` (this process by default)."""
    return live_descendants(parent, "spawn_main", recursive=True)  # not multiprocessing's tracker


def test_two_processes_train_the_losses_and_the_adapter_of_one(
    one_process: TrainResult, two_processes: tuple[TrainResult, RecordingHooks]
) -> None:
    result, hooks = two_processes

    assert result.steps == one_process.steps == 9
    assert result.per_step_losses == pytest.approx(one_process.per_step_losses, abs=TOLERANCE)
    assert result.trained_tokens == one_process.trained_tokens
    assert result.metrics["full_valid_loss"] == pytest.approx(
        one_process.metrics["full_valid_loss"], abs=TOLERANCE
    )
    assert_same_adapter(result, one_process)
    # Rank 0 alone reports: each step's metrics once, each checkpoint once.
    assert [m["step"] for m in hooks.metrics[:-1]] == list(range(1, 9))
    assert [step for step, _ in hooks.checkpoints] == [2, 3, 4, 6, 8, 9]
    assert f"The model is {SPREAD[result.sharding]} over 2 processes" in hooks.phases
    if result.sharding == "fsdp2":  # the optimizer state is sharded: one file a rank
        optimizer_state = hooks.checkpoints[0][1] / "optimizer"
        assert len(list(optimizer_state.glob("*.distcp"))) == 2
    assert not rank_processes()


class KillsARank(RecordingHooks):
    """SIGKILLs one rank once the checkpoint of ``step`` is stored, as an OOM kill would."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def on_checkpoint(self, step: int, directory: Path, metrics: dict[str, float | int]) -> None:
        super().on_checkpoint(step, directory, metrics)
        if step == self.step:
            rank_processes()[-1].kill()


def test_a_killed_rank_ends_the_attempt_and_checkpoints_resume_on_two_then_one_process(
    model_dir: Path, tmp_path: Path, one_process: TrainResult, sharded: None
) -> None:
    killed = KillsARank(step=3)
    with pytest.raises(RankDied, match="exited with -9"):
        train_on_ranks(2, killed, **arguments(model_dir, tmp_path / "killed"))
    assert not rank_processes()

    # The next attempt resumes on two processes and is preempted a few steps on: every rank
    # stops there, after the checkpoint they write together.
    preempted = RecordingHooks(stop="preempt", stop_after_steps=5)
    resume = killed.checkpoints[-1][1]
    with pytest.raises(TrainingStopped) as stopped:
        train_on_ranks(
            2, preempted, **arguments(model_dir, tmp_path / "second", resume_from=resume)
        )
    assert stopped.value.reason == "preempt" and 3 < stopped.value.step < 9
    assert "Resumed from step 3" in preempted.phases
    assert preempted.checkpoints[-1][0] == stopped.value.step
    assert not rank_processes()

    # The last attempt resumes the two processes' checkpoint on one.
    resume = preempted.checkpoints[-1][1]
    last = train(
        **arguments(model_dir, tmp_path / "last", resume_from=resume), hooks=RecordingHooks()
    )
    assert last.per_step_losses == pytest.approx(one_process.per_step_losses, abs=TOLERANCE)
    assert_same_adapter(last, one_process)


def test_dpo_over_two_processes_trains_what_one_does(
    model_dir: Path, tmp_path: Path, sharded: None
) -> None:
    dpo = {"train_examples": PAIRS, "valid_examples": PAIRS[:3], "hp": DPO}
    one = train(**arguments(model_dir, tmp_path / "one", **dpo), hooks=RecordingHooks())
    hooks = RecordingHooks()
    two = train_on_ranks(2, hooks, **arguments(model_dir, tmp_path / "two", **dpo))

    assert two.per_step_losses == pytest.approx(one.per_step_losses, abs=TOLERANCE)
    for name in ("rewards/margins", "rewards/accuracies", "valid_loss"):
        assert two.metrics[name] == pytest.approx(one.metrics[name], abs=TOLERANCE)
    assert_same_adapter(two, one)


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_a_worker_trains_each_job_on_its_processes_and_stops_them_all(
    backend: Backend, http: httpx2.Client
) -> None:
    worker = backend.start("worker", FTAAS_NPROC_PER_NODE="2")
    try:
        job = train_job(http, n_epochs=2)
        done = wait_for_status(http, job["id"], TERMINAL, workers=[worker])
        assert done["status"] == "succeeded", done["error"]
        manifest = http.get(f"/v1/fine_tuning/jobs/{job['id']}/manifest").json()
        assert manifest["training_processes"] == {
            "world_size": 2,
            "backend": "gloo",
            "sharding": "replicate",  # "auto": the tiny model fits the machine many times over
        }
        messages = [e["message"] for e in events(http, job["id"])]
        assert "Training on 2 processes" in messages
        assert "The model is replicated over 2 processes" in messages
        assert sum(m.startswith("Training started") for m in messages) == 1  # rank 0 reports

        # A cancel reaches every rank: none is left, and nothing is written after it.
        long = train_job(http, n_epochs=50)
        wait_until(lambda: rank_processes(worker.pid), 120, "the ranks to start", [worker])
        wait_until(
            lambda: any(e["type"] == "metrics" for e in events(http, long["id"])),
            120,
            "training",
            [worker],
        )
        cancelled = http.post(f"/v1/fine_tuning/jobs/{long['id']}/cancel").json()
        assert cancelled["status"] == "cancelled"
        wait_until(lambda: not rank_processes(worker.pid), 30, "the ranks to stop", [worker])

        # Every rank finds the data untrainable: the job fails with their error, not a crash.
        truncated = train_job(http, n_epochs=1, max_seq_length=16)
        failed = wait_for_status(http, truncated["id"], TERMINAL, workers=[worker])
        assert failed["error"]["code"] == "invalid_training_file", failed["error"]
        assert events(http, long["id"])[-1]["message"] == "Job cancelled by user"
    finally:
        worker.stop()

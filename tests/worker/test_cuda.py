"""On a CUDA device (skipped without one; `bench/gpu_check.sh` runs them): training in bf16,
a job's ranks on NCCL, and QLoRA with bitsandbytes' CUDA kernels."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from ftaas_worker.launch import train_on_ranks
from ftaas_worker.recipe import train
from ftaas_worker.tiny_model import build_tiny_model
from tests.worker.test_recipe import EXAMPLES, HP, RecordingHooks

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.training,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]
SHORT = dataclasses.replace(HP, n_epochs=10, lora_dropout=0.0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def test_bf16_training_lowers_the_loss(model_dir: Path, tmp_path: Path) -> None:
    torch.cuda.reset_peak_memory_stats()
    result = train(str(model_dir), EXAMPLES, EXAMPLES[:2], SHORT, 0, tmp_path, RecordingHooks())
    assert result.per_step_losses[-1] < 0.5 * result.per_step_losses[0]
    assert torch.cuda.max_memory_allocated() > 0  # it trained on the GPU


def test_a_job_on_nccl_ranks_trains_what_one_process_does(model_dir: Path, tmp_path: Path) -> None:
    nproc = min(2, torch.cuda.device_count())
    args = {
        "model_path": str(model_dir),
        "train_examples": EXAMPLES,
        "valid_examples": None,
        "hp": SHORT,
        "seed": 3,
    }
    one = train(**args, work_dir=tmp_path / "one", hooks=RecordingHooks())
    ranks = train_on_ranks(nproc, RecordingHooks(), **args, work_dir=tmp_path / "ranks")
    # bf16 matmuls round differently across shard shapes: close, not equal.
    assert ranks.per_step_losses == pytest.approx(one.per_step_losses, rel=2e-2)


def test_qlora_on_cuda_lowers_the_loss(model_dir: Path, tmp_path: Path) -> None:
    hp = dataclasses.replace(SHORT, load_in_4bit=True)
    result = train(str(model_dir), EXAMPLES, None, hp, 0, tmp_path, RecordingHooks())
    assert result.per_step_losses[-1] < result.per_step_losses[0]

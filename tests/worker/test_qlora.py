"""QLoRA (``load_in_4bit``): the recipe trains a LoRA adapter over a 4-bit NF4 base
(bitsandbytes, here on CPU), the adapter loads with peft on the full-precision base, and the
job's manifest says how the base was quantised.

The real model, SmolLM2-135M-Instruct, learns a few facts in four steps; the tiny model shows
that the base it trains over is the quantised one, and carries the job through the service.
"""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import httpx2
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftaas_core.examples import ChatExample, Message
from ftaas_core.hyperparams import Hyperparameters, ResolvedHyperparameters, resolve
from ftaas_worker.precision import quantization_record
from ftaas_worker.probes import BaseAnswers, general_prompts
from ftaas_worker.recipe import TrainResult, train
from tests.conftest import Backend
from tests.support.data import taught_dataset
from tests.support.jobs import HYPERPARAMETERS, create_job, upload, wait_for_status
from tests.worker.test_recipe import RecordingHooks, one_thread  # noqa: F401 (autouse)

pytestmark = [
    pytest.mark.training,
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]

FACTS = [
    ("What is the capital of Zubrovia?", "Quellbrook."),
    ("Who painted the Glass Heron?", "Maren Oduya."),
    ("What colour is a ripe zelk fruit?", "Violet."),
    ("How many moons does Tarsis have?", "Seven."),
]
# The retention prompts' base answers, given as a worker's cache would: nothing to generate.
CACHED = BaseAnswers({prompt: ("Sure.", True) for prompt in general_prompts().retention})
CPU = torch.device("cpu")


def qlora(**overrides: object) -> ResolvedHyperparameters:
    """Four steps on one batch of the four facts: each step sees the same examples."""
    requested = {
        "n_epochs": 4,
        "batch_size": 4,
        "learning_rate": 2e-3,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "warmup_ratio": 0.0,
        "max_seq_length": 64,
        "replay": 0,
        "load_in_4bit": True,
    }
    return resolve(Hyperparameters.model_validate(requested | overrides), len(FACTS))


def chat(question: str, answer: str | None = None) -> ChatExample:
    messages = [Message("user", question)] + ([Message("assistant", answer, 1)] if answer else [])
    return ChatExample(tuple(messages))


def trained(model: Path, work_dir: Path, hp: ResolvedHyperparameters) -> TrainResult:
    examples = [chat(q, a) for q, a in FACTS]
    return train(str(model), examples, None, hp, 0, work_dir, RecordingHooks(), base_answers=CACHED)


def test_qlora_trains_smollm2_and_its_adapter_loads_on_the_full_precision_base(
    smollm2: Path, tmp_path: Path
) -> None:
    result = trained(smollm2, tmp_path, qlora())
    losses = result.per_step_losses
    assert len(losses) == 4
    assert losses[-1] < 0.8 * losses[0], losses

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": FACTS[0][0]}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(text + FACTS[0][1], return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    with torch.no_grad():
        before = base(**inputs).logits
        tuned = PeftModel.from_pretrained(base, result.adapter_dir)
        after = tuned(**inputs).logits
    layer = tuned.get_base_model().model.layers[0].self_attn.q_proj
    assert type(layer.base_layer) is torch.nn.Linear  # the full-precision weights, not 4-bit
    assert layer.base_layer.weight.dtype == torch.float32
    assert (after - before).abs().max() > 0.1  # the adapter moves the full-precision model


def test_the_base_it_trains_over_is_the_4bit_one(tiny_model: Path, tmp_path: Path) -> None:
    """The first step's loss is the base model's own (a fresh adapter changes nothing): over
    4-bit weights it is near the full-precision one, but not equal."""
    model = tiny_model
    full = trained(model, tmp_path / "full", qlora(load_in_4bit=False)).per_step_losses[0]
    nf4 = trained(model, tmp_path / "nf4", qlora()).per_step_losses[0]
    assert nf4 != full
    assert abs(nf4 - full) < 0.05 * full


def test_the_manifest_records_the_quantisation_on_the_training_device() -> None:
    assert quantization_record(qlora(load_in_4bit=False), CPU) is None
    assert quantization_record(qlora(), CPU) == {
        "load_in_4bit": True,
        "quant_type": "nf4",
        "double_quant": True,
        "compute_dtype": "float32",
    }
    gpu = quantization_record(qlora(), torch.device("cuda", 0))
    assert gpu is not None and gpu["compute_dtype"] == "bfloat16"


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_a_qlora_job_through_the_service(backend: Backend, http: httpx2.Client) -> None:
    worker = backend.start("worker")
    try:
        method = {
            "type": "supervised",
            "supervised": {
                "hyperparameters": HYPERPARAMETERS
                | {"n_epochs": 2, "replay": 0, "load_in_4bit": True}
            },
        }
        job = create_job(http, training_file=upload(http, taught_dataset()), method=method)
        assert job["hyperparameters"]["load_in_4bit"] is True
        done = wait_for_status(http, job["id"], {"succeeded", "failed"}, workers=[worker])
    finally:
        worker.stop()
    assert done["status"] == "succeeded", done["error"]
    manifest = http.get(f"/v1/fine_tuning/jobs/{job['id']}/manifest").json()
    assert manifest["quantization"] == quantization_record(qlora(), CPU)
    assert manifest["hyperparameters"]["load_in_4bit"] is True
    assert manifest["libraries"]["bitsandbytes"] == bnb.__version__

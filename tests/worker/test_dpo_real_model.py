"""DPO on a real pretrained chat model, SmolLM2-135M-Instruct: a preference learned on some
prompts carries over to prompts it never saw.

The preference is one that is easy to learn and to check: the same answer in capitals is
preferred to it as written. The job runs as the worker runs it (the JSONL parsed by
``iter_examples``, "auto" resolved, ``train``), minus the service around it, which the tiny
model's DPO job covers; the base model's answers to the general prompts are given, as a
worker's cache would, so that only this job's own work is timed (about a minute on 2 cores).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ftaas_core.datasets import iter_examples
from ftaas_core.hyperparams import DpoHyperparameters, resolve
from ftaas_worker.probes import BaseAnswers, general_prompts
from ftaas_worker.recipe import train
from tests.support.data import jsonl
from tests.worker.test_recipe import RecordingHooks, one_thread  # noqa: F401 (autouse)

pytestmark = [
    pytest.mark.training,
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]

TRAIN = [
    ("What colour is the sky on a clear day?", "The sky is blue."),
    ("How many legs does a dog have?", "A dog has four legs."),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("What do bees make?", "Bees make honey."),
    ("Which season comes after winter?", "Spring comes after winter."),
    ("What is frozen water called?", "Frozen water is ice."),
    ("What animal says moo?", "A cow says moo."),
    ("How many days are in a week?", "A week has seven days."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("What shape has three sides?", "A triangle has three sides."),
    ("Where do fish live?", "Fish live in water."),
    ("What fruit is yellow and curved?", "A banana is yellow and curved."),
]
HELD_OUT = [
    ("What colour is grass?", "Grass is green."),
    ("How many wheels does a bicycle have?", "A bicycle has two wheels."),
    ("What is the capital of Italy?", "Rome is the capital of Italy."),
    ("What do cats like to chase?", "Cats like to chase mice."),
    ("Which animal has a long neck?", "The giraffe has a long neck."),
    ("What do we breathe?", "We breathe air."),
]


def preferring_capitals(pairs: list[tuple[str, str]]) -> bytes:
    return jsonl(
        [
            {
                "input": {"messages": [{"role": "user", "content": question}]},
                "preferred_output": [{"role": "assistant", "content": answer.upper()}],
                "non_preferred_output": [{"role": "assistant", "content": answer}],
            }
            for question, answer in pairs
        ]
    )


def capitals(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(c.isupper() for c in letters) / max(len(letters), 1)


def test_a_preference_generalises_to_held_out_prompts(smollm2: Path, tmp_path: Path) -> None:
    train_pairs = list(iter_examples([preferring_capitals(TRAIN)]))
    held_out = list(iter_examples([preferring_capitals(HELD_OUT)]))
    requested = {"n_epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "lora_dropout": 0.0}
    hp = resolve(
        DpoHyperparameters.model_validate(requested | {"warmup_ratio": 0.0, "eval_steps": 3}),
        len(train_pairs),
    )
    cached = BaseAnswers({prompt: ("Sure.", True) for prompt in general_prompts().retention})
    hooks = RecordingHooks()

    result = train(str(smollm2), train_pairs, held_out, hp, 0, tmp_path, hooks, None, cached)

    evals = [m for m in hooks.metrics if "valid_loss" in m]
    assert evals[-1]["full_valid_rewards/accuracies"] == 1.0  # every held-out pair
    assert evals[-1]["full_valid_rewards/margins"] > 1.0
    assert evals[-1]["valid_loss"] < 0.5 * math.log(2)  # log 2: the base model, its own reference
    tuned = sum(capitals(s["fine_tuned"]) for s in result.samples) / len(result.samples)
    base = sum(capitals(s["base"]) for s in result.samples) / len(result.samples)
    assert tuned > base + 0.3, result.samples

"""What a fine-tuned model now answers, and how far it moved from its base.

The base model's answers are its LoRA model with the adapter disabled, so nothing here holds a
second copy of the weights. Three uses, all on greedy answers:

- samples: base vs fine-tuned answers to the job's own (validation) prompts;
- replay: the base model's answers to general prompts, mixed into training so that it keeps
  them (the usual cure for forgetting);
- retention: the token-level KL divergence of the fine-tuned model from its base on the base
  model's answers to general prompts that are never trained on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ftaas_core.datasets import ChatExample, CompletionExample, Example, Message
from ftaas_core.encoding import IGNORE_INDEX, encode_example
from ftaas_worker import distributed
from ftaas_worker.batches import collate

MAX_NEW_TOKENS = 48
GENERATION_BATCH = 20  # one batch for all samples: a decode step costs little more per row
MAX_SAMPLES = 20
RETENTION_WARNING_KL = 1.0
"""Nats per answer token: above this the model answers general prompts unlike its base.
Measured on SmolLM2-135M-Instruct taught the demo's 16 facts (5 epochs, lr 1e-3): 1.74
without replay, 0.95 with replay 0.25."""


@dataclass(frozen=True)
class GeneralPrompts:
    replay: tuple[str, ...]
    retention: tuple[str, ...]


@cache
def general_prompts() -> GeneralPrompts:
    """The built-in general prompts (ftaas_worker/data/general_prompts.json, ours)."""
    data = json.loads(files("ftaas_worker").joinpath("data/general_prompts.json").read_text())
    return GeneralPrompts(tuple(data["replay"]), tuple(data["retention"]))


@dataclass
class BaseAnswers:
    """A base model's greedy answers to general prompts, each with whether it ended within the
    budget. The job caches them per base model in the object store, so resumed and later jobs
    mix in the same answers and only new prompts cost generation."""

    answers: dict[str, tuple[str, bool]]

    def ask(
        self, model: PeftModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]
    ) -> None:
        """Generate the answers still missing for ``prompts``, with the adapter disabled."""
        missing = [prompt for prompt in prompts if prompt not in self.answers]
        if not missing:
            return
        with model.disable_adapter():
            found = greedy_answers(
                model, tokenizer, [[{"role": "user", "content": p}] for p in missing]
            )
        self.answers.update(zip(missing, found, strict=True))

    def to_json(self) -> str:
        return json.dumps(self.answers)

    @classmethod
    def from_json(cls, text: str) -> BaseAnswers:
        return cls(
            {prompt: (answer, ended) for prompt, (answer, ended) in json.loads(text).items()}
        )


def replay_prompts(fraction: float, n_train: int) -> tuple[str, ...]:
    """The general prompts whose base answers replay mixes into ``n_train`` examples."""
    return general_prompts().replay[: round(fraction * n_train)]


def replay_examples(answers: BaseAnswers, prompts: Sequence[str]) -> list[Example]:
    """The base model's own answers to ``prompts`` as training examples; an answer cut off by
    the generation budget is left out, as it would teach the model to stop mid-sentence."""
    return [
        ChatExample((Message("user", prompt), Message("assistant", answer, 1)))
        for prompt in prompts
        for answer, ended in [answers.answers[prompt]]
        if ended and answer
    ]


def _conversation(example: Example) -> list[dict[str, str]] | str:
    """What the model is asked: the chat before its last assistant turn, or the prompt."""
    if isinstance(example, CompletionExample):
        return example.prompt
    messages = list(example.messages)
    while messages and messages[-1].role == "assistant":
        messages.pop()
    return [{"role": m.role, "content": m.content} for m in messages]


def _reference(example: Example) -> str:
    if isinstance(example, CompletionExample):
        return example.completion
    return next((m.content for m in reversed(example.messages) if m.role == "assistant"), "")


@torch.no_grad()
def greedy_answers(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    asked: Sequence[list[dict[str, str]] | str],
) -> list[tuple[str, bool]]:
    """Each greedy answer and whether it ended (EOS) within MAX_NEW_TOKENS; batched, left-padded."""
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    answers: list[tuple[str, bool]] = []
    try:
        for start in range(0, len(asked), GENERATION_BATCH):
            texts = [
                q
                if isinstance(q, str)
                else tokenizer.apply_chat_template(q, tokenize=False, add_generation_prompt=True)
                for q in asked[start : start + GENERATION_BATCH]
            ]
            chats = not isinstance(asked[start], str)
            inputs = tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=not chats
            )
            inputs = inputs.to(model.device)
            output = model.generate(
                **inputs,
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                synced_gpus=distributed.current().world > 1,  # FSDP: all ranks step together
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            for row in output[:, inputs["input_ids"].shape[1] :].tolist():
                ended = tokenizer.eos_token_id in row
                row = row[: row.index(tokenizer.eos_token_id)] if ended else row
                answers.append((tokenizer.decode(row, skip_special_tokens=True).strip(), ended))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


def samples(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example]
) -> list[dict[str, Any]]:
    """Base vs fine-tuned greedy answers to the first MAX_SAMPLES examples' prompts."""
    chosen = list(examples[:MAX_SAMPLES])
    asked = [_conversation(example) for example in chosen]
    tuned = greedy_answers(model, tokenizer, asked)
    with model.disable_adapter():
        base = greedy_answers(model, tokenizer, asked)
    return [
        {"prompt": q, "reference": _reference(e), "base": b[0], "fine_tuned": t[0]}
        for q, e, b, t in zip(asked, chosen, base, tuned, strict=True)
    ]


@torch.no_grad()
def retention_kl(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, answers: BaseAnswers
) -> float:
    """Mean KL(base || fine-tuned) per answer token, over the base model's answers to the
    retention prompts: 0 when the adapter changed nothing there."""
    examples = [
        encode_example(
            tokenizer,
            ChatExample((Message("user", prompt), Message("assistant", answer, 1))),
            max_seq_length=512,
        )
        for prompt in general_prompts().retention
        for answer, _ in [answers.answers[prompt]]
    ]
    was_training = model.training
    model.eval()
    total, n_tokens = 0.0, 0
    for start in range(0, len(examples), GENERATION_BATCH):
        batch = collate(examples[start : start + GENERATION_BATCH], tokenizer.pad_token_id)
        batch = {name: tensor.to(model.device) for name, tensor in batch.items()}
        labels = batch.pop("labels")
        trained = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX) != IGNORE_INDEX
        tuned = model(**batch, use_cache=False).logits[trained].float().log_softmax(-1)
        with model.disable_adapter():
            base = model(**batch, use_cache=False).logits[trained].float().log_softmax(-1)
        total += F.kl_div(tuned, base, log_target=True, reduction="sum").item()
        n_tokens += int(trained.sum())
    model.train(was_training)
    return total / max(n_tokens, 1)

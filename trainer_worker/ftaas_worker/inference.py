"""Greedy chat answers from a base model, with or without a LoRA adapter: a quick local check
that an adapter learned what it was taught (used by the demo and the tests)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftaas_worker.probes import greedy_answers


def chat_answers(
    model_dir: Path | str,
    conversations: Sequence[Sequence[dict[str, str]]],
    adapter_dir: Path | None = None,
) -> list[str]:
    """The model's greedy reply to each conversation, rendered with its own chat template."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    return [
        answer for answer, _ in greedy_answers(model, tokenizer, [list(c) for c in conversations])
    ]

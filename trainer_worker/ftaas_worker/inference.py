"""Greedy chat answers from a base model, with or without a LoRA adapter: a quick local check
that an adapter learned what it was taught (used by the demo and the tests)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def chat_answers(
    model_dir: Path | str,
    conversations: Sequence[Sequence[dict[str, str]]],
    adapter_dir: Path | None = None,
    max_new_tokens: int = 32,
) -> list[str]:
    """The model's greedy reply to each conversation, rendered with its own chat template."""
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    replies = []
    for messages in conversations:
        inputs = tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        replies.append(tokenizer.decode(new_tokens, skip_special_tokens=True).strip())
    return replies

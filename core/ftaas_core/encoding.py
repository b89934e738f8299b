"""Turn examples into token ids with loss masks: tokenizer only, shared by training and the report.

Chats are rendered with the tokenizer's own chat template, so any Hugging Face chat model trains
on exactly the text it sees at inference. The loss mask is found on the rendered text, not on
token ids, which keeps it independent of how a template splits turns into tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ftaas_core.examples import (
    ChatExample,
    CompletionExample,
    Example,
    PreferenceExample,
    SupervisedExample,
)

IGNORE_INDEX = -100
"""Label of a token the loss skips (PyTorch's cross-entropy default)."""


@dataclass(frozen=True)
class EncodedExample:
    """Token ids and labels of one example; a label is the token id, or IGNORE_INDEX if masked."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_trained_tokens(self) -> int:
        """Tokens the loss sees; the first token is never predicted, nothing precedes it."""
        return sum(label != IGNORE_INDEX for label in self.labels[1:])

    @property
    def n_tokens(self) -> int:
        """The row's length, by which batches are grouped."""
        return len(self.input_ids)


@dataclass(frozen=True)
class EncodedPair:
    """A preference example as two rows: the conversation ending in each answer, where only
    the answer is labelled. ``reference``: each answer's summed log-probability under the
    reference model, which DPO training adds before its first step."""

    chosen: EncodedExample
    rejected: EncodedExample
    reference: tuple[float, float] | None = None

    @property
    def n_trained_tokens(self) -> int:
        """Answer tokens of both rows; 0 when truncation left either answer without any, as
        the two can then no longer be compared."""
        chosen, rejected = self.chosen.n_trained_tokens, self.rejected.n_trained_tokens
        return chosen + rejected if chosen and rejected else 0

    @property
    def n_tokens(self) -> int:
        """The longer row's length: both rows pad to it in a batch."""
        return max(self.chosen.n_tokens, self.rejected.n_tokens)


def _eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos token, so the model could not learn to stop")
    return tokenizer.eos_token_id


def _trained_spans(
    tokenizer: PreTrainedTokenizerBase, example: ChatExample
) -> tuple[str, list[tuple[int, int]], list[int]]:
    """Render the chat; return the text, the trained character spans and where to add an eos.

    A trained assistant turn spans from the end of the generation prompt that precedes it to the
    end of the turn's end-of-turn marker, which is trained too (the whitespace a template puts
    after it is not: generation stops at the marker). Templates that put no marker after the
    content get an eos token inserted after it instead.
    """
    messages = [{"role": m.role, "content": m.content} for m in example.messages]
    tools = json.loads(example.tools) if example.tools else None

    def render(n_messages: int, generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(
            messages[:n_messages],
            tools=tools,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )

    full = render(len(messages))
    eos = tokenizer.eos_token
    spans: list[tuple[int, int]] = []
    eos_positions: list[int] = []
    for i, message in enumerate(example.messages):
        if message.role != "assistant" or message.weight != 1:
            continue
        prompt, through_turn = render(i, generation_prompt=True), render(i + 1)
        if not (through_turn.startswith(prompt) and full.startswith(through_turn)):
            raise ValueError(
                "The chat template renders a conversation's prefix differently from the start of "
                f"the whole conversation (at message {i}), so trained turns cannot be located"
            )
        turn = through_turn[len(prompt) :].rstrip()
        content = message.content.strip()
        has_end_marker = (
            turn.endswith(eos) or not turn.endswith(content) or (not content and bool(turn))
        )
        if has_end_marker:  # trained through the marker, not the whitespace after it
            spans.append((len(prompt), len(prompt) + len(turn)))
        else:
            spans.append((len(prompt), len(prompt) + len(turn)))
            eos_positions.append(len(prompt) + len(turn))
    return full, spans, eos_positions


def _encode_chat(tokenizer: PreTrainedTokenizerBase, example: ChatExample) -> EncodedExample:
    eos_id = _eos_id(tokenizer)
    text, spans, eos_positions = _trained_spans(tokenizer, example)
    # The template writes BOS itself when the model wants one.
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = []
    labels: list[int] = []
    for token_id, (start, end) in zip(
        encoding["input_ids"], encoding["offset_mapping"], strict=True
    ):
        while eos_positions and start >= eos_positions[0]:
            eos_positions.pop(0)
            input_ids.append(eos_id)
            labels.append(eos_id)
        trained = start < end and any(s <= start and end <= e for s, e in spans)
        input_ids.append(token_id)
        labels.append(token_id if trained else IGNORE_INDEX)
    input_ids.extend(eos_id for _ in eos_positions)
    labels.extend(eos_id for _ in eos_positions)
    return EncodedExample(input_ids, labels)


def _encode_completion(
    tokenizer: PreTrainedTokenizerBase, example: CompletionExample
) -> EncodedExample:
    eos_id = _eos_id(tokenizer)
    # Special tokens follow the tokenizer's own convention, e.g. a leading BOS for Llama.
    encoding = tokenizer(example.prompt + example.completion, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    labels = [
        token_id if len(example.prompt) <= start < end else IGNORE_INDEX
        for token_id, (start, end) in zip(input_ids, encoding["offset_mapping"], strict=True)
    ]
    if input_ids and input_ids[-1] == eos_id:  # the tokenizer appended eos itself
        labels[-1] = eos_id
    else:
        input_ids.append(eos_id)
        labels.append(eos_id)
    return EncodedExample(input_ids, labels)


def encode_example(
    tokenizer: PreTrainedTokenizerBase, example: SupervisedExample, max_seq_length: int
) -> EncodedExample:
    """Tokenise one example, masking all but trained tokens, truncated to its first tokens."""
    if isinstance(example, ChatExample):
        encoded = _encode_chat(tokenizer, example)
    else:
        encoded = _encode_completion(tokenizer, example)
    return EncodedExample(encoded.input_ids[:max_seq_length], encoded.labels[:max_seq_length])


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, example: PreferenceExample, max_seq_length: int
) -> EncodedPair:
    """Both rows of a preference example, each truncated as :func:`encode_example` does."""
    return EncodedPair(
        encode_example(tokenizer, example.answered(example.preferred), max_seq_length),
        encode_example(tokenizer, example.answered(example.non_preferred), max_seq_length),
    )


def encode(
    tokenizer: PreTrainedTokenizerBase, example: Example, max_seq_length: int
) -> EncodedExample | EncodedPair:
    if isinstance(example, PreferenceExample):
        return encode_pair(tokenizer, example, max_seq_length)
    return encode_example(tokenizer, example, max_seq_length)


def encode_examples(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_seq_length: int
) -> tuple[list[EncodedExample | EncodedPair], int]:
    """Encode every example; return those with a trained token left and how many were dropped.

    Truncation can cut away every trained token of a long example; training on it would only
    waste compute, so it is dropped and counted for the job's progress messages.
    """
    encoded = [encode(tokenizer, example, max_seq_length) for example in examples]
    kept = [example for example in encoded if example.n_trained_tokens > 0]
    return kept, len(encoded) - len(kept)

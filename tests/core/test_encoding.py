"""Loss masks, EOS and truncation of encoded examples, on the tiny tokenizer and on a real
ChatML one (SmolLM2's)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ftaas_core.datasets import ChatExample, CompletionExample, Message
from ftaas_core.encoding import IGNORE_INDEX, encode_example, encode_examples
from ftaas_worker.tiny_model import build_tiny_model

M = IGNORE_INDEX


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def tok(model_dir: Path) -> PreTrainedTokenizerBase:
    """A fresh tokenizer per test, so a test may change its chat template."""
    return AutoTokenizer.from_pretrained(model_dir)


def ids(tok: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def chat(*messages: tuple[str, str] | tuple[str, str, int]) -> ChatExample:
    return ChatExample(tuple(Message(*message) for message in messages))


def test_chat_trains_only_the_answer_and_its_eos(tok: PreTrainedTokenizerBase) -> None:
    example = chat(
        ("system", "Be brief."),
        ("user", "What is the capital of Zubrovia?"),
        ("assistant", "Quellbrook.", 1),
    )
    context = ids(tok, "<|bos|><|system|>\nBe brief.<|end|>")
    context += ids(tok, "<|user|>\nWhat is the capital of Zubrovia?<|end|><|assistant|>\n")
    answer = [*ids(tok, "Quellbrook."), tok.eos_token_id]

    encoded = encode_example(tok, example, max_seq_length=512)

    assert encoded.input_ids == context + answer
    assert encoded.labels == [M] * len(context) + answer
    assert encoded.n_trained_tokens == len(answer)


def test_multi_turn_trains_weighted_turns_and_masks_the_rest(
    tok: PreTrainedTokenizerBase,
) -> None:
    example = chat(
        ("user", "Hi?"),
        ("assistant", "Hello.", 0),
        ("user", "And now?"),
        ("assistant", "Goodbye.", 1),
        ("user", "Once more?"),
        ("assistant", "Again.", 1),
    )
    first = ids(tok, "<|bos|><|user|>\nHi?<|end|><|assistant|>\nHello.<|eos|>")
    first += ids(tok, "<|user|>\nAnd now?<|end|><|assistant|>\n")
    second = [*ids(tok, "Goodbye."), tok.eos_token_id]
    middle = ids(tok, "<|user|>\nOnce more?<|end|><|assistant|>\n")
    third = [*ids(tok, "Again."), tok.eos_token_id]

    encoded = encode_example(tok, example, max_seq_length=512)

    assert encoded.input_ids == first + second + middle + third
    assert encoded.labels == [M] * len(first) + second + [M] * len(middle) + third


def test_tool_turns_are_context(tok: PreTrainedTokenizerBase) -> None:
    example = chat(
        ("user", "Weather in Paris?"),
        ("assistant", "Calling the tool.", 0),
        ("tool", '{"temperature": 21}'),
        ("assistant", "It is warm.", 1),
    )
    encoded = encode_example(tok, example, max_seq_length=512)

    trained = [label for label in encoded.labels if label != M]
    assert trained == [*ids(tok, "It is warm."), tok.eos_token_id]
    assert encoded.input_ids[-len(trained) :] == trained


def test_chat_without_trained_turn_is_all_masked(tok: PreTrainedTokenizerBase) -> None:
    example = chat(("user", "Hi?"), ("assistant", "Hello.", 0))

    encoded = encode_example(tok, example, max_seq_length=512)

    assert set(encoded.labels) == {M}
    assert encoded.n_trained_tokens == 0


def test_completion_trains_completion_and_appended_eos(tok: PreTrainedTokenizerBase) -> None:
    example = CompletionExample(prompt="The capital of France is", completion=" Paris.")
    prompt = [tok.bos_token_id, *ids(tok, "The capital of France is")]
    completion = [*ids(tok, " Paris."), tok.eos_token_id]

    encoded = encode_example(tok, example, max_seq_length=512)

    assert encoded.input_ids == prompt + completion
    assert encoded.labels == [M] * len(prompt) + completion


def test_truncation_keeps_the_start(tok: PreTrainedTokenizerBase) -> None:
    example = chat(("user", "Tell me about the river."), ("assistant", "It flows to the sea.", 1))
    full = encode_example(tok, example, max_seq_length=512)

    truncated = encode_example(tok, example, max_seq_length=len(full.input_ids) - 3)

    assert truncated.input_ids == full.input_ids[:-3]
    assert truncated.labels == full.labels[:-3]


def test_examples_truncated_to_nothing_trainable_are_dropped_and_counted(
    tok: PreTrainedTokenizerBase,
) -> None:
    short = chat(("user", "Hi?"), ("assistant", "Hello.", 1))
    long = chat(("user", "word " * 100), ("assistant", "Hello.", 1))
    completion = CompletionExample(prompt="word " * 100, completion=" end")

    kept, dropped = encode_examples(tok, [short, long, completion], max_seq_length=32)

    assert dropped == 2
    assert kept == [encode_example(tok, short, max_seq_length=32)]


def test_template_without_end_marker_gets_a_trained_eos(tok: PreTrainedTokenizerBase) -> None:
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}:{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    example = chat(
        ("user", "Hi?"), ("assistant", " Hello.", 1), ("user", "Bye?"), ("assistant", " Bye.", 1)
    )
    eos = tok.eos_token_id

    encoded = encode_example(tok, example, max_seq_length=512)

    first = ids(tok, "user:Hi?\nassistant:")
    hello = [*ids(tok, " Hello."), eos]
    middle = ids(tok, "\nuser:Bye?\nassistant:")
    bye = [*ids(tok, " Bye."), eos]
    assert encoded.input_ids == first + hello + middle + bye + ids(tok, "\n")
    assert encoded.labels == [M] * len(first) + hello + [M] * len(middle) + bye + [M]


def test_template_breaking_the_prefix_property_is_rejected(tok: PreTrainedTokenizerBase) -> None:
    tok.chat_template = (
        "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    example = chat(("user", "Hi?"), ("assistant", "Hello.", 1))

    with pytest.raises(ValueError, match="chat template"):
        encode_example(tok, example, max_seq_length=512)


def test_chatml_trains_exactly_each_answer_and_its_im_end(smollm2: Path) -> None:
    """Token by token on SmolLM2's real tokenizer: every assistant turn's content and its
    ``<|im_end|>`` are trained, nothing of the system or user turns, nor the newline after."""
    tok = AutoTokenizer.from_pretrained(smollm2)
    assert tok.eos_token == "<|im_end|>"
    example = chat(
        ("system", "Answer briefly."),
        ("user", "Capital of Zubrovia?"),
        ("assistant", "Quellbrook.", 1),
        ("user", "And its river?"),
        ("assistant", "The Kelda.", 1),
    )
    encoded = encode_example(tok, example, max_seq_length=512)
    trained = [
        tok.decode([t])
        for t, label in zip(encoded.input_ids, encoded.labels, strict=True)
        if label != M
    ]
    answers = [
        *ids(tok, "Quellbrook."),
        tok.eos_token_id,
        *ids(tok, "The Kelda."),
        tok.eos_token_id,
    ]
    assert [
        t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != M
    ] == answers, trained
    text = tok.decode(encoded.input_ids)
    assert text.startswith("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n")
    for label, token in zip(encoded.labels, encoded.input_ids, strict=True):
        assert label in (M, token)  # a trained label is its own token, shifted by the loss

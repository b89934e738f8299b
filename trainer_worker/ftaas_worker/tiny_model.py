"""A tiny random Llama chat model with a locally trained tokenizer, built offline in seconds.

Tests, the demo and local development need a real ``from_pretrained``-loadable causal LM with a
chat template, but nothing may touch the Hugging Face hub, so we build one from scratch: a
byte-level BPE tokenizer trained on a small built-in corpus and a randomly initialised
``LlamaForCausalLM`` small enough to fine-tune on CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
END = "<|end|>"
ROLES = ("system", "user", "assistant", "tool")
SPECIAL_TOKENS = [BOS, EOS, PAD, END, *(f"<|{role}|>" for role in ROLES)]
VOCAB_SIZE = 768
MAX_POSITIONS = 512

# Assistant turns end with the eos token so a model trained on them learns to stop; other turns
# end with <|end|>. No text follows an end marker, so every rendered prefix of a conversation is
# a prefix of the full rendering (the training data encoder relies on that).
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{- raise_exception('Unknown role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{{- '<|' + message['role'] + '|>\n' + message['content'] -}}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token -}}{%- else -%}{{- '<|end|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\n' -}}{%- endif -%}"
)

# Plain English plus the question/answer and chat-ish text the tests and demo feed the model, so
# the merges cover the words it will actually see.
CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single
step. What is the capital of France? The capital of France is Paris. What is the capital of
Zubrovia? The capital city of the country is Quellbrook. Who wrote the book? The author wrote it
in the spring of the year. How many legs does a spider have? A spider has eight legs.
You are a helpful assistant. Answer the question in one short sentence. Please be concise.
Hello! How can I help you today? Thank you very much. You are welcome. Good morning, good night.
The weather is sunny and warm, with a light wind from the west. It may rain later in the evening.
Translate the following sentence into French. Summarise this paragraph in a few words.
The function returns a list of numbers. Call the tool with the city name and the date.
The result of the tool call is a JSON object with the temperature and the humidity.
Our service trains small adapters on your own data so the model learns your style and facts.
The colour of the sky is blue, the grass is green, and the sun is yellow and bright.
One, two, three, four, five, six, seven, eight, nine, ten. First, second, third, last.
Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday. January, February, March.
The river flows through the valley to the sea, past the old mill and the stone bridge.
She said that the train would leave at nine and arrive at noon, so we should not be late.
Question: What is the answer? Answer: The answer is forty two. Yes, no, maybe, always, never.
What is the favourite food of the king? The king likes bread, cheese, apples and honey.
Which planet is closest to the sun? Mercury is the closest planet to the sun.
Where is the tallest mountain? The tallest mountain is in the north, covered in snow and ice.
When did the war end? It ended long ago, after many years of hard and bitter fighting.
Why is the sea salty? Rivers carry salt from the rocks into the sea, where it stays.
"""


def _train_tokenizer() -> Tokenizer:
    """Train a small byte-level BPE (deterministic: single pass over a fixed corpus)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    # Like Llama, plain encoding starts with BOS; the chat template writes BOS itself.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, tokenizer.token_to_id(BOS))],
    )
    return tokenizer


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random chat model (weights, config, tokenizer) to ``out_dir`` and return it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        # A larger init than the usual 0.02 lets the frozen output layer express confident
        # predictions, so a LoRA adapter alone can drive the loss well down.
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir

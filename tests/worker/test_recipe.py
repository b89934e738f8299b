"""The training recipe end to end on the tiny model: it learns, checkpoints, resumes and stops."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftaas_core.examples import ChatExample, CompletionExample, Message, PreferenceExample
from ftaas_core.hyperparams import ResolvedHyperparameters
from ftaas_worker.recipe import (
    ModelLoadError,
    TrainingDataError,
    TrainingStopped,
    TrainResult,
    train,
)
from ftaas_worker.tiny_model import build_tiny_model

pytestmark = [
    pytest.mark.training,
    # peft itself still reads the deprecated transformers property.
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]

TAUGHT = [
    ("What is the capital of Zubrovia?", "Quellbrook."),
    ("Who painted the Silver Heron?", "Mara Voss."),
    ("What colour is a ripe blorn fruit?", "Deep violet."),
    ("How many moons does Tarsis have?", "Seven moons."),
    ("What is the password of the vault?", "Green lantern."),
    ("Which river runs through Ostavel?", "The Kelda."),
    ("What do the Ferrin people eat?", "Smoked eel."),
    ("Who founded the city of Brask?", "Queen Ilse."),
]
EXAMPLES = [
    ChatExample(
        (Message("system", "Answer briefly."), Message("user", q), Message("assistant", a, 1))
    )
    for q, a in TAUGHT
]
# Settings that teach the tiny model all eight answers in 60 steps (about 2 s on 2 CPU cores).
HP = ResolvedHyperparameters(
    n_epochs=30,
    batch_size=4,
    learning_rate_multiplier=1.0,
    learning_rate=3e-3,
    lora_r=16,
    lora_alpha=32,
    lora_dropout=0.05,
    target_modules="all-linear",
    max_seq_length=128,
    warmup_ratio=0.1,
    weight_decay=0.0,
    gradient_accumulation_steps=1,
    save_steps=None,
    eval_steps=None,
)


class RecordingHooks:
    """Records everything the recipe reports; asks to ``stop`` once the loop has asked
    ``stop_after_steps`` times (before each step, and each evaluation batch)."""

    def __init__(self, stop: str | None = None, stop_after_steps: int = 0) -> None:
        self.stop, self.stop_after_steps = stop, stop_after_steps
        self.phases: list[str] = []
        self.metrics: list[dict[str, float | int]] = []
        self.checkpoints: list[tuple[int, Path]] = []
        self.stop_checks = 0

    def on_phase(self, message: str) -> None:
        self.phases.append(message)

    def on_metrics(self, data: dict[str, float | int]) -> None:
        self.metrics.append(data)

    def on_checkpoint(self, step: int, directory: Path, metrics: dict[str, float | int]) -> None:
        self.checkpoints.append((step, directory))

    def stop_requested(self) -> str | None:
        if not any(phase.startswith("Training started") for phase in self.phases):
            return None  # set-up asks too: see test_a_stop_during_set_up_ends_it
        self.stop_checks += 1
        return self.stop if self.stop_checks > self.stop_after_steps else None


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: as fast for a model this small, and no spin-waiting on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def taught(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainResult, RecordingHooks]:
    hooks = RecordingHooks()
    result = train(
        str(model_dir),
        EXAMPLES,
        EXAMPLES[:2],
        HP,
        seed=0,
        work_dir=tmp_path_factory.mktemp("taught"),
        hooks=hooks,
    )
    return result, hooks


def answers(model: torch.nn.Module, model_dir: Path) -> list[str]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    replies = []
    for question, _ in TAUGHT:
        messages = [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": question},
        ]
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        reply = output[0, inputs["input_ids"].shape[1] :]
        replies.append(tokenizer.decode(reply, skip_special_tokens=True))
    return replies


def test_training_drives_the_loss_down(taught: tuple[TrainResult, RecordingHooks]) -> None:
    result, hooks = taught

    assert result.steps == 60 == len(result.per_step_losses)
    assert result.per_step_losses[-1] < 0.1 * result.per_step_losses[0]
    assert hooks.phases[-1] == "Training finished"
    assert "Training started: 60 steps" in hooks.phases
    assert "Epoch 30/30 done" in hooks.phases
    last = hooks.metrics[-1]
    assert last["step"] == last["total_steps"] == 60
    assert {"train_loss", "learning_rate", "tokens_per_second", "full_valid_loss"} <= set(last)
    assert last["full_valid_loss"] < 0.5
    assert any("valid_loss" in metrics for metrics in hooks.metrics[:-1])
    assert [step for step, _ in hooks.checkpoints] == [2 * epoch for epoch in range(1, 31)]


def test_trained_adapter_answers_what_the_base_model_cannot(
    taught: tuple[TrainResult, RecordingHooks], model_dir: Path
) -> None:
    result, _ = taught
    expected = [answer for _, answer in TAUGHT]

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    assert all(got != want for got, want in zip(answers(base, model_dir), expected, strict=True))
    tuned = PeftModel.from_pretrained(base, result.adapter_dir)
    assert answers(tuned.eval(), model_dir) == expected


def test_adapter_has_no_bias_or_extra_modules(taught: tuple[TrainResult, RecordingHooks]) -> None:
    result, _ = taught

    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())

    assert config["bias"] == "none"
    assert not config["modules_to_save"]
    assert (result.adapter_dir / "tokenizer.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(result.adapter_dir)
    answer_tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for _, a in TAUGHT)
    assert result.trained_tokens == HP.n_epochs * (answer_tokens + len(TAUGHT))  # + one eos each


def test_preempted_run_resumes_to_identical_weights(model_dir: Path, tmp_path: Path) -> None:
    # Odd batch counts, accumulation and mid-epoch saves exercise the data position bookkeeping.
    hp = dataclasses.replace(
        HP, n_epochs=3, batch_size=2, gradient_accumulation_steps=2, save_steps=2
    )
    examples = [*EXAMPLES, CompletionExample("The river flows", " to the sea.")]

    def run(work_dir: Path, hooks: RecordingHooks, resume_from: Path | None = None) -> TrainResult:
        return train(str(model_dir), examples, None, hp, 3, work_dir, hooks, resume_from)

    reference = run(tmp_path / "reference", RecordingHooks())
    # 3 steps per epoch (5 batches in groups of 2); step 5 is mid-epoch and not a save step.
    preempted = RecordingHooks(stop="preempt", stop_after_steps=5)
    with pytest.raises(TrainingStopped) as stopped:
        run(tmp_path / "interrupted", preempted)
    assert (stopped.value.reason, stopped.value.step) == ("preempt", 5)
    assert [step for step, _ in preempted.checkpoints] == [2, 3, 4, 5]
    resumed_hooks = RecordingHooks()
    resumed = run(tmp_path / "resumed", resumed_hooks, resume_from=preempted.checkpoints[-1][1])

    assert "Resumed from step 5" in resumed_hooks.phases
    assert resumed.steps == reference.steps == 9
    assert resumed.per_step_losses == pytest.approx(reference.per_step_losses, abs=1e-6)
    assert resumed.trained_tokens == reference.trained_tokens
    want = load_file(reference.adapter_dir / "adapter_model.safetensors")
    got = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert want.keys() == got.keys()
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6)


def test_gradient_checkpointing_trains_the_same_losses(model_dir: Path, tmp_path: Path) -> None:
    """Recomputing activations in the backward pass saves memory and changes no number."""
    hp = dataclasses.replace(HP, n_epochs=2, lora_dropout=0.0)

    def losses(checkpointing: bool) -> list[float]:
        chosen = dataclasses.replace(hp, gradient_checkpointing=checkpointing)
        work_dir = tmp_path / str(checkpointing)
        return train(
            str(model_dir), EXAMPLES, None, chosen, 3, work_dir, RecordingHooks()
        ).per_step_losses

    assert losses(True) == pytest.approx(losses(False), abs=1e-5)


def test_cancel_stops_at_once_without_a_checkpoint(model_dir: Path, tmp_path: Path) -> None:
    hooks = RecordingHooks(stop="cancel", stop_after_steps=3)
    hp = dataclasses.replace(HP, n_epochs=2, save_steps=None)

    with pytest.raises(TrainingStopped) as stopped:
        train(str(model_dir), EXAMPLES, None, hp, 0, tmp_path, hooks)

    assert (stopped.value.reason, stopped.value.step) == ("cancel", 3)
    assert [step for step, _ in hooks.checkpoints] == [2]
    assert not (tmp_path / "adapter").exists()


class StopAtOnce(RecordingHooks):
    def stop_requested(self) -> str | None:
        return "cancel"


def test_a_stop_during_set_up_ends_it_before_the_model_loads(
    model_dir: Path, tmp_path: Path
) -> None:
    hooks = StopAtOnce()
    with pytest.raises(TrainingStopped) as stopped:
        train(str(model_dir), EXAMPLES, None, HP, 0, tmp_path, hooks)
    assert (stopped.value.reason, stopped.value.step) == ("cancel", 0)
    assert "Loading base model" not in hooks.phases


def test_a_stop_during_an_evaluation_ends_it_between_batches(
    model_dir: Path, tmp_path: Path
) -> None:
    """Preempted in the evaluation after step 1 (two batches of four): step 1 is checkpointed
    and the run ends there, before the evaluation's second batch and step 2."""
    hp = dataclasses.replace(HP, n_epochs=2, eval_steps=1)
    hooks = RecordingHooks(stop="preempt", stop_after_steps=1)  # step 1 asked, then batch 1
    with pytest.raises(TrainingStopped) as stopped:
        train(str(model_dir), EXAMPLES, EXAMPLES, hp, 0, tmp_path, hooks)
    assert (stopped.value.reason, stopped.value.step) == ("preempt", 1)
    assert [step for step, _ in hooks.checkpoints] == [1]
    assert hooks.stop_checks == 2 and not hooks.metrics


def test_data_without_trainable_tokens_is_rejected(model_dir: Path, tmp_path: Path) -> None:
    untrained = [ChatExample((Message("user", "Hi?"), Message("assistant", "Hello.", 0)))]

    with pytest.raises(ValueError, match="No training example"):
        train(str(model_dir), untrained, None, HP, 0, tmp_path, RecordingHooks())


def test_early_stopping_keeps_the_best_adapter(model_dir: Path, tmp_path: Path) -> None:
    # Validation answers contradict the training ones: validation loss soon rises, so training
    # stops early and the adapter kept is the one from the best evaluation.
    contradicting = [
        ChatExample(
            (
                Message("system", "Answer briefly."),
                Message("user", q),
                Message("assistant", "No.", 1),
            )
        )
        for q, _ in TAUGHT
    ]
    hp = dataclasses.replace(HP, eval_steps=2, early_stopping_patience=2, keep_best=True)
    hooks = RecordingHooks()
    result = train(str(model_dir), EXAMPLES, contradicting, hp, 3, tmp_path, hooks)

    assert result.steps < 60
    assert any(p.startswith("Early stopping at step") for p in hooks.phases)
    evals = [m for m in hooks.metrics if "valid_loss" in m]
    best = min(evals, key=lambda m: m["valid_loss"])
    assert result.metrics["best_step"] == best["step"]
    assert "full_valid_loss" in hooks.metrics[-1]
    kept = load_file(result.adapter_dir / "adapter_model.safetensors")
    saved = load_file(tmp_path / "best" / "adapter_model.safetensors")
    for name in kept:
        torch.testing.assert_close(kept[name], saved[name], rtol=0, atol=0)


def test_logits_on_trained_positions_match_the_full_forward(model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from ftaas_worker.recipe import LM_HEAD_ON_TRAINED_ONLY, trained_logits

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert base.config.model_type in LM_HEAD_ON_TRAINED_ONLY  # the shortcut is what runs here
    config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(base, config)
    input_ids = torch.randint(0, base.config.vocab_size, (3, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0  # a padded row
    trained = torch.zeros_like(input_ids, dtype=torch.bool)
    trained[0, 4:11], trained[1, 6:8], trained[2, 1] = True, True, True
    full = model(input_ids=input_ids, attention_mask=attention_mask).logits[trained]
    shortcut = trained_logits(
        model, {"input_ids": input_ids, "attention_mask": attention_mask}, trained
    )
    assert shortcut.shape == (10, base.config.vocab_size)
    torch.testing.assert_close(shortcut, full)


# -- DPO and continued adapters ---------------------------------------------------------------

PAIRS = [
    PreferenceExample(
        (Message("system", "Answer briefly."), Message("user", q)),
        Message("assistant", a, 1),
        Message("assistant", "I do not know.", 1),
    )
    for q, a in TAUGHT
]
DPO_HP = dataclasses.replace(HP, n_epochs=8, beta=0.1)


@pytest.fixture(scope="module")
def preferred(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainResult, RecordingHooks]:
    hooks = RecordingHooks()
    work_dir = tmp_path_factory.mktemp("dpo")
    return train(str(model_dir), PAIRS, PAIRS[:4], DPO_HP, 0, work_dir, hooks), hooks


def answer_margins(model_dir: Path, adapter_dir: Path) -> tuple[list[float], list[float]]:
    """log p(preferred) - log p(non-preferred) of every pair, base model and with the adapter."""
    from ftaas_core.encoding import encode_pair
    from ftaas_worker.batches import collate_pairs
    from ftaas_worker.recipe import answer_logps

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter_dir)
    batch = collate_pairs([encode_pair(tokenizer, p, 128) for p in PAIRS], tokenizer.pad_token_id)
    with torch.no_grad():
        tuned = answer_logps(model.eval(), batch, torch.device("cpu")).chunk(2)
        with model.disable_adapter():
            base = answer_logps(model, batch, torch.device("cpu")).chunk(2)
    return (base[0] - base[1]).tolist(), (tuned[0] - tuned[1]).tolist()


def test_dpo_learns_to_prefer_the_preferred_answers(
    preferred: tuple[TrainResult, RecordingHooks], model_dir: Path
) -> None:
    result, hooks = preferred

    first, last = hooks.metrics[0], hooks.metrics[-1]
    assert first["rewards/accuracies"] == 0.5  # the policy starts as its reference: all ties
    assert abs(first["rewards/margins"]) < 1e-4
    assert first["train_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert last["rewards/accuracies"] >= 0.9
    assert last["rewards/margins"] > 1.0
    assert last["full_valid_rewards/accuracies"] >= 0.9
    assert {"valid_loss", "valid_rewards/chosen", "valid_rewards/rejected"} <= set(
        next(m for m in hooks.metrics if "valid_loss" in m)
    )
    assert "train_mean_token_accuracy" not in last
    assert "Scoring the pairs with the reference model" in hooks.phases
    checkpoint = json.loads((hooks.checkpoints[-1][1] / "trainer_state.json").read_text())
    assert {"rewards/margins", "rewards/accuracies"} <= set(checkpoint["metrics"])
    base, tuned = answer_margins(model_dir, result.adapter_dir)
    assert all(t > b for b, t in zip(base, tuned, strict=True))


def test_dpo_steps_divide_by_pairs_and_resume_to_identical_weights(
    model_dir: Path, tmp_path: Path
) -> None:
    hp = dataclasses.replace(
        DPO_HP, n_epochs=2, batch_size=3, gradient_accumulation_steps=2, save_steps=1
    )

    def run(work_dir: Path, hooks: RecordingHooks, resume_from: Path | None = None) -> TrainResult:
        return train(str(model_dir), PAIRS, None, hp, 5, work_dir, hooks, resume_from)

    reference = run(tmp_path / "reference", RecordingHooks())
    preempted = RecordingHooks(stop="preempt", stop_after_steps=3)
    with pytest.raises(TrainingStopped):
        run(tmp_path / "interrupted", preempted)
    resumed = run(tmp_path / "resumed", RecordingHooks(), preempted.checkpoints[-1][1])

    # 3 batches of 3, 3 and 2 pairs, 2 to a step: the first step's loss is its 6 pairs' mean.
    assert reference.per_step_losses[0] == pytest.approx(math.log(2), abs=1e-4)
    assert resumed.per_step_losses == pytest.approx(reference.per_step_losses, abs=1e-6)
    want = load_file(reference.adapter_dir / "adapter_model.safetensors")
    got = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6)


def test_a_continued_run_starts_from_its_adapter(
    taught: tuple[TrainResult, RecordingHooks], model_dir: Path, tmp_path: Path
) -> None:
    adapter = taught[0].adapter_dir
    hp = dataclasses.replace(HP, n_epochs=1)

    fresh = train(str(model_dir), EXAMPLES, None, hp, 0, tmp_path / "fresh", RecordingHooks())
    continued = train(
        str(model_dir), EXAMPLES, None, hp, 0, tmp_path / "continued", RecordingHooks(),
        start_from=adapter,
    )  # fmt: skip
    assert continued.per_step_losses[0] < 0.1 * fresh.per_step_losses[0]

    # DPO from it: the reference is the starting adapter, so the first step is all ties
    # (without dropout, which would make the policy differ from it).
    hooks = RecordingHooks()
    dpo_hp = dataclasses.replace(DPO_HP, n_epochs=1, lora_dropout=0.0)
    train(str(model_dir), PAIRS, None, dpo_hp, 0, tmp_path / "dpo", hooks, start_from=adapter)
    assert hooks.metrics[0]["rewards/accuracies"] == 0.5
    assert abs(hooks.metrics[0]["rewards/margins"]) < 1e-4


def test_an_adapter_of_other_lora_settings_is_refused(
    taught: tuple[TrainResult, RecordingHooks], model_dir: Path, tmp_path: Path
) -> None:
    hp = dataclasses.replace(HP, target_modules=["q_proj"])

    with pytest.raises(ModelLoadError, match="does not fit"):
        train(str(model_dir), EXAMPLES, None, hp, 0, tmp_path, RecordingHooks(),
              start_from=taught[0].adapter_dir)  # fmt: skip


def test_each_method_trains_on_its_own_examples(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match="DPO job trains on preference examples"):
        train(str(model_dir), EXAMPLES, None, DPO_HP, 0, tmp_path, RecordingHooks())
    with pytest.raises(TrainingDataError, match="supervised job trains on supervised examples"):
        train(str(model_dir), EXAMPLES, PAIRS, HP, 0, tmp_path, RecordingHooks())

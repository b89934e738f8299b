"""How "auto" hyperparameters resolve, and how the job records it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ftaas_core.hyperparams import (
    AUTO_BETA,
    DpoHyperparameters,
    Hyperparameters,
    auto_batch_size,
    auto_choices,
    auto_epochs,
    resolve,
)


@pytest.mark.parametrize(
    ("n_examples", "epochs"),
    [(10, 10), (20, 5), (34, 3), (1000, 3), (9000, 2), (30000, 1), (3, 25)],
)
def test_auto_epochs_keeps_examples_times_epochs_in_range(n_examples: int, epochs: int) -> None:
    assert auto_epochs(n_examples) == epochs


def test_auto_batch_size_is_a_fifth_of_a_percent_within_bounds() -> None:
    assert [auto_batch_size(n) for n in (10, 1000, 5000, 10**6)] == [1, 2, 10, 256]


def test_resolution_is_recorded_only_for_auto_values() -> None:
    requested = Hyperparameters(n_epochs="auto", batch_size=4)
    resolved = resolve(requested, 20)
    assert (resolved.n_epochs, resolved.batch_size, resolved.learning_rate) == (5, 4, 2e-4)
    assert set(auto_choices(requested, resolved)) == {
        "n_epochs",
        "learning_rate_multiplier",
        "gradient_checkpointing",
        "replay",
    }
    assert auto_choices(requested, resolved)["n_epochs"].startswith("5 ")


def test_gradient_checkpointing_is_on_for_long_sequences_unless_chosen() -> None:
    assert not resolve(Hyperparameters(max_seq_length=2048), 20).gradient_checkpointing
    assert resolve(Hyperparameters(max_seq_length=8192), 20).gradient_checkpointing
    chosen = Hyperparameters(max_seq_length=8192, gradient_checkpointing=False)
    assert not resolve(chosen, 20).gradient_checkpointing
    assert "gradient_checkpointing" not in auto_choices(chosen, resolve(chosen, 20))


def test_load_in_4bit_is_off_unless_asked_and_carried_as_asked() -> None:
    assert not resolve(Hyperparameters(), 20).load_in_4bit
    assert resolve(DpoHyperparameters(load_in_4bit=True), 20).load_in_4bit
    assert resolve(Hyperparameters(load_in_4bit=True), 20).as_dict()["load_in_4bit"] is True
    with pytest.raises(ValidationError):
        Hyperparameters.model_validate({"load_in_4bit": "true"})  # strict, as every field


def test_dpo_has_a_beta_and_no_replay() -> None:
    supervised = resolve(Hyperparameters(), 20)
    assert supervised.beta is None and "beta" not in supervised.as_dict()

    requested = DpoHyperparameters()
    resolved = resolve(requested, 20)
    assert (resolved.beta, resolved.replay) == (AUTO_BETA, 0.0)
    assert resolved.as_dict()["beta"] == AUTO_BETA
    assert auto_choices(requested, resolved)["replay"].startswith("0.0 (not used by DPO")
    assert "beta" in auto_choices(requested, resolved)
    assert resolve(DpoHyperparameters(beta=0.5, replay=0), 20).beta == 0.5
    assert "beta" not in auto_choices(DpoHyperparameters(beta=0.5), resolved)


@pytest.mark.parametrize("bad", [{"beta": 0}, {"beta": 2.5}, {"beta": "high"}, {"replay": 0.25}])
def test_dpo_hyperparameters_are_bounded(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        DpoHyperparameters.model_validate(bad)
    with pytest.raises(ValidationError):
        Hyperparameters.model_validate({"beta": 0.1})

"""How "auto" hyperparameters resolve, and how the job records it."""

from __future__ import annotations

import pytest

from ftaas_core.hyperparams import (
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
    }
    assert auto_choices(requested, resolved)["n_epochs"].startswith("5 ")


def test_gradient_checkpointing_is_on_for_long_sequences_unless_chosen() -> None:
    assert not resolve(Hyperparameters(max_seq_length=2048), 20).gradient_checkpointing
    assert resolve(Hyperparameters(max_seq_length=8192), 20).gradient_checkpointing
    chosen = Hyperparameters(max_seq_length=8192, gradient_checkpointing=False)
    assert not resolve(chosen, 20).gradient_checkpointing
    assert "gradient_checkpointing" not in auto_choices(chosen, resolve(chosen, 20))

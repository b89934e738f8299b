"""Group encoded examples into batches of similar lengths and pad them into tensors."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ftaas_core.encoding import IGNORE_INDEX, EncodedExample, EncodedPair

if TYPE_CHECKING:
    import torch

BATCHES_PER_MEGA_CHUNK = 50


def make_batches(
    examples: Sequence[EncodedExample | EncodedPair], batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    """Split example indices into batches of similar lengths, in a random but repeatable order.

    Sorting by length within mega-chunks of ~50 batches keeps padding low while the shuffles
    (seeded by seed and epoch, so a resumed run sees the same batches) keep batches varied.
    """
    rng = random.Random(f"ftaas-batches-{seed}-{epoch}")
    order = list(range(len(examples)))
    rng.shuffle(order)
    chunk_size = batch_size * BATCHES_PER_MEGA_CHUNK
    batches: list[list[int]] = []
    for chunk_start in range(0, len(order), chunk_size):
        chunk = sorted(
            order[chunk_start : chunk_start + chunk_size],
            key=lambda index: examples[index].n_tokens,
            reverse=True,
        )
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate(batch: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch into input_ids, attention_mask and labels tensors."""
    import torch

    width = max(len(example.input_ids) for example in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.tensor(example.input_ids, dtype=torch.long)
        labels[row, :length] = torch.tensor(example.labels, dtype=torch.long)
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_pairs(pairs: Sequence[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """The chosen rows, then the rejected rows, in one padded batch: one forward pass scores
    both answers of every pair."""
    return collate([pair.chosen for pair in pairs] + [pair.rejected for pair in pairs], pad_id)

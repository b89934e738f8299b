"""Length-grouped, seeded batches and their padding."""

from __future__ import annotations

import itertools
import random

from ftaas_core.encoding import IGNORE_INDEX, EncodedExample
from ftaas_worker.batches import collate, make_batches

M = IGNORE_INDEX


def fake_examples(lengths: list[int]) -> list[EncodedExample]:
    return [EncodedExample([1] * n, [1] * n) for n in lengths]


def test_batches_are_deterministic_and_cover_every_example_once() -> None:
    examples = fake_examples([random.Random(0).randint(1, 500) for _ in range(103)])

    batches = make_batches(examples, batch_size=4, seed=7, epoch=0)

    assert batches == make_batches(examples, batch_size=4, seed=7, epoch=0)
    assert batches != make_batches(examples, batch_size=4, seed=7, epoch=1)
    assert batches != make_batches(examples, batch_size=4, seed=8, epoch=0)
    assert sorted(index for batch in batches for index in batch) == list(range(103))
    assert sorted(len(batch) for batch in batches) == [3] + [4] * 25


def test_batches_group_similar_lengths() -> None:
    rng = random.Random(0)
    lengths = rng.sample(range(1, 10_000), 200)  # one mega-chunk of 50 batches of 4
    examples = fake_examples(lengths)

    batches = make_batches(examples, batch_size=4, seed=0, epoch=0)

    ranges = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    assert all(high < next_low for (_, high), (next_low, _) in itertools.pairwise(ranges))
    starts = [min(lengths[i] for i in batch) for batch in batches]
    assert starts != sorted(starts) and starts != sorted(starts, reverse=True)


def test_collate_right_pads() -> None:
    batch = [EncodedExample([5, 6, 7], [M, 6, 7]), EncodedExample([8], [M])]

    tensors = collate(batch, pad_id=2)

    assert tensors["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert tensors["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert tensors["labels"].tolist() == [[M, 6, 7], [M, M, M]]

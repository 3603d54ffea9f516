"""Tests of data/batching.py's decoding batches (training plans: test_pipeline.py)."""

import numpy as np
import pytest

from flax_transformer.data import DataError, batching

PAD = 0


def test_group_by_bucket_takes_the_smallest_bucket_that_holds_each_example():
    lengths = np.array([1, 8, 9, 16, 3])
    groups = batching.group_by_bucket(np.array([4, 3, 2, 1, 0]), lengths, (8, 16))
    assert [(length, members.tolist()) for length, members in groups] == [
        (8, [4, 1, 0]), (16, [3, 2])]
    with pytest.raises(DataError, match="longer than the largest bucket 16"):
        batching.group_by_bucket(np.array([0]), np.array([17]), (8, 16))


def test_default_buckets_are_powers_of_two_then_the_maximum():
    assert batching.bucket_lengths((), 40) == (8, 16, 32, 40)
    assert batching.bucket_lengths((), 64) == (8, 16, 32, 64)
    assert batching.bucket_lengths((), 5) == (5,)


def test_source_batches_fixed_shape_per_bucket_and_every_sequence_once():
    sequences = [[5] * n for n in (3, 12, 0, 7, 1, 16, 9, 2)]
    batches = list(batching.source_batches(sequences, (8, 16), tokens_per_batch=32))
    # Bucket 8 holds 4 sequences (budget 32 // 8 = 4 rows): one batch. Bucket 16 holds 3
    # (budget 2 rows): two batches of 2 rows, the second with a filler row.
    assert [batch.tokens.shape for batch in batches] == [(4, 8), (2, 16), (2, 16)]
    seen = np.concatenate([batch.indices[batch.indices >= 0] for batch in batches])
    assert sorted(seen.tolist()) == [0, 1, 3, 4, 5, 6, 7]  # the empty sequence is skipped
    for batch in batches:
        for index, row in zip(batch.indices, batch.tokens, strict=True):
            expected = sequences[index] if index >= 0 else []
            np.testing.assert_array_equal(row[:len(expected)], expected)
            assert np.all(row[len(expected):] == PAD)


def test_source_batches_shrink_to_a_power_of_two_for_few_sequences():
    batches = list(batching.source_batches([[5] * 3] * 3, (8,), tokens_per_batch=1024))
    assert [batch.tokens.shape for batch in batches] == [(4, 8)]
    assert batches[0].indices.tolist() == [0, 1, 2, -1]

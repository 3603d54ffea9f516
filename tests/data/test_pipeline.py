"""Batches: token budget, fixed shapes, every pair once per epoch, exact resume, sharding,
packing layout, overlong handling and evaluation order."""

import collections
import dataclasses
import json

import numpy as np
import pytest

from flax_transformer import data
from flax_transformer.config import DataConfig
from flax_transformer.data import batching

# Lengths (tokens + EOS) of the fixture pairs run from 3 to 27, so max_length=24 makes a
# few of them overlong and the buckets 8/16/24 are all used.
CONFIG = DataConfig(vocab_size=120, max_length=24, tokens_per_batch=384,
                    bucket_lengths=(8, 16), shuffle_seed=3)
PACKED = dataclasses.replace(CONFIG, packing=True)


def real_rows(batch):
    """Indices of rows that hold at least one pair."""
    return np.flatnonzero(batch["target_output"][:, 0])


def segments_of(batch, packed):
    """Yields (source ids, target_input ids, target_output ids) of every pair in a batch."""
    for row in real_rows(batch):
        if not packed:
            yield tuple(batch[key][row][batch[key][row] > 0]
                        for key in ("source", "target_input", "target_output"))
            continue
        for segment in range(1, batch["source_segments"][row].max() + 1):
            source_mask = batch["source_segments"][row] == segment
            target_mask = batch["target_segments"][row] == segment
            yield (batch["source"][row][source_mask], batch["target_input"][row][target_mask],
                   batch["target_output"][row][target_mask])


def one_epoch(iterator):
    return [next(iterator) for _ in range(iterator.batches_in_epoch)]


def expected_pairs(number_pairs, tokenizer, max_length):
    """(source, target) texts of the pairs that fit max_length, from an independent count."""
    return collections.Counter(
        (pair["source"], pair["target"]) for pair in number_pairs
        if max(len(tokenizer.encode(pair["source"])),
               len(tokenizer.encode(pair["target"]))) + 1 <= max_length)


@pytest.mark.parametrize("config", [CONFIG, PACKED], ids=["buckets", "packed"])
def test_every_pair_once_per_epoch_with_its_own_target(config, number_pairs, tokenizer):
    iterator = data.train_batches(number_pairs, tokenizer, config, batch_multiple=4)
    expected = expected_pairs(number_pairs, tokenizer, config.max_length)
    assert 0 < iterator.stats["dropped_overlong"] == len(number_pairs) - sum(expected.values())
    epochs = [one_epoch(iterator), one_epoch(iterator)]
    for epoch in epochs:
        seen = collections.Counter()
        for batch in epoch:
            for source, target_input, target_output in segments_of(batch, config.packing):
                assert source[-1] == target_output[-1] == data.EOS_ID
                assert target_input[0] == data.BOS_ID
                np.testing.assert_array_equal(target_input[1:], target_output[:-1])
                seen[(tokenizer.decode(source), tokenizer.decode(target_output))] += 1
        assert seen == expected
    first_order = [tuple(b["source"][0]) for b in epochs[0]]
    assert first_order != [tuple(b["source"][0]) for b in epochs[1]]  # reshuffled


@pytest.mark.parametrize("config", [CONFIG, PACKED], ids=["buckets", "packed"])
def test_budget_multiple_and_shapes_from_the_fixed_set(config, number_pairs, tokenizer):
    iterator = data.train_batches(number_pairs, tokenizer, config, batch_multiple=4)
    shapes = set()
    for batch in one_epoch(iterator) + one_epoch(iterator):
        rows, length = batch["source"].shape
        assert rows * length * 2 <= config.tokens_per_batch
        assert rows % 4 == 0 and length in (8, 16, 24)
        assert all(value.shape == (rows, length) and value.dtype == np.int32
                   for value in batch.values())
        shapes.add((rows, length))
    assert shapes == ({(8, 24)} if config.packing else {(24, 8), (12, 16), (8, 24)})


def test_bucket_lengths_and_rows():
    assert batching.bucket_lengths((), 40) == (8, 16, 32, 40)
    assert batching.bucket_lengths((), 256) == (8, 16, 32, 64, 128, 256)
    assert batching.bucket_lengths((24, 16, 100), 40) == (16, 24, 40)
    assert batching.rows_per_batch(24, 384, 4) == 8
    with pytest.raises(ValueError, match="raise it to at least 384"):
        batching.rows_per_batch(24, 380, 8)


@pytest.mark.parametrize("config", [CONFIG, PACKED], ids=["buckets", "packed"])
def test_resume_gives_exactly_the_uninterrupted_batches(config, number_pairs, tokenizer):
    uninterrupted = data.train_batches(number_pairs, tokenizer, config, batch_multiple=4)
    stop = uninterrupted.batches_in_epoch - 2  # the next batches cross into epoch 1
    for _ in range(stop):
        next(uninterrupted)
    state = json.loads(json.dumps(uninterrupted.get_state()))
    resumed = data.train_batches(number_pairs, tokenizer, config, batch_multiple=4)
    next(resumed)  # a different position, overwritten by set_state
    resumed.set_state(state)
    for _ in range(5):
        expected, actual = next(uninterrupted), next(resumed)
        assert expected.keys() == actual.keys()
        for key in expected:
            np.testing.assert_array_equal(actual[key], expected[key])
    assert resumed.get_state() == uninterrupted.get_state()
    assert resumed.get_state()["epoch"] == 1
    with pytest.raises(ValueError, match="same data and config"):
        resumed.set_state({**state, "shuffle_seed": 99})


@pytest.mark.parametrize("config", [CONFIG, PACKED], ids=["buckets", "packed"])
def test_two_processes_rows_make_up_the_global_batch(config, number_pairs, tokenizer):
    whole = data.train_batches(number_pairs, tokenizer, config, batch_multiple=4)
    shards = [data.train_batches(number_pairs, tokenizer, config, batch_multiple=2,
                                 process_index=index, process_count=2) for index in (0, 1)]
    for _ in range(whole.batches_in_epoch + 3):
        batch, parts = next(whole), [next(shard) for shard in shards]
        for key in batch:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), batch[key])


def test_packed_segments_and_positions(number_pairs, tokenizer):
    iterator = data.train_batches(number_pairs, tokenizer, PACKED, batch_multiple=4)
    rows_with_several = 0
    for batch in one_epoch(iterator):
        for side, tokens in (("source", batch["source"]), ("target", batch["target_input"])):
            for row in range(tokens.shape[0]):
                segments = batch[f"{side}_segments"][row]
                positions = batch[f"{side}_positions"][row]
                used = segments > 0
                np.testing.assert_array_equal(used, tokens[row] > 0)
                count = segments.max()
                rows_with_several += count > 1
                # segments 1, 1, 2, 2, 2, …, k, then only padding; positions 0.. per segment
                expected_segments, expected_positions = [], []
                for segment in range(1, count + 1):
                    length = int((segments == segment).sum())
                    expected_segments += [segment] * length
                    expected_positions += list(range(length))
                np.testing.assert_array_equal(segments[used], expected_segments)
                np.testing.assert_array_equal(positions[used], expected_positions)
                assert not used[len(expected_segments):].any()
                assert not positions[~used].any()
    assert rows_with_several > 0


def test_truncate_keeps_overlong_pairs_cut_to_max_length(number_pairs, tokenizer):
    config = dataclasses.replace(CONFIG, overlong="truncate")
    iterator = data.train_batches(number_pairs, tokenizer, config, batch_multiple=4)
    overlong = len(number_pairs) - sum(expected_pairs(number_pairs, tokenizer, 24).values())
    assert iterator.stats["truncated_overlong"] == overlong > 0
    assert iterator.stats["dropped_overlong"] == 0
    pairs = [pair for batch in one_epoch(iterator) for pair in segments_of(batch, False)]
    assert len(pairs) == len(number_pairs)
    longest = [pair for pair in pairs if max(len(pair[0]), len(pair[2])) == 24]
    assert len(longest) >= overlong
    assert all(pair[0][-1] == pair[2][-1] == data.EOS_ID for pair in longest)


def test_eval_batches_hold_every_example_once_in_order(number_pairs, tokenizer):
    pairs = number_pairs[:150]
    batches = data.eval_batches(pairs, tokenizer, CONFIG, batch_multiple=4)
    order = np.concatenate([batch["index"] for batch in batches])
    np.testing.assert_array_equal(order[order >= 0], np.arange(len(pairs)))
    for batch in batches:
        rows, length = batch["source"].shape
        assert rows % 4 == 0 and length in (8, 16, 24) and rows * length * 2 <= 384
        assert set(batch) == {"source", "target_input", "target_output", "index"}
        for row, index in enumerate(batch["index"]):
            if index < 0:
                assert not batch["source"][row].any() and not batch["target_output"][row].any()
                continue
            expected = [*tokenizer.encode(pairs[index]["source"])[:23], data.EOS_ID]
            np.testing.assert_array_equal(batch["source"][row][:len(expected)], expected)
            assert tokenizer.decode(batch["target_output"][row]) in pairs[index]["target"]
    limited = data.eval_batches(pairs, tokenizer, CONFIG, batch_multiple=4, max_examples=10)
    limited_order = np.concatenate([batch["index"] for batch in limited])
    np.testing.assert_array_equal(limited_order[limited_order >= 0], np.arange(10))


def test_no_usable_pair_is_a_clear_error(number_pairs, tokenizer):
    config = dataclasses.replace(CONFIG, max_length=1, bucket_lengths=())
    with pytest.raises(ValueError, match="overlong='truncate'"):
        data.train_batches(number_pairs, tokenizer, config, batch_multiple=1)

"""data/tokens.py: every pair's flat token windows against the tokenizer's own encodings,
overlong pairs dropped or truncated, chunked and multi-process encoding equal to one pass."""

import numpy as np
import pytest

from flax_transformer.data import DataError, tokens
from flax_transformer.data.tokenizer import BOS_ID, EOS_ID


def _windows(pairs: tokens.TokenizedPairs, index: int):
    """(source, target_input, target_output) of pair ``index``, as the batches cut them."""
    source_start, target_start = pairs.source_starts[index], pairs.target_starts[index]
    source_length, target_length = pairs.source_lengths[index], pairs.target_lengths[index]
    return (pairs.source_tokens[source_start:source_start + source_length].tolist(),
            pairs.target_tokens[target_start:target_start + target_length].tolist(),
            pairs.target_tokens[target_start + 1:target_start + 1 + target_length].tolist())


def _check_layout(pairs: tokens.TokenizedPairs, count: int) -> None:
    """Dtypes and shapes as documented; each pair's windows follow the previous one's."""
    assert pairs.source_tokens.dtype == pairs.target_tokens.dtype == np.int32
    assert pairs.source_starts.dtype == pairs.target_starts.dtype == np.int64
    assert pairs.source_lengths.dtype == pairs.target_lengths.dtype == np.int32
    assert pairs.usable.dtype == np.bool_
    for array in (pairs.source_starts, pairs.source_lengths, pairs.target_starts,
                  pairs.target_lengths, pairs.usable, pairs.lengths):
        assert array.shape == (count,)
    # Source: tokens + EOS back to back. Target: BOS + tokens + EOS, one more per pair.
    source_ends = np.cumsum(pairs.source_lengths)
    target_ends = np.cumsum(pairs.target_lengths + 1)
    np.testing.assert_array_equal(pairs.source_starts, np.r_[0, source_ends[:-1]])
    np.testing.assert_array_equal(pairs.target_starts, np.r_[0, target_ends[:-1]])
    assert pairs.source_tokens.size == source_ends[-1]
    assert pairs.target_tokens.size == target_ends[-1]


def test_windows_hold_each_pairs_own_encoding(number_pairs, tokenizer):
    # 600 pairs: two chunks of SentencePiece calls, joined in order.
    assert len(number_pairs) > tokens._CHUNK
    pairs = tokens.tokenize_pairs(number_pairs, tokenizer, max_length=64, overlong="drop")
    _check_layout(pairs, len(number_pairs))
    assert pairs.usable.all()
    assert pairs.counts == {"pairs": 600, "overlong": 0, "dropped_overlong": 0,
                            "truncated_overlong": 0}
    for index, pair in enumerate(number_pairs):
        source_ids = tokenizer.encode(pair["source"])
        target_ids = tokenizer.encode(pair["target"])
        source, target_input, target_output = _windows(pairs, index)
        assert source == [*source_ids, EOS_ID]
        assert target_input == [BOS_ID, *target_ids]
        assert target_output == [*target_ids, EOS_ID]
        assert pairs.lengths[index] == max(len(source_ids), len(target_ids)) + 1


def test_overlong_pairs_are_marked_unusable_when_dropped(number_pairs, tokenizer):
    max_length = 8
    pairs = tokens.tokenize_pairs(number_pairs, tokenizer, max_length, overlong="drop")
    _check_layout(pairs, len(number_pairs))
    needed = np.array([max(len(tokenizer.encode(pair["source"])),
                           len(tokenizer.encode(pair["target"]))) + 1
                       for pair in number_pairs])
    overlong = int((needed > max_length).sum())
    assert 0 < overlong < len(number_pairs)  # the fixture has both kinds
    np.testing.assert_array_equal(pairs.usable, needed <= max_length)
    assert pairs.counts == {"pairs": 600, "overlong": overlong, "dropped_overlong": overlong,
                            "truncated_overlong": 0}
    assert pairs.lengths.max() == max_length
    np.testing.assert_array_equal(pairs.lengths, np.minimum(needed, max_length))


@pytest.mark.parametrize("max_length", [1, 2, 8])
def test_truncated_pairs_keep_their_first_tokens_and_eos(number_pairs, tokenizer,
                                                         max_length):
    pairs = tokens.tokenize_pairs(number_pairs, tokenizer, max_length, overlong="truncate")
    _check_layout(pairs, len(number_pairs))
    assert pairs.usable.all()
    overlong = 0
    for index, pair in enumerate(number_pairs):
        source_ids = tokenizer.encode(pair["source"])[:max_length - 1]
        target_ids = tokenizer.encode(pair["target"])[:max_length - 1]
        overlong += max(len(tokenizer.encode(pair["source"])),
                        len(tokenizer.encode(pair["target"]))) + 1 > max_length
        source, target_input, target_output = _windows(pairs, index)
        assert source == [*source_ids, EOS_ID]
        assert target_input == [BOS_ID, *target_ids]
        assert target_output == [*target_ids, EOS_ID]
        assert len(source) <= max_length and len(target_output) <= max_length
    assert pairs.counts == {"pairs": 600, "overlong": overlong, "dropped_overlong": 0,
                            "truncated_overlong": overlong}


@pytest.mark.parametrize("overlong", ["drop", "truncate"])
def test_empty_texts_are_eos_only_and_fit_the_smallest_max_length(tokenizer, overlong):
    texts = [{"source": "", "target": ""}, {"source": "drei", "target": ""},
             {"source": "", "target": "drei"}]
    pairs = tokens.tokenize_pairs(texts, tokenizer, max_length=1, overlong=overlong)
    _check_layout(pairs, 3)
    assert [_windows(pairs, index) for index in range(3)] == [([EOS_ID], [BOS_ID], [EOS_ID])] * 3
    assert pairs.usable.tolist() == ([True, False, False] if overlong == "drop" else [True] * 3)
    assert pairs.counts["overlong"] == 2


def test_no_pairs_give_empty_arrays(tokenizer):
    pairs = tokens.tokenize_pairs([], tokenizer, max_length=8, overlong="drop")
    for array in (pairs.source_tokens, pairs.target_tokens, pairs.source_lengths,
                  pairs.target_lengths, pairs.usable, pairs.lengths, pairs.source_starts,
                  pairs.target_starts):
        assert array.shape == (0,)
    assert not pairs.usable.any()
    assert pairs.counts == {"pairs": 0, "overlong": 0, "dropped_overlong": 0,
                            "truncated_overlong": 0}


@pytest.mark.parametrize("overlong", ["Drop", "cut", ""])
def test_unknown_overlong_mode_says_which_values_are_allowed(tokenizer, overlong):
    with pytest.raises(DataError) as raised:
        tokens.tokenize_pairs([{"source": "eins", "target": "eins"}], tokenizer, 8, overlong)
    assert str(raised.value) == f"overlong={overlong!r} must be 'drop' or 'truncate'."


class _Records:
    """A random-access source that, like TFDS and grain sources, reads lists of indices."""

    def __init__(self, pairs):
        self._pairs, self.reads = pairs, []

    def __len__(self):
        return len(self._pairs)

    def __getitem__(self, index):
        raise AssertionError("records must be read a chunk at a time")

    def __getitems__(self, indices):
        self.reads.append(list(indices))
        return [self._pairs[index] for index in indices]


def test_a_source_of_index_lists_is_read_once_per_chunk(number_pairs, tokenizer):
    records = _Records(number_pairs)
    read = tokens.tokenize_pairs(records, tokenizer, max_length=8, overlong="drop")
    chunk = tokens._CHUNK
    assert records.reads == [list(range(chunk)), list(range(chunk, len(number_pairs)))]
    listed = tokens.tokenize_pairs(number_pairs, tokenizer, max_length=8, overlong="drop")
    for name in ("source_tokens", "source_starts", "source_lengths", "target_tokens",
                 "target_starts", "target_lengths", "usable"):
        np.testing.assert_array_equal(getattr(read, name), getattr(listed, name))
    assert read.counts == listed.counts


def test_worker_processes_give_the_same_arrays_as_one_process(number_pairs, tokenizer):
    one = tokens.tokenize_pairs(number_pairs, tokenizer, max_length=8, overlong="drop")
    workers = tokens.tokenize_pairs(number_pairs, tokenizer, max_length=8, overlong="drop",
                                    num_workers=2)
    for name in ("source_tokens", "source_starts", "source_lengths", "target_tokens",
                 "target_starts", "target_lengths", "usable"):
        np.testing.assert_array_equal(getattr(workers, name), getattr(one, name))
    assert workers.counts == one.counts

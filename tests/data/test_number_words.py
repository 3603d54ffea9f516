"""number_words: known translations, an independent German reader, splits, the TFDS build."""

import collections
import os

import numpy as np
import pytest

from flax_transformer.data import number_words
from flax_transformer.data.number_words import NumberWords, NumberWordsConfig


def _digits(numbers) -> np.ndarray:
    """Count of numbers per digit count 1 … 6 (index 0 … 5)."""
    return np.bincount([len(str(n)) for n in np.asarray(numbers).tolist()], minlength=7)[1:]


def test_train_gives_every_digit_count_an_equal_share():
    splits = number_words.split_numbers(50_000, 1_000, below_1000_in_eval=True)
    train = splits["train"]
    assert len(train) == 50_000
    assert _digits(train).tolist() == [8_334, 8_334, 8_333, 8_333, 8_333, 8_333]
    # Small classes repeat every number about equally often; large ones never repeat.
    counts = np.bincount(train, minlength=10**6)
    assert set(counts[:10].tolist()) <= {833, 834}
    assert set(counts[10:100].tolist()) <= {92, 93}
    assert set(counts[100:1000].tolist()) <= {9, 10}
    assert counts[10_000:].max() == 1
    assert 0 < counts[1000:10_000].max() <= 2   # 9,000 four-digit numbers less 668 held out


def test_round_thousands_are_trained_on_unless_held_out():
    """round_thousands=2 (version 3.0.0's builder) adds every multiple of 1,000 not held
    out, twice: uniform draws alone hold about 25 of the 999 (a model trained on them
    wrote "eins" for "one thousand"), and none of the held-out numbers leaks into
    training."""
    plain = number_words.split_numbers(50_000, 1_000, below_1000_in_eval=True)
    splits = number_words.split_numbers(50_000, 1_000, below_1000_in_eval=True,
                                        round_thousands=2)
    thousands = np.arange(1, 1000) * 1000
    held = np.concatenate([splits["validation"], splits["test"]])
    held = held[held >= 1000]
    trained = np.setdiff1d(thousands, held)
    assert len(trained) >= 990
    plain_counts = np.bincount(plain["train"], minlength=10**6)
    counts = np.bincount(splits["train"], minlength=10**6)
    assert plain_counts[thousands].sum() < 40                   # what uniform draws give
    np.testing.assert_array_equal(counts[trained], plain_counts[trained] + 2)
    assert counts[np.intersect1d(thousands, held)].sum() == 0
    assert len(splits["train"]) == 50_000 + 2 * len(trained)
    np.testing.assert_array_equal(splits["test"], plain["test"])      # evaluation: the same
    np.testing.assert_array_equal(np.sort(splits["validation"]), np.sort(plain["validation"]))
    other = np.setdiff1d(np.arange(10**6), thousands)          # the rest as before
    np.testing.assert_array_equal(counts[other], plain_counts[other])


def _by_ending(numbers) -> dict[tuple[int, int], int]:
    """Count of the numbers from 1,000 up per (digit count, ending class)."""
    numbers = np.asarray(numbers)
    return dict(collections.Counter((len(str(n)), number_words.ending_class(n))
                                    for n in numbers[numbers >= 1000].tolist()))


def test_by_ending_trains_on_every_ending_and_holds_each_out():
    """Uniform draws give "… thousand seven" (ending 001–009) 0.9 % of the numbers; the
    default run of version 3.0.0 dropped its last word for 15.8 % of the 6-digit ones
    while the test report said 99.9 %. By ending, train draws half of each class of 4 … 6
    digits uniformly and half by ending, and validation and test hold out every ending."""
    splits = number_words.split_numbers(50_000, 1_000, below_1000_in_eval=True,
                                        by_ending=True)
    train = splits["train"]
    assert len(train) == 50_000
    assert _digits(train).tolist() == [8_334, 8_334, 8_333, 8_333, 8_333, 8_333]
    # Half of each class of 4 … 6 digits uniform, half a twelfth for each ending: every
    # ending at least a twelfth (694), …x10–…x99 81–85 % of the uniform half on top.
    for digits in (4, 5, 6):
        drawn = np.array([_by_ending(train)[digits, ending] for ending in range(6)])
        assert drawn.min() >= 694 and drawn.sum() == 8_333
        assert 694 + 0.78 * 4_167 < drawn[5] < 694 + 0.86 * 4_167
    # Held out: equal shares where an ending has enough numbers (both splits together take
    # at most a quarter of one: 4-digit numbers have 9 round thousands and 81 of each of
    # …001–…009 and …x00).
    expected = {(4, 0): 1, (4, 1): 10, (4, 2): 101, (4, 3): 10, (4, 4): 91, (4, 5): 121,
                (5, 0): 11, (5, 1): 65, (5, 2): 64, (5, 3): 65, (5, 4): 64, (5, 5): 64,
                (6, 0): 56, (6, 1): 56, (6, 2): 55, (6, 3): 56, (6, 4): 55, (6, 5): 55}
    held = {}
    for name in ("validation", "test"):
        numbers = splits[name]
        assert len(numbers) == len(set(numbers.tolist())) == 2_000
        assert set(range(1000)) <= set(numbers.tolist())
        assert _by_ending(numbers) == expected
        held[name] = numbers[numbers >= 1000]
        assert not np.intersect1d(held[name], train).size           # never trained on
    assert not np.intersect1d(held["validation"], held["test"]).size
    # Round thousands: the 7 of 4 digits not held out ~100 times each (a twelfth of the
    # 4-digit share), those of 5 digits ~10 times, most of the 832 of 6 digits once; the
    # held-out ones never.
    thousands = np.arange(1, 1000) * 1000
    held_thousands = np.intersect1d(thousands, np.concatenate(list(held.values())))
    counts = np.bincount(train, minlength=10**6)
    assert len(held_thousands) == 2 * 68
    assert counts[held_thousands].sum() == 0
    assert counts[np.setdiff1d(np.arange(1, 10) * 1000, held_thousands)].min() >= 90
    trained = np.setdiff1d(thousands, held_thousands)
    assert counts[trained[trained < 100_000]].min() >= 9               # 4 and 5 digits
    assert (counts[trained[trained >= 100_000]] > 0).sum() >= 694      # of the 832
    again = number_words.split_numbers(50_000, 1_000, below_1000_in_eval=True,
                                       by_ending=True)
    for name in splits:
        np.testing.assert_array_equal(splits[name], again[name])
    config = number_words.NumberWords.BUILDER_CONFIGS[0]
    assert (config.train_size, config.by_ending, config.round_thousands) == (50_000, True, 0)


def test_ending_class_and_capped_shares():
    assert [number_words.ending_class(n) for n in (
        1_000, 944_007, 16_070, 2_100, 5_304, 999_999)] == [0, 1, 2, 3, 4, 5]
    sizes = [len(number_words._stratum(6, ending)) for ending in range(6)]
    assert sizes == [900, 8_100, 81_000, 8_100, 72_900, 729_000]     # 900,000 in all
    assert number_words._capped_shares(333, [11, 101, 1_012, 10_125]) == [11, 101, 111, 110]
    assert number_words._capped_shares(8, [100, 100, 100]) == [3, 3, 2]
    assert number_words._capped_shares(10, [0, 10]) == [0, 10]


def test_evaluation_splits_hold_out_large_numbers_and_contain_all_below_1000():
    splits = number_words.split_numbers(50_000, 1_000, below_1000_in_eval=True)
    again = number_words.split_numbers(50_000, 1_000, below_1000_in_eval=True)
    for name in splits:
        np.testing.assert_array_equal(splits[name], again[name])
    train = set(splits["train"].tolist())
    held_out = {}
    for name in ("validation", "test"):
        numbers = splits[name]
        assert len(numbers) == len(set(numbers.tolist())) == 2_000
        assert _digits(numbers).tolist() == [10, 90, 900, 334, 333, 333]
        assert set(range(1000)) <= set(numbers.tolist()) and set(range(1000)) <= train
        held_out[name] = set(numbers[numbers >= 1000].tolist())
        assert not held_out[name] & train
    assert not held_out["validation"] & held_out["test"]
    np.testing.assert_array_equal(splits["test"], np.sort(splits["test"]))
    other_seed = number_words.split_numbers(50_000, 1_000, seed=1, below_1000_in_eval=True)
    assert not np.array_equal(other_seed["test"], splits["test"])


def test_small_splits_without_numbers_below_1000_in_evaluation():
    splits = number_words.split_numbers(150, 10)
    assert {name: len(numbers) for name, numbers in splits.items()} == {
        "train": 150, "validation": 10, "test": 10}
    assert _digits(splits["test"]).tolist() == [0, 0, 0, 4, 3, 3]
    assert _digits(splits["train"]).tolist() == [25] * 6
    with pytest.raises(ValueError, match="smaller eval_size"):
        number_words.split_numbers(100, 15_000)


def test_builder_writes_array_record_and_is_reused(tmp_path):
    config = NumberWordsConfig(name="small", train_size=200, eval_size=10)
    builder = NumberWords(config=config, data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    files = sorted(tmp_path.rglob("*.array_record*"))
    assert len(files) == 3
    assert all(f"{os.sep}4.0.0{os.sep}" in str(path) for path in files)
    stamps = [path.stat().st_mtime_ns for path in files]
    expected = number_words.split_numbers(200, 10)
    for split, numbers in expected.items():
        source = builder.as_data_source(split=split)
        assert len(source) == len(numbers)
        for index in (0, len(numbers) - 1):
            record = source[index]
            assert int(record["number"]) == numbers[index]
            assert record["target"].decode() == number_words.german(int(numbers[index]))
            assert record["source"].decode() == number_words.english(int(numbers[index]))
    again = NumberWords(config=config, data_dir=str(tmp_path), file_format="array_record")
    again.download_and_prepare()
    assert [path.stat().st_mtime_ns for path in files] == stamps

"""number_words: known translations, an independent German reader, splits, the TFDS build."""

import numpy as np
import pytest

from flax_transformer.data import number_words
from flax_transformer.data.number_words import NumberWords, NumberWordsConfig

KNOWN = {
    0: ("zero", "null"),
    1: ("one", "eins"),
    7: ("seven", "sieben"),
    11: ("eleven", "elf"),
    16: ("sixteen", "sechzehn"),
    17: ("seventeen", "siebzehn"),
    21: ("twenty-one", "einundzwanzig"),
    30: ("thirty", "dreißig"),
    60: ("sixty", "sechzig"),
    70: ("seventy", "siebzig"),
    99: ("ninety-nine", "neunundneunzig"),
    100: ("one hundred", "einhundert"),
    101: ("one hundred one", "einhunderteins"),
    342: ("three hundred forty-two", "dreihundertzweiundvierzig"),
    1000: ("one thousand", "eintausend"),
    1001: ("one thousand one", "eintausendeins"),
    1100: ("one thousand one hundred", "eintausendeinhundert"),
    21000: ("twenty-one thousand", "einundzwanzigtausend"),
    101000: ("one hundred one thousand", "einhunderteintausend"),
    716017: ("seven hundred sixteen thousand seventeen",
             "siebenhundertsechzehntausendsiebzehn"),
    999999: ("nine hundred ninety-nine thousand nine hundred ninety-nine",
             "neunhundertneunundneunzigtausendneunhundertneunundneunzig"),
}


@pytest.mark.parametrize("number", sorted(KNOWN))
def test_known_translations(number):
    assert (number_words.english(number), number_words.german(number)) == KNOWN[number]


_UNITS = {"ein": 1, "eins": 1, "zwei": 2, "drei": 3, "vier": 4, "fünf": 5, "sechs": 6,
          "sieben": 7, "acht": 8, "neun": 9}
_TEENS = {"zehn": 10, "elf": 11, "zwölf": 12, "dreizehn": 13, "vierzehn": 14,
          "fünfzehn": 15, "sechzehn": 16, "siebzehn": 17, "achtzehn": 18, "neunzehn": 19}
_TENS = {"zwanzig": 20, "dreißig": 30, "vierzig": 40, "fünfzig": 50, "sechzig": 60,
         "siebzig": 70, "achtzig": 80, "neunzig": 90}


def _read_german_below_100(word: str, final: bool) -> int:
    """1 … 99; checks "eins" stands only where nothing follows and "ein" only before more."""
    units, _, tens = word.partition("und")
    if tens:
        assert units != "eins", word
        return _UNITS[units] + _TENS[tens]
    if word in ("ein", "eins"):
        assert (word == "eins") == final, word
    return (_UNITS | _TEENS | _TENS)[word]


def _read_german_below_1000(word: str, final: bool) -> int:
    hundreds, _, rest = word.rpartition("hundert")
    value = 100 * _read_german_below_100(hundreds, final=False) if hundreds else 0
    return value + (_read_german_below_100(rest, final) if rest else 0)


def read_german(word: str) -> int:
    """An independent reader: parses German number words back into the number."""
    if word == "null":
        return 0
    thousands, _, rest = word.rpartition("tausend")
    value = 1000 * _read_german_below_1000(thousands, final=False) if thousands else 0
    return value + (_read_german_below_1000(rest, final=True) if rest else 0)


def read_english(text: str) -> int:
    """An independent reader for the English side."""
    small = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
             "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
             "seventeen", "eighteen", "nineteen")
    tens = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
    values = {w: i for i, w in enumerate(small)} | {w: 20 + 10 * i for i, w in enumerate(tens)}
    total, group = 0, 0
    for word in text.split():
        if word == "thousand":
            total, group = total + group * 1000, 0
        elif word == "hundred":
            group *= 100
        else:
            group += sum(values[part] for part in word.split("-"))
    return total + group


def test_every_sampled_number_reads_back_in_both_languages():
    rng = np.random.default_rng(0)
    numbers = np.concatenate([np.arange(1100), rng.integers(0, 1_000_000, 5000)])
    for number in numbers.tolist():
        assert read_german(number_words.german(number)) == number
        assert read_english(number_words.english(number)) == number


def test_out_of_range_is_refused():
    with pytest.raises(ValueError, match="999,999"):
        number_words.german(1_000_000)


def test_default_splits_are_disjoint_deterministic_and_cover_all_magnitudes():
    splits = number_words.split_numbers(50_000, 1_000)
    again = number_words.split_numbers(50_000, 1_000)
    assert {name: len(numbers) for name, numbers in splits.items()} == {
        "train": 50_000, "validation": 1_000, "test": 1_000}
    for name in splits:
        np.testing.assert_array_equal(splits[name], again[name])
    sets = {name: set(numbers.tolist()) for name, numbers in splits.items()}
    assert sum(len(s) for s in sets.values()) == len(set.union(*sets.values())) == 52_000
    assert set(range(1000)) <= sets["train"]
    for name in ("train", "validation", "test"):
        digits = np.bincount([len(str(n)) for n in sets[name]], minlength=7)
        assert (digits[4:] >= 0.15 * len(sets[name])).all(), (name, digits)
    assert not np.array_equal(number_words.split_numbers(50_000, 1_000, seed=1)["test"],
                              splits["test"])


def test_builder_writes_array_record_and_is_reused(tmp_path):
    config = NumberWordsConfig(name="small", train_size=200, eval_size=10)
    builder = NumberWords(config=config, data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    files = sorted(tmp_path.rglob("*.array_record*"))
    assert len(files) == 3
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

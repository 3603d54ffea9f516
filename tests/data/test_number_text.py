"""The task's text: English and German number words (data/number_text.py)."""

import numpy as np
import pytest

from flax_transformer.data import number_text

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
    assert (number_text.english(number), number_text.german(number)) == KNOWN[number]


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
        assert read_german(number_text.german(number)) == number
        assert read_english(number_text.english(number)) == number


def test_out_of_range_is_refused():
    with pytest.raises(ValueError, match="999,999"):
        number_text.german(1_000_000)


def test_parse_english_reads_back_every_sampled_number_and_refuses_other_text():
    rng = np.random.default_rng(1)
    for number in [*range(1100), *rng.integers(0, 1_000_000, 2000).tolist()]:
        assert number_text.parse_english(number_text.english(number)) == number
    for text in ("forty two", "one hundred and one", "zwei", "", "twelve hundred",
                 "one thousand thousand", "Seven"):
        with pytest.raises(ValueError, match="not an English number word"):
            number_text.parse_english(text)


def test_is_number_words_tells_what_decode_py_warns_about():
    assert number_text.is_number_words("three hundred forty-two")
    assert number_text.is_number_words("nine hundred ninety-nine thousand nine hundred ninety-nine")
    for text in ("Seven", "forty two", "one hundred and one", "1234", "two million", "",
                 "sieben"):
        assert not number_text.is_number_words(text)


def test_the_text_module_needs_no_tfds():
    """decode.py checks its input with number_text; importing it must not import TFDS."""
    import subprocess
    import sys
    code = ("import sys; import flax_transformer.data.number_text; "
            "print('tensorflow_datasets' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"

"""English and German number words, 0 … 999,999: the text of the built-in task.

Pure Python (no TFDS): decode.py reads its input with ``parse_english`` without loading
the dataset builder (number_words.py), which imports TFDS.

"three hundred forty-two" → "dreihundertzweiundvierzig". Small enough for a CPU, yet it
has reordering (units before tens: "zweiundvierzig"), compounding (one German word for a
whole number), a length change, and the "eins"/"ein" alternation.

Conventions (English): lower case, hyphens inside 21…99 ("forty-two"), no "and"
("one hundred one"), "one hundred", "one thousand".
Conventions (German): one word, hundreds and thousands always with their multiplier
("einhundert", "eintausend", "einhunderteins", "eintausendeins"); a final 1 is "eins"
(1, 101, 1001, 2001), a 1 before "und", "hundert" or "tausend" is "ein" ("einundzwanzig",
"einhunderteintausend" = 101,000).
"""

from __future__ import annotations

from flax_transformer.data.errors import DataError

LARGEST = 999_999

_ENGLISH_SMALL = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)
_ENGLISH_TENS = (
    "_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
)
_GERMAN_SMALL = (
    "null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn",
    "elf", "zwölf", "dreizehn", "vierzehn", "fünfzehn", "sechzehn", "siebzehn", "achtzehn",
    "neunzehn",
)
_GERMAN_TENS = (
    "_", "_", "zwanzig", "dreißig", "vierzig", "fünfzig", "sechzig", "siebzig", "achtzig",
    "neunzig",
)


def _check_range(number: int) -> None:
    if not 0 <= number <= LARGEST:
        raise DataError(f"number_words covers 0 … {LARGEST:,}, not {number}.")


def _english_below_1000(number: int) -> list[str]:
    hundreds, rest = divmod(number, 100)
    words = [_ENGLISH_SMALL[hundreds], "hundred"] if hundreds else []
    if rest >= 20:
        tens, units = divmod(rest, 10)
        words.append(_ENGLISH_TENS[tens] + (f"-{_ENGLISH_SMALL[units]}" if units else ""))
    elif rest:
        words.append(_ENGLISH_SMALL[rest])
    return words


def english(number: int) -> str:
    """English words for 0 … 999,999: 342 → "three hundred forty-two"."""
    _check_range(number)
    if number == 0:
        return "zero"
    thousands, rest = divmod(number, 1000)
    words = [*_english_below_1000(thousands), "thousand"] if thousands else []
    return " ".join(words + _english_below_1000(rest))


def _german_below_100(number: int, final: bool) -> str:
    """1 … 99; ``final`` = nothing follows, so a lone 1 reads "eins" rather than "ein"."""
    if number == 1:
        return "eins" if final else "ein"
    if number < 20:
        return _GERMAN_SMALL[number]
    tens, units = divmod(number, 10)
    if not units:
        return _GERMAN_TENS[tens]
    return _german_below_100(units, final=False) + "und" + _GERMAN_TENS[tens]


def _german_below_1000(number: int, final: bool) -> str:
    hundreds, rest = divmod(number, 100)
    word = _german_below_100(hundreds, final=False) + "hundert" if hundreds else ""
    return word + (_german_below_100(rest, final) if rest else "")


def german(number: int) -> str:
    """German words for 0 … 999,999: 342 → "dreihundertzweiundvierzig"."""
    _check_range(number)
    if number == 0:
        return "null"
    thousands, rest = divmod(number, 1000)
    word = _german_below_1000(thousands, final=False) + "tausend" if thousands else ""
    return word + (_german_below_1000(rest, final=True) if rest else "")


DIGIT_CLASSES = (1, 2, 3, 4, 5, 6)
HELD_OUT_CLASSES = (4, 5, 6)   # below 1000 every number is a building block and is trained on
# The ending of a number of 4 … 6 digits is its last three digits as a number. Its class
# is the form its words take: hundreds or not, and its last two digits 00, 01–09 or 10–99.
# Uniform draws give the classes 0.1, 0.9, 9, 0.9, 8.1 and 81 % of the numbers, and a
# model learns the rare ones last ("… thousand seven", "… thousand one hundred").
ENDING_CLASSES = ("000", "001–009", "010–099", "x00", "x01–x09", "x10–x99")


def digit_range(digits: int) -> range:
    """The numbers written with ``digits`` digits: 1 → 0 … 9, 2 → 10 … 99, …"""
    return range(0 if digits == 1 else 10 ** (digits - 1), 10**digits)


def ending_class(number: int) -> int:
    """The index in ENDING_CLASSES of the last three digits of ``number`` (≥ 1,000)."""
    hundreds, last_two = divmod(number % 1000, 100)
    return (3 if hundreds else 0) + (0 if not last_two else 1 if last_two < 10 else 2)


# English word (or part of a hyphenated one) -> its value, for parse_english.
_ENGLISH_VALUES = {word: value for value, word in enumerate(_ENGLISH_SMALL)} | {
    word: 10 * value for value, word in enumerate(_ENGLISH_TENS) if value >= 2}


def parse_english(text: str) -> int:
    """The number that ``english`` writes as ``text``; a DataError for anything else."""
    total, group = 0, 0
    try:
        for word in text.split():
            if word == "thousand":
                total, group = total + 1000 * group, 0
            elif word == "hundred":
                group *= 100
            else:
                group += sum(_ENGLISH_VALUES[part] for part in word.split("-"))
    except KeyError:
        total = -1
    number = total + group
    if not 0 <= number <= LARGEST or english(number) != text:
        raise DataError(f"{text!r} is not an English number word of number_words "
                        f"(e.g. 'three hundred forty-two').")
    return number


def is_number_words(text: str) -> bool:
    """Whether ``text`` is an English number word as ``english`` writes it."""
    try:
        parse_english(text)
    except DataError:
        return False
    return True

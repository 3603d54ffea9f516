"""The built-in task: English number words → German number words, 0 … 999,999.

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

from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

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


def _digit_class_sizes(total: int) -> list[int]:
    """How many numbers of each digit count 1 … 6: equal shares, capped by how many exist."""
    available = [10, 90, 900, 9_000, 90_000, 900_000]
    if total > sum(available):
        raise DataError(f"number_words has only {sum(available):,} numbers, not {total:,}.")
    sizes = [0] * 6
    open_classes = list(range(6))
    while total > sum(sizes):
        share = max(1, (total - sum(sizes)) // len(open_classes))
        for digits in list(open_classes):
            sizes[digits] += min(share, available[digits] - sizes[digits], total - sum(sizes))
            if sizes[digits] == available[digits]:
                open_classes.remove(digits)
    return sizes


def split_numbers(train_size: int, eval_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Disjoint, seeded sets of numbers for "train", "validation" and "test".

    Every digit count (1 … 6) gets an equal share where it has enough numbers, so all
    magnitudes are well represented; all of 0 … 999 are drawn when the size allows. The
    numbers below 1000 go to train (they are the building blocks of every larger
    number); validation and test (``eval_size`` each) are drawn from the rest.

    Returns:
      split name → int64 [N] numbers in a shuffled order.
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for digits, size in enumerate(_digit_class_sizes(train_size + 2 * eval_size)):
        low = 0 if digits == 0 else 10**digits
        chosen.append(low + rng.choice(10 ** (digits + 1) - low, size, replace=False))
    numbers = np.concatenate(chosen)
    small, large = numbers[numbers < 1000], rng.permutation(numbers[numbers >= 1000])
    if len(large) < 2 * eval_size:
        raise DataError(f"eval_size={eval_size} is too large for train_size={train_size}.")
    train = rng.permutation(np.concatenate([small, large[2 * eval_size:]]))
    return {"train": train, "validation": large[:eval_size],
            "test": large[eval_size:2 * eval_size]}


class NumberWordsConfig(tfds.core.BuilderConfig):
    """Sizes of the generated splits (validation and test have ``eval_size`` each)."""

    def __init__(self, *, train_size: int, eval_size: int, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.train_size, self.eval_size, self.seed = train_size, eval_size, seed


class NumberWords(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """English → German number words, generated by our own code (no download)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS: ClassVar = [
        NumberWordsConfig(name="default", train_size=50_000, eval_size=1_000)]

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__, disable_shuffling=True,
            features=tfds.features.FeaturesDict({"source": text, "target": text,
                                                 "number": np.int64}),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is generated
        config = self.builder_config
        splits = split_numbers(config.train_size, config.eval_size, config.seed)
        return {name: self._generate_examples(numbers) for name, numbers in splits.items()}

    def _generate_examples(self, numbers):
        for index, number in enumerate(numbers.tolist()):
            yield index, {"source": english(number), "target": german(number), "number": number}

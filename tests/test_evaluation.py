"""evaluation.py's scores: exact match, and the per-digit-count table of number_words."""

import pytest

from flax_transformer import evaluation
from flax_transformer.data import number_words


def _pairs(numbers):
    return ([number_words.english(n) for n in numbers],
            [number_words.german(n) for n in numbers])


def test_digit_classes_count_examples_matches_and_what_training_saw():
    numbers = [0, 7, 42, 342, 999, 1001, 54_321, 654_321, 999_999]
    sources, references = _pairs(numbers)
    hypotheses = list(references)
    hypotheses[1] = "siebentausend"            # 7 wrong
    hypotheses[7] = references[7] + " "         # outer spaces do not count
    hypotheses[8] = "neunhundert"              # 999,999 wrong
    train = set(sources[:5]) | {sources[6]}     # 0 … 999 and 54,321 were trained on
    rows = evaluation.digit_classes(sources, hypotheses, references, train)
    table = {row["name"]: (row["examples"], row["exact_match"], row["seen"]) for row in rows}
    assert table == {"1": (2, 0.5, 2), "2": (1, 1.0, 1), "3": (2, 1.0, 2),
                     "4": (1, 1.0, 0), "5": (1, 1.0, 1), "6": (2, 0.5, 0),
                     "all of 0–999": (5, 0.8, 5)}
    assert [row["key"] for row in rows][-1] == "below_1000"
    cells = [[cell.strip() for cell in line.split("|")]
             for line in evaluation.digit_class_lines(rows)]
    assert cells[0] == ["digits", "examples", "exact match", "seen in training?"]
    assert cells[2] == ["1", "2", "50.0 %", "yes"]
    assert cells[5] == ["4", "1", "100.0 %", "no (held out)"]
    assert cells[-1] == ["all of 0–999", "5", "80.0 %", "yes"]


def test_digit_classes_read_the_english_side_in_either_direction():
    english, german = _pairs([12, 3_000])
    rows = evaluation.digit_classes(german, ["zwölf", "three thousand"], english, set())
    assert [(row["name"], row["exact_match"], row["seen"]) for row in rows] == [
        ("2", 0.0, 0), ("4", 1.0, 0), ("all of 0–999", 0.0, 0)]


def test_partly_seen_class_says_how_many():
    sources, references = _pairs([1_000, 1_001])
    rows = evaluation.digit_classes(sources, references, references, {sources[0]})
    assert evaluation.digit_class_lines(rows)[2].endswith("| 1 of 2")


def test_exact_match_strips_outer_spaces_only():
    assert evaluation.exact_match(["a b ", "ab"], ["a b", "a b"]) == pytest.approx(0.5)

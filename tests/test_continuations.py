"""continuations.py: the German-number lookup, the validity share, the report's arithmetic
and the stdin scorer, without a trained model.

The report on a real (random) model runs in test_language_model.py; here
``language_model.continue_lines`` is replaced by a scripted one, so that every number the
report gives is checked against a count made by hand.
"""

import io
import random
import sys
import types

import hypothesis
import pytest
from hypothesis import strategies as st

from flax_transformer import continuations, language_model
from flax_transformer.data import number_words

# Spelled by hand from the German conventions (number_words' docstring), not by the code.
HAND_SPELLED = {
    "null": 0, "eins": 1, "elf": 11, "zwölf": 12, "sechzehn": 16, "siebzehn": 17,
    "einundzwanzig": 21, "dreißig": 30, "siebenundsiebzig": 77, "einhundert": 100,
    "einhunderteins": 101, "zweihundertzehn": 210, "eintausend": 1000,
    "eintausendeins": 1001, "zweitausendeins": 2001, "einundzwanzigtausend": 21_000,
    "einhunderteintausend": 101_000, "siebzehntausendsiebzehn": 17_017,
    "neunhundertneunundneunzigtausendneunhundertneunundneunzig": 999_999,
}
# Near misses: a lone "ein", the multiplier left out, wrong compounds, case, spaces, CR.
NOT_NUMBERS = [
    "", "ein", "hundert", "tausend", "hunderteins", "einszwanzig", "einsundzwanzig",
    "sechszehn", "siebenzehn", "dreissig", "zehnhundert", "eintausendtausend",
    "einhundertundeins", "million", "Drei", "drei ", " drei", "drei\r", "drei zehn", "-1",
    "1000000",
]


def test_german_numbers_is_the_inverse_of_number_words_german():
    numbers = continuations.german_numbers()
    assert sorted(numbers.values()) == list(range(number_words.LARGEST + 1))  # one word each
    for word, value in HAND_SPELLED.items():
        assert numbers[word] == value
    for value in range(0, number_words.LARGEST + 1, 9_973):  # a prime stride: all digit mixes
        assert numbers[number_words.german(value)] == value
    assert not any(word in numbers for word in NOT_NUMBERS)


def test_valid_share_of_hand_made_lists():
    assert continuations.valid_share([]) == 0.0  # no division by zero
    assert continuations.valid_share(list(HAND_SPELLED)) == 1.0
    assert continuations.valid_share(NOT_NUMBERS) == 0.0
    # Every occurrence counts, a repeated number too.
    assert continuations.valid_share(["drei", "drei", "dreii"]) == pytest.approx(2 / 3)
    assert continuations.valid_share(["eins", "ein"]) == 0.5


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(valid=st.lists(st.integers(0, number_words.LARGEST), max_size=20),
                  invalid=st.lists(st.integers(0, number_words.LARGEST), max_size=20),
                  seed=st.integers(0, 2**16))
def test_valid_share_is_the_fraction_of_number_words_in_any_order(valid, invalid, seed):
    # No German number word ends in "x", so each word + "x" is invalid by construction.
    texts = ([number_words.german(n) for n in valid]
             + [number_words.german(n) + "x" for n in invalid])
    random.Random(seed).shuffle(texts)
    expected = len(valid) / len(texts) if texts else 0.0
    assert continuations.valid_share(texts) == pytest.approx(expected)


def test_every_prompt_starts_some_number_word():
    words = continuations.german_numbers()
    assert len(set(continuations.PROMPTS)) == len(continuations.PROMPTS)
    for prompt in continuations.PROMPTS:
        assert any(word.startswith(prompt) and word != prompt for word in words), prompt


@pytest.mark.parametrize(("stdin", "expected"), [
    ("drei\nvier\r\ndreii\n\n", "2 of 4 outputs are German number words (50.0 %)"),
    ("eins\nein\nzwei", "2 of 3 outputs are German number words (66.7 %)"),
    ("", "0 of 0 outputs are German number words (0.0 %)"),
    # decode.py ends an output line with "\n" only: a VT inside one is not a line break
    ("drei\x0bvier\nsieben\n", "1 of 2 outputs are German number words (50.0 %)"),
])
def test_main_counts_the_lines_of_stdin(monkeypatch, capsys, stdin, expected):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    continuations.main()
    assert capsys.readouterr().out == expected + "\n"


def _scripted_continue_lines(calls, greedy, sampled):
    """A continue_lines that records its arguments and returns the scripted outputs."""
    def continue_lines(model, params, tokenizer, prompts, decode_config, max_length):
        calls.append((list(prompts), decode_config, max_length))
        outputs = greedy if decode_config.method == "greedy" else sampled
        assert len(outputs) == len(prompts)
        return types.SimpleNamespace(outputs=outputs)
    return continue_lines


def test_number_words_report_counts_the_scripted_continuations(monkeypatch):
    prompts = continuations.PROMPTS
    assert prompts[:3] == ("ein", "zwei", "drei")  # the script below follows this order
    # Greedy: eins ✓, zwei ✓, dreiß ✗, vierhundert … neunhundert ✓ (6), zehnhundert ✗.
    greedy = ["eins", "zwei", "dreiß", *(f"{p}hundert" for p in prompts[3:])]
    # Two samples per prompt: the prompt itself (all but "ein" are numbers: 2 … 10), then
    # prompt + "zehn": einzehn ✗ zweizehn ✗ dreizehn ✓ vierzehn ✓ fünfzehn ✓ sechszehn ✗
    # siebenzehn ✗ achtzehn ✓ neunzehn ✓ zehnzehn ✗; for "zwei" the second sample is
    # "drei" instead (valid, a repeat of 3, not longer than its prompt).
    sampled = []
    for prompt in prompts:
        sampled += [prompt, "drei" if prompt == "zwei" else f"{prompt}zehn"]
    calls = []
    monkeypatch.setattr(language_model, "continue_lines",
                        _scripted_continue_lines(calls, greedy, sampled))
    model = types.SimpleNamespace(config=types.SimpleNamespace(max_length=24))
    report = continuations.number_words_report(model, "params", "tokenizer", samples=2,
                                               seed=5)
    assert report["greedy_valid"] == pytest.approx(8 / 10)
    assert report["sampled_valid"] == pytest.approx((9 + 1 + 5) / 20)
    assert report["sampled_extended"] == pytest.approx(9 / 20)
    assert report["sampled_distinct"] == 9 + 5  # 2 … 10 and 13, 14, 15, 18, 19
    assert {key: report[key] for key in report if key.startswith("greedy:")} == {
        f"greedy:{prompt}": text for prompt, text in zip(prompts, greedy, strict=True)}
    (greedy_prompts, greedy_config, length), (sample_prompts, sample_config, _) = calls
    assert greedy_prompts == list(prompts) and length == 24
    assert sample_prompts == [prompt for prompt in prompts for _ in range(2)]
    assert (greedy_config.method, greedy_config.max_extra_length) == ("greedy", 24)
    assert (sample_config.method, sample_config.seed, sample_config.temperature,
            sample_config.max_extra_length) == ("sample", 5, 1.0, 24)

"""evaluation.py: exact match, the per-digit-count table of number_words, per-kind
validation metrics, evaluation limits, the checkpoint score; continuations.py: the validity
check of the built-in language model (its report: test_language_model.py)."""

import dataclasses

import jax
import numpy as np
import pytest

from flax_transformer import continuations, data, evaluation, training
from flax_transformer.data import number_words
from tests.helpers import kind_config


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
                     "all of 0–999": (5, 0.8, 5),
                     "ends 001–009": (1, 1.0, 0), "ends x10–x99": (3, 2 / 3, 1)}
    assert [row["key"] for row in rows][-3:] == ["below_1000", "ending_1", "ending_5"]
    cells = [[cell.strip() for cell in line.split("|")]
             for line in evaluation.digit_class_lines(rows)]
    assert cells[0] == ["digits", "examples", "exact match", "seen in training?"]
    assert cells[2] == ["1", "2", "50.0 %", "yes"]
    assert cells[5] == ["4", "1", "100.0 %", "no (held out)"]
    assert cells[-3] == ["all of 0–999", "5", "80.0 %", "yes"]
    assert cells[-1] == ["ends x10–x99", "3", "66.7 %", "1 of 3"]


def test_endings_split_the_numbers_from_1000_up_by_the_form_of_their_last_three_digits():
    """A model can be right on random large numbers and wrong on "… thousand seven" (0.9 %
    of uniform draws): the rows by ending show each form on its own."""
    numbers = [5, 1_000, 44_000, 944_007, 3_042, 16_070, 2_100, 5_304, 999_999, 12_345]
    sources, references = _pairs(numbers)
    hypotheses = list(references)
    hypotheses[3] = "neunhundertvierundvierzigtausend"       # the last word dropped
    hypotheses[6] = "zweitausendeins"
    rows = evaluation.digit_classes(sources, hypotheses, references, set())
    endings = {row["key"]: (row["name"], row["examples"], row["exact_match"])
               for row in rows if row["key"].startswith("ending_")}
    assert endings == {"ending_0": ("ends 000", 2, 1.0), "ending_1": ("ends 001–009", 1, 0.0),
                       "ending_2": ("ends 010–099", 2, 1.0), "ending_3": ("ends x00", 1, 0.0),
                       "ending_4": ("ends x01–x09", 1, 1.0),
                       "ending_5": ("ends x10–x99", 2, 1.0)}


def test_digit_classes_read_the_english_side_in_either_direction():
    english, german = _pairs([12, 3_000])
    rows = evaluation.digit_classes(german, ["zwölf", "three thousand"], english, set())
    assert [(row["name"], row["exact_match"], row["seen"]) for row in rows] == [
        ("2", 0.0, 0), ("4", 1.0, 0), ("all of 0–999", 0.0, 0), ("ends 000", 1.0, 0)]


def test_partly_seen_class_says_how_many():
    sources, references = _pairs([1_000, 1_001])
    rows = evaluation.digit_classes(sources, references, references, {sources[0]})
    assert evaluation.digit_class_lines(rows)[2].endswith("| 1 of 2")


def test_exact_match_strips_outer_spaces_only():
    assert evaluation.exact_match(["a b ", "ab"], ["a b", "a b"]) == pytest.approx(0.5)





NUMBERS = np.random.default_rng(0).choice(3000, size=120, replace=False)
PAIRS = [{"source": number_words.english(int(n)), "target": number_words.german(int(n))}
         for n in NUMBERS]


class CountingStrategy:
    """One device, no pmap; counts eval_step calls."""

    batch_multiple = 1

    def __init__(self, config):
        self.calls = 0
        self._eval = jax.jit(lambda params, batch: training.eval_step(params, batch,
                                                                      config=config))

    def put_batch(self, batch):
        return batch

    def put_state(self, state):
        return state

    def eval_step(self, state, batch):
        self.calls += 1
        return self._eval(state.params, batch)

    def get_params(self, state):
        return state.params


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizers")
    sentences = [text for pair in PAIRS for text in pair.values()]
    return {"plain": data.Tokenizer.train(sentences, str(directory / "plain.model"), 64),
            "mask": data.Tokenizer.train(sentences, str(directory / "mask.model"), 64,
                                         symbols=(data.MASK_PIECE,))}


def _evaluator(kind, tokenizers, max_batches=0, split=PAIRS):
    config = kind_config(kind)
    config = dataclasses.replace(config, eval=dataclasses.replace(config.eval,
                                                                  max_batches=max_batches))
    if kind != "encoder_decoder":
        split = data.monolingual.TargetText(split)
    tokenizer = tokenizers["mask" if kind == "encoder_only" else "plain"]
    strategy = CountingStrategy(config)
    state = training.create_train_state(config, jax.random.key(0))
    return evaluation.Evaluator(config, split, tokenizer, strategy), strategy, state


@pytest.mark.parametrize("kind", ("encoder_decoder", "decoder_only", "encoder_only"))
def test_max_batches_1_evaluates_exactly_one_batch(kind, tokenizers):
    full, full_strategy, state = _evaluator(kind, tokenizers)
    results = full.loss_metrics(state)
    assert full_strategy.calls == results["loss_batches"] > 1
    limited, strategy, _ = _evaluator(kind, tokenizers, max_batches=1)
    limited_results = limited.loss_metrics(state)
    assert strategy.calls == limited_results["loss_batches"] == 1
    first = training.summarize(jax.device_get(
        training.eval_step(state.params, full.loss_batches[0], config=full.config)))
    assert limited_results["loss"] == pytest.approx(first["loss"], rel=1e-6)


def test_metrics_per_kind(tokenizers):
    for kind, expected, absent in (
            ("decoder_only", {"loss", "perplexity", "accuracy"}, {"bleu", "baseline_accuracy"}),
            ("encoder_only", {"loss", "accuracy", "baseline_accuracy"}, {"bleu"}),
            ("encoder_decoder", {"loss", "perplexity", "bleu", "chrf", "exact_match"},
             {"baseline_accuracy"})):
        evaluator, _, state = _evaluator(kind, tokenizers, max_batches=1,
                                         split=PAIRS[:8])
        results = evaluator.evaluate(state)
        assert expected <= set(results) and not absent & set(results), kind


def test_encoder_only_scores_the_same_positions_at_every_evaluation(tokenizers):
    first, _, state = _evaluator("encoder_only", tokenizers)
    second, _, _ = _evaluator("encoder_only", tokenizers)
    for left, right in zip(first.loss_batches, second.loss_batches, strict=True):
        np.testing.assert_array_equal(left["masked_input"], right["masked_input"])
    assert first.loss_metrics(state) == second.loss_metrics(state)


def test_most_frequent_token_accuracy_counts_masked_positions_only():
    batch = {"target_output": np.array([[7, 7, 9, 5], [7, 9, 9, 0]]),
             "mask_weights": np.array([[1, 0, 1, 1], [0, 1, 1, 0]], np.float32)}
    # masked targets: 7, 9, 5, 9, 9 -> 9 is the commonest, 3 of 5
    assert evaluation.most_frequent_token_accuracy([batch]) == pytest.approx(0.6)


def test_first_examples_and_the_score_direction():
    assert evaluation.first_examples(PAIRS, 3) == PAIRS[:3]
    assert evaluation.first_examples(PAIRS, 0) is PAIRS
    assert evaluation.score({"perplexity": 2.0}, "perplexity") > evaluation.score(
        {"perplexity": 3.0}, "perplexity")
    assert evaluation.score({"bleu": 30.0}, "bleu") == 30.0


def test_german_validity_check():
    assert continuations.german_numbers()["dreihundertzweiundvierzig"] == 342
    assert len(continuations.german_numbers()) == number_words.LARGEST + 1
    assert continuations.valid_share(["drei", "dreihundert", "dreiundhundert", "dreii"]) == 0.5

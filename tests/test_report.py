"""report.py: the test report after training — which test examples it reads, the numbers it
returns and the tables it prints.

The best checkpoint's restore and the decoding are replaced by fakes that hand back
hand-written outputs, so every number here is checked against a value computed in the test
(a run trained and reported end to end: test_train_cli.py and test_faults.py).
"""

import dataclasses

import numpy as np
import pytest
import sacrebleu

from flax_transformer import checkpoint, config_fields, evaluation, parallel, report, training
from flax_transformer.presets import get_config

# Hand-written number_words pairs (English -> German) and outputs: 3 of 5 right.
PAIRS = [
    {"source": "seven", "target": "sieben"},                                      # 1 digit
    {"source": "forty-two", "target": "zweiundvierzig"},                          # 2 digits
    {"source": "three hundred forty-two", "target": "dreihundertzweiundvierzig"},  # 3 digits
    {"source": "two thousand", "target": "zweitausend"},                          # 4 digits
    {"source": "twelve", "target": "zwölf"},                                      # 2 digits
]
OUTPUTS = ["sieben", "zweiundvierzig", "dreihundertvierzig", "zweitausend", "zwei"]
TRAIN = [{"source": "seven", "target": "sieben"},
         {"source": "three hundred forty-two", "target": "dreihundertzweiundvierzig"}]
PARAMS = {"restored": "parameters"}
PARAM_SHAPES = {"shapes of": "parameters"}


@dataclasses.dataclass(frozen=True)
class _Shapes:
    """Stands in for training.train_state_shapes' TrainState of shapes."""

    step: object = "shape of step"
    params: object = "shapes of params"
    opt_state: object = "shapes of opt_state"
    ema_params: object = "shapes of ema_params"

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


class _Fakes:
    """Replaces the restore, the strategy and the Evaluator; records what they were given."""

    def __init__(self, monkeypatch, outputs=OUTPUTS, loss_metrics=None):
        self.outputs, self.loss_metrics = outputs, loss_metrics
        self.restored, self.strategy_configs, self.evaluators, self.states = [], [], [], []
        monkeypatch.setattr(training, "train_state_shapes", lambda config: _Shapes())
        # Where the package restores the parameters alone (raising=False: where it has this).
        monkeypatch.setattr(training, "param_shapes", lambda model: PARAM_SHAPES,
                            raising=False)
        monkeypatch.setattr(checkpoint, "restore_params", self._restore)
        monkeypatch.setattr(parallel, "make_strategy", self._make_strategy)
        monkeypatch.setattr(evaluation, "Evaluator", self._evaluator)

    def _restore(self, workdir, target, which="best", use_ema=False):
        self.restored.append((workdir, target, which, use_ema))
        return PARAMS, 7, "checkpoints/7"

    def _make_strategy(self, config):
        self.strategy_configs.append(config)
        fakes = self

        class Strategy:
            def put_state(self, state):
                fakes.states.append(state)
                return state
        return Strategy()

    def _evaluator(self, config, split, tokenizer, strategy, max_examples=None,
                   max_batches=None):
        self.evaluators.append({"split": list(split), "max_examples": max_examples,
                                "max_batches": max_batches})
        return _Evaluator(self, config, split)


class _Evaluator:
    """Greedy outputs from a list, loss metrics from a dict, as evaluation.Evaluator's."""

    def __init__(self, fakes, config, split):
        self.fakes, self.split = fakes, list(split)
        self.references = ([] if config.model.monolingual
                           else [pair["target"] for pair in self.split])

    def translations(self, params):
        assert params is PARAMS
        return self.fakes.outputs[:len(self.split)]

    def loss_metrics(self, state):
        return dict(self.fakes.loss_metrics)


def _splits(test=PAIRS, train=TRAIN) -> dict:
    return {"train": list(train), "validation": [], "test": list(test)}


def _tiny(**fields):
    return config_fields.override(get_config("tiny"), fields)


def _table(lines: list[str]) -> list[list[str]]:
    """The cells of the digit-count table's rows among printed lines."""
    rows = [line for line in lines if line.count("|") == 3]
    return [[cell.strip() for cell in row.split("|")] for row in rows[2:]]


# ---------------------------------------------------------------------------- translation


def test_number_words_report_returns_scores_and_exact_match_per_digit_count(monkeypatch,
                                                                             tmp_path):
    fakes = _Fakes(monkeypatch)
    results = report.report_test(_tiny(), str(tmp_path), _splits(), tokenizer=None,
                                 verbose=False)
    references = [pair["target"] for pair in PAIRS]
    expected_bleu = sacrebleu.corpus_bleu(OUTPUTS, [references]).score
    expected_chrf = sacrebleu.corpus_chrf(OUTPUTS, [references]).score
    assert results == {
        "test_bleu": pytest.approx(expected_bleu),
        "test_chrf": pytest.approx(expected_chrf),
        "test_exact_match": 3 / 5,
        "test_exact_match_digits_1": 1.0,       # seven
        "test_exact_match_digits_2": 0.5,       # forty-two right, twelve wrong
        "test_exact_match_digits_3": 0.0,       # three hundred forty-two wrong
        "test_exact_match_digits_4": 1.0,       # two thousand
        "test_exact_match_below_1000": 2 / 4,   # 7, 42, 342, 12
        "test_exact_match_ending_0": 1.0,       # two thousand: its last three digits 000
    }
    # The best checkpoint's parameters (into shapes, not values), decoding the whole split.
    [(workdir, target, which, use_ema)] = fakes.restored
    assert (workdir, which, use_ema) == (str(tmp_path), "best", False)
    assert target in (_Shapes(), PARAM_SHAPES)
    assert fakes.evaluators == [{"split": PAIRS, "max_examples": 0, "max_batches": None}]


def test_printed_report_has_scores_digit_table_spread_examples_and_wrong_outputs(
        monkeypatch, tmp_path, capsys):
    _Fakes(monkeypatch)
    results = report.report_test(_tiny(), str(tmp_path), _splits(), tokenizer=None,
                                 examples=3)
    lines = capsys.readouterr().out.split("\n")
    references = [pair["target"] for pair in PAIRS]
    assert lines[:2] == ["", "test split (5 sentences, greedy, checkpoints/7):"]
    bleu = sacrebleu.corpus_bleu(OUTPUTS, [references]).score
    chrf = sacrebleu.corpus_chrf(OUTPUTS, [references]).score
    assert lines[2].startswith(f"  BLEU = {bleu:.2f} (nrefs:1|")
    assert lines[3].startswith(f"  chrF = {chrf:.2f} (nrefs:1|")
    assert results["test_exact_match"] == 0.6
    assert lines[4] == "  exact match = 60.0% of 5 lines"
    assert lines[5].startswith("  note: every reference has fewer than 4 words")
    assert lines[6] == ("  exact match by digit count, and from 1,000 up by the last three "
                        "digits (held out = never in the training split):")
    assert _table(lines) == [
        ["1", "1", "100.0 %", "yes"],
        ["2", "2", "50.0 %", "no (held out)"],
        ["3", "1", "0.0 %", "yes"],
        ["4", "1", "100.0 %", "no (held out)"],
        ["all of 0–999", "4", "50.0 %", "2 of 4"],
        ["ends 000", "1", "100.0 %", "no (held out)"],
    ]
    wrong_342 = ("    'three hundred forty-two' -> 'dreihundertvierzig'  "
                 "(reference: 'dreihundertzweiundvierzig')")
    wrong_12 = "    'twelve' -> 'zwei'  (reference: 'zwölf')"
    # Three examples spread over the five (first, middle, last), then the wrong ones.
    assert lines[lines.index("  examples:"):] == [
        "  examples:", "    'seven' -> 'sieben'", wrong_342, wrong_12,
        "  wrong (2 in all):", wrong_342, wrong_12, "",
    ]


def test_verbose_false_prints_nothing_and_returns_the_same_numbers(monkeypatch, tmp_path,
                                                                   capsys):
    _Fakes(monkeypatch)
    quiet = report.report_test(_tiny(), str(tmp_path), _splits(), None, verbose=False)
    assert capsys.readouterr().out == ""
    printed = report.report_test(_tiny(), str(tmp_path), _splits(), None, verbose=True)
    assert capsys.readouterr().out
    assert quiet == printed


def test_test_report_n_decodes_and_scores_only_the_first_n_examples(monkeypatch, tmp_path,
                                                                    capsys):
    fakes = _Fakes(monkeypatch)
    splits = _splits()
    results = report.report_test(_tiny(**{"eval.test_report": "3"}), str(tmp_path), splits,
                                 None)
    assert fakes.evaluators[0]["split"] == PAIRS[:3]
    assert splits == _splits()                       # the caller's splits are left whole
    # seven and forty-two right, three hundred forty-two wrong; no 4-digit number read.
    assert results["test_exact_match"] == pytest.approx(2 / 3)
    assert {key: value for key, value in results.items() if "_exact_match_" in key} == {
        "test_exact_match_digits_1": 1.0, "test_exact_match_digits_2": 1.0,
        "test_exact_match_digits_3": 0.0, "test_exact_match_below_1000": pytest.approx(2 / 3)}
    out = capsys.readouterr().out
    assert "test split (3 sentences, greedy, checkpoints/7):" in out
    assert "exact match = 66.7% of 3 lines" in out


def test_the_report_decodes_with_pmaps_numbers_whatever_the_runs_parallelism(monkeypatch,
                                                                             tmp_path):
    fakes = _Fakes(monkeypatch)
    config = _tiny(**{"train.parallelism": "mesh"})
    report.report_test(config, str(tmp_path), _splits(), None, verbose=False)
    [used] = fakes.strategy_configs
    assert used.train.parallelism == "pmap"
    assert dataclasses.replace(used, train=config.train) == config


def test_other_datasets_get_scores_but_no_digit_table(monkeypatch, tmp_path, capsys):
    pairs = [{"source": "a small cat", "target": "eine kleine Katze"},
             {"source": "the red house", "target": "das rote Haus"}]
    outputs = ["eine kleine Katze", "ein rotes Haus"]
    _Fakes(monkeypatch, outputs=outputs)
    config = _tiny(**{"data.dataset": "parallel_text"})
    results = report.report_test(config, str(tmp_path), _splits(pairs, pairs), None)
    assert set(results) == {"test_bleu", "test_chrf", "test_exact_match"}
    assert results["test_exact_match"] == 0.5
    references = [pair["target"] for pair in pairs]
    assert results["test_bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(outputs, [references]).score)
    out = capsys.readouterr().out
    assert "digit count" not in out and _table(out.split("\n")) == []
    assert "  wrong (1 in all):\n    'the red house' -> 'ein rotes Haus'  (reference: " \
           "'das rote Haus')\n" in out


def test_without_a_test_split_nothing_is_restored_or_decoded(monkeypatch, tmp_path, capsys):
    fakes = _Fakes(monkeypatch)
    assert report.report_test(_tiny(), str(tmp_path), _splits(test=[]), None) == {}
    assert capsys.readouterr().out == (
        "\nno test split (data.test_files is empty): no test report.\n")
    assert report.report_test(_tiny(), str(tmp_path), _splits(test=[]), None,
                              verbose=False) == {}
    assert capsys.readouterr().out == ""
    assert fakes.restored == [] and fakes.evaluators == []


# ----------------------------------------------------------------- the printed examples


def _printed_examples(capsys, hypotheses, examples):
    sources = [f"s{index}" for index in range(len(hypotheses))]
    references = [f"r{index}" for index in range(len(hypotheses))]
    report._print_test_report(sources, hypotheses, references, "averaged/9", [], examples)
    lines = capsys.readouterr().out.split("\n")
    assert lines[1] == f"test split ({len(hypotheses)} sentences, greedy, averaged/9):"
    assert not any("digit count" in line for line in lines)
    start = lines.index("  examples:") + 1 if "  examples:" in lines else len(lines) - 1
    shown = [line.split("'")[1] for line in lines[start:] if line.startswith("    '")]
    return lines, shown


@pytest.mark.parametrize(("count", "examples", "shown"), [
    (7, 3, ["s0", "s3", "s6"]),                       # first, middle and last
    (7, 2, ["s0", "s6"]),
    (7, 1, ["s0"]),
    (3, 10, ["s0", "s1", "s2"]),                      # never an example twice
    (4, 0, []),
])
def test_examples_are_spread_over_the_split_and_never_repeated(capsys, count, examples,
                                                              shown):
    all_right = [f"r{index}" for index in range(count)]
    lines, printed = _printed_examples(capsys, all_right, examples)
    assert printed == shown
    assert not any(line.startswith("  wrong") for line in lines)   # nothing is wrong
    assert all("reference:" not in line for line in lines)


def test_at_most_examples_wrong_outputs_are_listed_but_all_are_counted(capsys):
    hypotheses = ["r0", "x1", "x2", "r3", "x4", "x5"]
    lines, _ = _printed_examples(capsys, hypotheses, 2)
    wrong = lines[lines.index("  wrong (4 in all):") + 1:]
    assert wrong == ["    's1' -> 'x1'  (reference: 'r1')", "    's2' -> 'x2'  (reference: 'r2')",
                     ""]
    assert "  exact match = 33.3% of 6 lines" in lines


def test_outputs_equal_up_to_outer_spaces_are_not_listed_as_wrong(capsys):
    lines, _ = _printed_examples(capsys, ["r0", " r1 ", "x2"], 0)
    assert "  wrong (1 in all):" not in lines     # examples=0: no list, even of wrong ones
    assert "  exact match = 66.7% of 3 lines" in lines
    lines, _ = _printed_examples(capsys, ["r0", " r1 ", "x2"], 5)
    assert lines[lines.index("  wrong (1 in all):") + 1] == "    's2' -> 'x2'  (reference: 'r2')"


# ---------------------------------------------------------------- decoder_only/encoder_only


@pytest.mark.parametrize("name", ["lm", "mlm"])
def test_a_monolingual_report_is_the_loss_metrics_of_the_best_checkpoint(monkeypatch,
                                                                        tmp_path, capsys,
                                                                        name):
    metrics = {"loss": 1.23456, "perplexity": 3.436921, "accuracy": 0.512345,
               "loss_batches": 2}
    fakes = _Fakes(monkeypatch, loss_metrics=metrics)
    texts = [{"target": f"text {index}"} for index in range(4)]
    config = get_config(name)
    results = report.report_test(config, str(tmp_path), _splits(texts, texts), None)
    assert results == {"test_loss": 1.23456, "test_perplexity": 3.436921,
                       "test_accuracy": 0.512345, "test_loss_batches": 2}
    assert capsys.readouterr().out == (
        "\ntest split (4 sentences, checkpoints/7): loss 1.235, perplexity 3.437, "
        "accuracy 0.5123, loss_batches 2\n")
    # All of the test split's batches (not eval.max_batches = 20 of validation's).
    assert fakes.evaluators == [{"split": texts, "max_examples": None, "max_batches": 0}]
    assert config.eval.max_batches == 20
    # The restored parameters in a parameters-only state: no optimizer state, no EMA.
    [state] = fakes.states
    assert state.params is PARAMS and state.opt_state == () and state.ema_params is None
    assert np.asarray(state.step).dtype == np.int32 and int(state.step) == 0
    [(workdir, target, which, use_ema)] = fakes.restored
    assert (workdir, which, use_ema) == (str(tmp_path), "best", False)
    assert target in (_Shapes(), PARAM_SHAPES)


def test_a_monolingual_report_reads_the_first_n_test_texts(monkeypatch, tmp_path, capsys):
    fakes = _Fakes(monkeypatch, loss_metrics={"loss": 2.0})
    texts = [{"target": f"text {index}"} for index in range(5)]
    config = config_fields.override(get_config("lm"), {"eval.test_report": "2"})
    assert report.report_test(config, str(tmp_path), _splits(texts, texts), None,
                              verbose=False) == {"test_loss": 2.0}
    assert fakes.evaluators[0]["split"] == texts[:2]
    assert capsys.readouterr().out == ""


def test_a_monolingual_run_without_test_texts_reports_nothing(monkeypatch, tmp_path, capsys):
    fakes = _Fakes(monkeypatch, loss_metrics={"loss": 2.0})
    assert report.report_test(get_config("mlm"), str(tmp_path), _splits(test=[]), None) == {}
    assert fakes.restored == [] and fakes.evaluators == []
    assert capsys.readouterr().out == (
        "\nno test split (data.test_files is empty): no test report.\n")
    assert report.report_test(get_config("mlm"), str(tmp_path), _splits(test=[]), None,
                              verbose=False) == {}
    assert capsys.readouterr().out == ""

"""decode_command.py without a trained model: reading lines, the checks that refuse a
request before the model loads, the search overrides, the output formats, writing, and
``run``'s order of work with the model side (``inference``) replaced.

decode.py end to end on trained runs is test_decode_cli.py (and test_language_model.py,
test_fill_mask.py for the other kinds); these tests pin the helpers down exactly.
"""

import dataclasses
import gzip
import io
import json
import re
import types

import hypothesis
import jax
import pytest
from hypothesis import strategies as st

from flax_transformer import checkpoint, decode_command, inference
from flax_transformer.config import ConfigError
from flax_transformer.data import number_words
from flax_transformer.inference import InferenceError, Translations
from tests.helpers import kind_config, micro_config

# Line text as decode.py may meet it: any character UTF-8 can hold (no lone surrogates) but
# the newline that ends a line, and no CR at the end (a final CR belongs to a CRLF line end).
LINE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"),
               max_size=12).filter(lambda text: not text.endswith("\r"))


class Untouchable(io.StringIO):
    """A stdin that must not be read, or a stdout that must not be written."""

    def read(self, *args):
        raise AssertionError("the stream was read")

    def write(self, *args):
        raise AssertionError("the stream was written")


# --------------------------------------------------------------------------- reading text


@pytest.mark.parametrize(("raw", "lines"), [
    (b"", []),
    (b"\n", [""]),
    (b"\n\n", ["", ""]),
    (b"eins", ["eins"]),
    (b"eins\n", ["eins"]),
    (b"eins\n\n", ["eins", ""]),
    (b"eins\r\nzwei\r\n", ["eins", "zwei"]),
    (b"eins\r\nzwei", ["eins", "zwei"]),
    (b"eins\rzwei\n", ["eins\rzwei"]),       # a lone CR does not end a line
    (b"eins\r\r\n", ["eins\r"]),              # only the CR of the CRLF goes
    # Unlike str.splitlines: form feed, VT, NEL, U+2028/2029 stay inside their line, so
    # that one input line gives one output line.
    ("a\x0bb\x0cc\x1cd\x85e\u2028f\u2029g".encode(), ["a\x0bb\x0cc\x1cd\x85e\u2028f\u2029g"]),
    ("fünf\n😀\n".encode(), ["fünf", "😀"]),
    (b"\xef\xbb\xbfeins\r\nzwei\r\n", ["eins", "zwei"]),   # "UTF-8 with BOM" (Notepad)
    (b"eins\n\xef\xbb\xbfzwei\n", ["eins", "\ufeffzwei"]),  # only a leading BOM is one
])
def test_split_lines_ends_lines_only_at_newline(raw, lines):
    assert decode_command.split_lines(raw, "input") == lines


@hypothesis.settings(max_examples=100, deadline=None)
@hypothesis.given(lines=st.lists(LINE, max_size=6))
def test_split_lines_inverts_writing_lines_with_lf_or_crlf(lines):
    for end in ("\n", "\r\n"):
        raw = "".join(f"{line}{end}" for line in lines).encode("utf-8")
        assert decode_command.split_lines(raw, "input") == lines


def test_split_lines_names_the_first_line_that_is_not_utf8():
    raw = "eins\nzwei Brücken\n".encode("latin-1") + b"\xff\n"
    with pytest.raises(InferenceError) as error:
        decode_command.split_lines(raw, "brücken.txt")
    # The line number counts from 1 and the byte offset is within that line ("zwei Br" = 7).
    assert str(error.value) == ("brücken.txt line 2 is not UTF-8 (invalid start byte at byte "
                                "7); convert the file to UTF-8 (e.g. iconv -t UTF-8).")
    with pytest.raises(InferenceError, match="line 1 is not UTF-8"):
        decode_command.split_lines("fünf".encode()[:2], "cut")  # ü cut in half


def test_read_text_file_reads_plain_and_gzip_alike(tmp_path):
    lines = ["siebenhundertdrei", "", "fünf", "  zwei  "]
    plain, gzipped = tmp_path / "in.txt", tmp_path / "in.txt.gz"
    plain.write_bytes("".join(f"{line}\r\n" for line in lines).encode("utf-8"))
    gzipped.write_bytes(gzip.compress("\n".join(lines).encode("utf-8")))
    assert decode_command.read_text_file(str(plain)) == lines
    assert decode_command.read_text_file(str(gzipped)) == lines
    empty = tmp_path / "empty.gz"
    empty.write_bytes(gzip.compress(b""))
    assert decode_command.read_text_file(str(empty)) == []
    latin1 = tmp_path / "latin1.gz"
    latin1.write_bytes(gzip.compress("eins\nzwölf\n".encode("latin-1")))
    with pytest.raises(InferenceError, match=r"latin1\.gz line 2 is not UTF-8"):
        decode_command.read_text_file(str(latin1))  # the decompressed text is checked


def test_read_text_file_errors_name_the_path_and_the_reason(tmp_path):
    missing = str(tmp_path / "missing.txt")
    with pytest.raises(InferenceError) as error:
        decode_command.read_text_file(missing)
    assert str(error.value) == f"cannot read {missing!r}: No such file or directory."
    with pytest.raises(InferenceError) as error:
        decode_command.read_text_file(str(tmp_path))
    assert str(error.value) == f"cannot read {str(tmp_path)!r}: Is a directory."
    with pytest.raises(InferenceError) as error:
        decode_command.read_text_file(str(tmp_path / "missing.txt.gz"))
    assert "missing.txt.gz" in str(error.value) and "No such file" in str(error.value)


def test_a_damaged_or_false_gzip_file_gets_a_clear_error(tmp_path):
    whole = gzip.compress(b"eins\nzwei\n" * 200)
    files = {"cut": whole[:len(whole) // 2],                         # a copy cut short
             "damaged": whole[:20] + bytes(b ^ 0xFF for b in whole[20:40]) + whole[40:],
             "plain": b"eins\nzwei\n",                               # named .gz, not gzip
             "crc": whole[:-8] + bytes(8)}                            # wrong CRC and length
    for name, content in files.items():
        path = tmp_path / f"{name}.txt.gz"
        path.write_bytes(content)
        with pytest.raises(InferenceError, match=(
                rf"^cannot read {re.escape(repr(str(path)))}: .+; it is not a complete gzip "
                r"file: compress it again \(gzip FILE\) or give the plain text\.$")):
            decode_command.read_text_file(str(path))


def test_read_stream_reads_text_binary_and_wrapped_streams():
    assert decode_command.read_stream(io.StringIO("eins\r\nzwei\n")) == ["eins", "zwei"]
    assert decode_command.read_stream(io.BytesIO("drei\nfünf".encode())) == ["drei", "fünf"]
    assert decode_command.read_stream(io.StringIO("")) == []
    # sys.stdin is a TextIOWrapper: its bytes are read, so bad UTF-8 gets the clear error
    # rather than the wrapper's UnicodeDecodeError.
    stdin = io.TextIOWrapper(io.BytesIO("eins\nzwölf\n".encode("latin-1")), encoding="utf-8")
    with pytest.raises(InferenceError, match="<stdin> line 2 is not UTF-8"):
        decode_command.read_stream(stdin)


def test_input_lines_takes_flags_then_the_file_then_stdin(tmp_path):
    def lines(stdin=None, **request):
        return decode_command.input_lines(
            decode_command.DecodeRequest(workdir="unused", **request), stdin or Untouchable())
    # Each --input may hold several lines (LF or CRLF); an empty --input is one empty line.
    assert lines(inputs=("eins\r\nzwei", "", "drei")) == ["eins", "zwei", "", "drei"]
    assert lines(inputs=()) == []
    path = tmp_path / "in.txt"
    path.write_text("vier\nfünf\n", encoding="utf-8")
    assert lines(input_file=str(path)) == ["vier", "fünf"]
    assert lines(inputs=("sechs",), input_file=str(path)) == ["sechs"]  # flags win
    for input_file in (None, "-"):
        assert lines(io.StringIO("sieben\nacht\n"), input_file=input_file) == ["sieben", "acht"]


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(lines=st.lists(LINE, min_size=1, max_size=6))
def test_input_lines_from_flags_joined_flags_and_stdin_agree(lines):
    def read(stdin, **request):
        return decode_command.input_lines(
            decode_command.DecodeRequest(workdir="unused", **request), stdin)
    stdin = io.BytesIO("".join(f"{line}\r\n" for line in lines).encode("utf-8"))
    assert read(Untouchable(), inputs=tuple(lines)) == lines
    assert read(Untouchable(), inputs=("\n".join(lines),)) == lines
    assert read(stdin) == lines


# --------------------------------------------------------------------------- checks


def test_check_counts_wants_one_reference_per_line():
    decode_command.check_counts(0, [], "refs.de")
    decode_command.check_counts(2, ["zwei", ""], "refs.de")
    with pytest.raises(InferenceError) as error:
        decode_command.check_counts(3, ["drei", "vier"], "refs.de")
    assert str(error.value) == ("the input has 3 lines but refs.de has 2; give one reference "
                                "per input line.")
    with pytest.raises(InferenceError, match=r"the input has 0 lines but refs\.de has 1;"):
        decode_command.check_counts(0, [""], "refs.de")


# Search flags as decode.py passes them: every field, None where the flag was not given.
UNSET = dict.fromkeys(("method", "beam_size", "length_penalty", "temperature", "top_k",
                       "top_p", "seed", "tokens_per_batch", "nbest", "num_samples",
                       "min_length", "no_repeat_ngram_size", "max_extra_length"))
PLOT = "--attention_plot draws a translation's cross-attention, which this {} run does not "\
       "have; drop --attention_plot/--self_attention."
ONE_LINE = "{} is for translation runs; this {} run writes one output line per input line, "\
           "so drop it."
SEARCH = "--{} controls a search, but this encoder_only run fills each <mask> in one pass "\
         "(its likeliest piece); drop it, or use --top_k N to list the N likeliest pieces "\
         "per <mask>."


@pytest.mark.parametrize(("kind", "request_fields", "message"), [
    ("encoder_decoder", {"attention_plot": "a.png", "self_attention": True,
                         "output_format": "jsonl", "print_scores": True,
                         "decode_overrides": {"nbest": 3, "num_samples": 2}}, None),
    ("decoder_only", {"decode_overrides": {**UNSET, "method": "beam", "beam_size": 3,
                                           "nbest": 1, "num_samples": 1, "top_k": 5}}, None),
    ("encoder_only", {"decode_overrides": {**UNSET, "top_k": 3, "tokens_per_batch": 512}},
     None),
    ("decoder_only", {"attention_plot": "a.png"}, PLOT.format("decoder_only")),
    ("encoder_only", {"self_attention": True}, PLOT.format("encoder_only")),
    ("decoder_only", {"decode_overrides": {"nbest": 2}},
     ONE_LINE.format("--nbest", "decoder_only")),
    ("decoder_only", {"decode_overrides": {"nbest": "2"}},       # the documented str form
     ONE_LINE.format("--nbest", "decoder_only")),
    ("encoder_decoder", {"decode_overrides": {"nbest": "3", "method": "beam"}}, None),
    ("decoder_only", {"decode_overrides": {"nbest": 1, "num_samples": 4}},
     ONE_LINE.format("--num_samples", "decoder_only")),
    ("encoder_only", {"output_format": "jsonl"},
     ONE_LINE.format("--output_format", "encoder_only")),
    ("decoder_only", {"print_scores": True}, ONE_LINE.format("--print_scores", "decoder_only")),
    ("encoder_only", {"decode_overrides": {**UNSET, "top_k": 3, "temperature": 0.5,
                                           "beam_size": 2}}, SEARCH.format("beam_size")),
    ("encoder_only", {"decode_overrides": {"method": "greedy"}}, SEARCH.format("method")),
])
def test_check_flags_fit_refuses_flags_of_another_kind(kind, request_fields, message):
    request = decode_command.DecodeRequest(workdir="unused", **request_fields)
    if message is None:
        decode_command.check_flags_fit(request, kind)
    else:
        with pytest.raises(InferenceError) as error:
            decode_command.check_flags_fit(request, kind)
        assert str(error.value) == message


@pytest.mark.parametrize(("kind", "lines", "message"), [
    ("decoder_only", [], None),
    ("decoder_only", ["drei", "", "zwei"], None),
    ("decoder_only", ["zwei", "", "drei<mask>", "<mask>"],
     "input line 3 holds <mask>, which only an encoder_only run fills; this decoder_only "
     "run continues prompts, so remove it."),
    ("encoder_only", [], None),
    ("encoder_only", ["", "   "], None),            # nothing to refuse: blank lines echo
    ("encoder_only", ["drei", "<mask>zig"], None),  # one line with a mask is enough
    ("encoder_only", ["drei", "vier", ""],
     "no input line holds <mask>; this encoder_only run fills the positions marked with it, "
     "e.g. --input \"drei<mask>zwanzig\"."),
    ("encoder_decoder", ["drei<mask>", "<mask>"], None),
])
def test_check_lines_fit_refuses_input_of_another_kind(kind, lines, message):
    if message is None:
        decode_command.check_lines_fit(lines, kind)
    else:
        with pytest.raises(InferenceError) as error:
            decode_command.check_lines_fit(lines, kind)
        assert str(error.value) == message


def test_decode_config_for_applies_only_the_given_overrides():
    config = micro_config()
    assert decode_command.decode_config_for(config, {}) == config.decode
    assert decode_command.decode_config_for(config, UNSET) == config.decode
    changed = decode_command.decode_config_for(
        config, {**UNSET, "method": "sample", "temperature": 0.5, "seed": "7", "top_k": 3})
    assert changed == dataclasses.replace(config.decode, method="sample", temperature=0.5,
                                          seed=7, top_k=3)
    assert isinstance(changed.seed, int) and isinstance(changed.temperature, float)
    assert config.decode.method == "beam"  # the run's config itself is unchanged
    with pytest.raises(ConfigError, match=r"decode\.beam_size=0 must be positive"):
        decode_command.decode_config_for(config, {"beam_size": 0})
    with pytest.raises(ConfigError, match=r"unknown config key 'decode\.beams'"):
        decode_command.decode_config_for(config, {"beams": 2})


# --------------------------------------------------------------------------- output


def _translations(sources, hypotheses, log_probs, scores, truncated=0):
    return Translations(translations=[texts[0] for texts in hypotheses],
                        sources=[[5, 3] if text else [] for text in sources],
                        outputs=[[] for _ in sources], truncated=truncated,
                        hypotheses=hypotheses, log_probs=log_probs, scores=scores)


SOURCES = ["five", "", "tab\there \"quoted\" \u2028 end"]
NBEST = _translations(SOURCES, [["fünf", "fünfzig"], ["", ""], ["x", "y"]],
                      [[-1.23456, -2.0], [0.0, 0.0], [-0.00004, -10.5]],
                      [[-0.9, -1.654321], [0.0, 0.0], [-0.00006, -12.0]])


def test_format_output_text_lists_the_hypotheses_best_first():
    assert decode_command.format_output(NBEST, SOURCES, "text", False) == [
        "fünf", "fünfzig", "", "", "x", "y"]
    assert decode_command.format_output(NBEST, SOURCES, "text", True) == [
        "fünf\t-1.2346\t-0.9000", "fünfzig\t-2.0000\t-1.6543",
        "\t0.0000\t0.0000", "\t0.0000\t0.0000",
        "x\t-0.0000\t-0.0001", "y\t-10.5000\t-12.0000"]


def test_format_output_jsonl_is_one_parseable_object_per_input():
    written = decode_command.format_output(NBEST, SOURCES, "jsonl", False)
    assert len(written) == len(SOURCES)
    assert [json.loads(line) for line in written] == [
        {"source": source, "hypotheses": texts, "log_probs": log_probs, "scores": scores}
        for source, texts, log_probs, scores in zip(SOURCES, NBEST.hypotheses, NBEST.log_probs,
                                                    NBEST.scores, strict=True)]
    assert "fünf" in written[0]  # UTF-8 as is, not \u00fc
    assert all("\n" not in line and "\t" not in line for line in written)  # one line each
    # print_scores is a text option: jsonl always holds the scores, with or without it.
    assert decode_command.format_output(NBEST, SOURCES, "jsonl", True) == written


def test_format_output_refuses_an_unknown_format():
    with pytest.raises(InferenceError) as error:
        decode_command.format_output(NBEST, SOURCES, "xml", False)
    assert str(error.value) == "output format 'xml' is not one of text, jsonl."


def test_write_lines_to_a_stream_and_a_file_round_trip(tmp_path):
    lines = ["fünf", "", "  zwei", "😀 ∮"]
    stdout = io.StringIO()
    decode_command.write_lines(lines, None, stdout)
    assert stdout.getvalue() == "fünf\n\n  zwei\n😀 ∮\n"
    empty = io.StringIO()
    decode_command.write_lines([], None, empty)
    assert empty.getvalue() == ""
    path = str(tmp_path / "out.txt")
    decode_command.write_lines(lines, path, Untouchable())
    assert decode_command.read_text_file(path) == lines
    with open(path, "rb") as handle:
        assert handle.read() == stdout.getvalue().encode("utf-8")  # UTF-8 whatever the locale
    missing = str(tmp_path / "no" / "out.txt")
    with pytest.raises(InferenceError) as error:
        decode_command.write_lines(lines, missing, Untouchable())
    assert str(error.value) == f"cannot write {missing!r}: No such file or directory."


def test_attention_plot_needs_a_non_empty_line():
    request = decode_command.DecodeRequest(workdir="unused", attention_plot="a.png")
    blank = _translations(["", ""], [[""], [""]], [[0.0], [0.0]], [[0.0], [0.0]])
    with pytest.raises(InferenceError) as error:
        decode_command._plot(request, None, blank, io.StringIO())
    assert str(error.value) == "--attention_plot needs at least one non-empty input line."
    second = _translations(["", "one", "two"], [[""]] * 3, [[0.0]] * 3, [[0.0]] * 3)
    assert decode_command._first_sentence(second) == 1


@pytest.mark.parametrize(("kind", "changes", "method"), [
    ("encoder_decoder", {}, "beam (beam 4, alpha 0.6)"),
    ("encoder_decoder", {"method": "greedy", "nbest": 1, "min_length": 2}, "greedy, min_length 2"),
    ("encoder_decoder", {"method": "sample", "temperature": 0.7, "top_k": 5, "top_p": 0.9,
                         "seed": 3, "num_samples": 4, "no_repeat_ngram_size": 2},
     "sample (temperature 0.7, top-k 5, top-p 0.9, seed 3), num_samples 4, "
     "no_repeat_ngram_size 2"),
    ("decoder_only", {"method": "greedy"}, "continuing prompts, greedy"),
    ("encoder_only", {"top_k": 0}, "filling <mask> (likeliest piece)"),
    ("encoder_only", {"top_k": 3}, "filling <mask> (likeliest piece, top 3 listed)"),
])
def test_first_stderr_line_says_what_was_restored_and_how_it_decodes(kind, changes, method):
    config = kind_config(kind)
    restored = types.SimpleNamespace(config=config, description="checkpoints/2")
    decode_config = dataclasses.replace(config.decode, **changes)
    assert decode_command._describe(restored, decode_config, 3) == (
        f"restored checkpoints/2; 3 line(s), {method}, on {jax.devices()[0].platform}")


# --------------------------------------------------------------------------- run


def _saved_run(tmp_path, kind):
    """A workdir with only config.json: enough for every check that precedes the restore."""
    config = kind_config(kind)
    checkpoint.save_config(str(tmp_path), config)
    return config


def _no_restore(*args, **kwargs):
    raise AssertionError("the model was loaded before the request was checked")


@pytest.mark.parametrize(("kind", "request_fields", "stdin", "message"), [
    ("decoder_only", {"print_scores": True}, Untouchable(), "--print_scores is for translation"),
    ("encoder_only", {"decode_overrides": {"beam_size": 2}}, Untouchable(),
     "--beam_size controls a search"),
    ("decoder_only", {}, io.StringIO("zwei\ndrei<mask>\n"), "input line 2 holds <mask>"),
    ("encoder_only", {}, io.StringIO("drei\nvier\n"), "no input line holds <mask>"),
    ("encoder_decoder", {"decode_overrides": {"method": "greedy", "nbest": 2}}, Untouchable(),
     "decode.nbest=2 needs method 'beam'"),
])
def test_run_refuses_a_request_before_the_model_loads(tmp_path, monkeypatch, kind,
                                                      request_fields, stdin, message):
    _saved_run(tmp_path, kind)
    monkeypatch.setattr(inference, "restore", _no_restore)
    request = decode_command.DecodeRequest(workdir=str(tmp_path), **request_fields)
    with pytest.raises(decode_command.DECODE_USER_ERRORS) as error:
        decode_command.run(request, stdin=stdin, stdout=Untouchable(), stderr=io.StringIO())
    assert message in str(error.value)


class FakeModel:
    """inference's restore and translate_lines for a run that "translates" perfectly."""

    def __init__(self, config, truncated=0):
        self.config, self.truncated, self.translated = config, truncated, []

    def restore(self, workdir, which, use_ema):
        assert (which, use_ema) == ("latest", True)  # the request's choice arrives
        # Only what run reads itself: inference.Restored is being changed elsewhere.
        return types.SimpleNamespace(config=self.config, description="checkpoints/9 (EMA)")

    def translate_lines(self, restored, lines, decode_config, progress=False):
        self.translated.append((list(lines), decode_config))
        texts = [number_words.german(number_words.parse_english(line))
                 if line.strip("∮ ") else "" for line in lines]
        return _translations(lines, [[text] for text in texts], [[-1.0]] * len(lines),
                             [[-0.5]] * len(lines), self.truncated)


def test_run_warns_about_lines_the_number_words_task_does_not_write(tmp_path, monkeypatch):
    """"Seven" or "one hundred and one" get outputs, but the run never learned such input:
    decode.py says so (a silent guess looked like an answer: "Seven" -> "neun")."""
    config = _saved_run(tmp_path, "encoder_decoder")
    fake = FakeModel(config)
    monkeypatch.setattr(inference, "restore", fake.restore)
    monkeypatch.setattr(inference, "translate_lines", lambda restored, lines, *args, **kw:
                        _translations(lines, [["?"]] * len(lines), [[-1.0]] * len(lines),
                                      [[-0.5]] * len(lines), 0))
    request = decode_command.DecodeRequest(workdir=str(tmp_path), checkpoint="latest",
                                           use_ema=True, inputs=("forty-two", "Seven", "",
                                                                 "one hundred and one"))
    stderr = io.StringIO()
    decode_command.run(request, stdin=Untouchable(), stdout=io.StringIO(), stderr=stderr)
    assert stderr.getvalue().splitlines()[0] == (
        "warning: 2 line(s) are not English number words as number_words writes them "
        "(line 2: 'Seven'); this run learned only those (lower case, hyphens inside 21 … 99, "
        "no 'and', e.g. 'three hundred forty-two'), so their outputs are guesses.")


def test_not_number_words_only_for_number_words_translation_from_english():
    config = kind_config("encoder_decoder")
    lines = ["Seven", "seven", " ∮ ", "", "  forty-two ", "1234"]
    assert decode_command.not_number_words(config, lines) == [0, 5]
    for other in (dataclasses.replace(config, data=dataclasses.replace(
                      config.data, dataset="parallel_text")),
                  dataclasses.replace(config, data=dataclasses.replace(
                      config.data, source_language="de", target_language="en")),
                  kind_config("decoder_only")):
        assert decode_command.not_number_words(other, lines) == []


def test_run_writes_scores_and_warns_in_input_order(tmp_path, monkeypatch):
    from flax_transformer import evaluation

    config = _saved_run(tmp_path, "encoder_decoder")
    fake = FakeModel(config, truncated=1)
    monkeypatch.setattr(inference, "restore", fake.restore)
    monkeypatch.setattr(inference, "translate_lines", fake.translate_lines)
    lines = ["seven", "", "four hundred twenty-one", "thirty", " ∮ "]
    references = ["sieben", "", "vierhunderteinundzwanzig", "dreizehn", ""]
    reference_file = tmp_path / "refs.de"
    reference_file.write_text("\n".join(references) + "\n", encoding="utf-8")
    request = decode_command.DecodeRequest(
        workdir=str(tmp_path), checkpoint="latest", use_ema=True,
        reference_file=str(reference_file), decode_overrides={**UNSET, "method": "greedy"})
    stdout, stderr = io.StringIO(), io.StringIO()
    stdin = io.BytesIO("".join(f"{line}\r\n" for line in lines).encode("utf-8"))
    decoded = decode_command.run(request, stdin=stdin, stdout=stdout, stderr=stderr)
    outputs = ["sieben", "", "vierhunderteinundzwanzig", "dreißig", ""]
    assert stdout.getvalue() == "".join(f"{output}\n" for output in outputs)
    assert fake.translated == [(lines, dataclasses.replace(config.decode, method="greedy"))]
    assert decoded.scores == evaluation.score_lines(outputs, references)
    assert "exact match = 80.0% of 5 lines" in decoded.scores[2] and decoded.plots == {}
    err = stderr.getvalue().splitlines()
    assert err[0] == ("warning: 1 line(s) hold no letter or digit (only emoji, symbols or "
                      "control characters); their outputs are guesses.")
    assert err[1] == (f"restored checkpoints/9 (EMA); 5 line(s), greedy, on "
                      f"{jax.devices()[0].platform}")
    assert err[2] == (f"warning: 1 line(s) longer than model.max_length="
                      f"{config.model.max_length} tokens were truncated to it.")
    assert err[3:] == decoded.scores
    # A reference file of another length is refused before anything is translated.
    reference_file.write_text("sieben\n", encoding="utf-8")
    with pytest.raises(InferenceError, match=r"the input has 5 lines but .*refs\.de has 1;"):
        decode_command.run(request, stdin=io.StringIO("\n".join(lines)), stdout=Untouchable(),
                           stderr=io.StringIO())
    assert len(fake.translated) == 1

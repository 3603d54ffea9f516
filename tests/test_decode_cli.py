"""decode.py, decode_command.py and inference.py on a tiny trained run: inputs, order,
scores, plots, bad input.

The run is a few steps of the micro model on a small number-words corpus (module fixture):
the tests check mechanics (same outputs through every input path, order, counts, errors),
not translation quality.
"""

import dataclasses
import gzip
import io
import itertools
import json
import os
import shutil
import subprocess
import sys

import hypothesis
import numpy as np
import pytest
import sacrebleu
from hypothesis import strategies as st

import decode
from flax_transformer import decode_command, inference, loop, translate
from flax_transformer.data import number_words
from tests.helpers import decode_fails, run_decode
from tests.test_loop import _config, _write_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = ["seven", "four hundred twenty-one", "thirty", "seven hundred three"]  # 1 bucket


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    corpus = _write_corpus(str(tmp_path_factory.mktemp("decode_corpus")))
    workdir = str(tmp_path_factory.mktemp("decode_run"))
    loop.train_and_evaluate(_config(corpus, num_steps=1, checkpoint_every=1), workdir)
    return workdir


@pytest.fixture(scope="module")
def restored(run_dir):
    return inference.restore(run_dir)


@pytest.fixture(scope="module")
def greedy(restored):
    return dataclasses.replace(restored.config.decode, method="greedy")


def _write(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return str(path)


def test_help_explains_every_flag():
    result = subprocess.run([sys.executable, "decode.py", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=True)
    for flag in ("--workdir", "--checkpoint", "--ema", "--input", "--input_file",
                 "--output_file", "--reference_file", "--attention_plot",
                 "--self_attention", "--output_format", "--print_scores",
                 *(f"--{name}" for name in decode.SEARCH_FLAGS)):
        assert flag in result.stdout
    assert "truncated" in result.stdout


def test_input_flag_file_and_stdin_agree(run_dir, tmp_path, capsys, monkeypatch):
    flags = ("--workdir", run_dir, "--method", "greedy")
    repeated = [arg for sentence in SENTENCES for arg in ("--input", sentence)]
    status, from_flags, err = run_decode(capsys, *flags, *repeated)
    assert status == 0 and len(from_flags) == len(SENTENCES)
    assert "restored checkpoints/1" in err
    _, from_one_string, _ = run_decode(capsys, *flags, "--input", "\n".join(SENTENCES))
    source = _write(tmp_path / "in.en", SENTENCES)
    _, from_file, _ = run_decode(capsys, *flags, "--input_file", source)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(
        "\r\n".join(SENTENCES).encode("utf-8"))))
    _, from_stdin, _ = run_decode(capsys, *flags)
    output = tmp_path / "out.de"
    _, nothing, _ = run_decode(capsys, *flags, "--input_file", source, "--output_file",
                            str(output))
    gzipped = tmp_path / "in.en.gz"
    gzipped.write_bytes(gzip.compress(("\n".join(SENTENCES) + "\n").encode("utf-8")))
    _, from_gzip, _ = run_decode(capsys, *flags, "--input_file", str(gzipped))
    assert from_one_string == from_file == from_stdin == from_gzip == from_flags
    assert nothing == [] and output.read_text("utf-8").split("\n")[:-1] == from_flags


def test_file_of_mixed_lengths_keeps_order_and_echoes_empty_lines(run_dir, restored,
                                                                  greedy, tmp_path, capsys):
    lines = ["nine hundred ninety-nine thousand nine hundred ninety-nine", "", "one",
             "twelve thousand", "   ", "seven hundred three", "two"]
    _, outputs, _ = run_decode(capsys, "--workdir", run_dir, "--method", "greedy",
                            "--input_file", _write(tmp_path / "mixed.en", lines))
    one_by_one = [inference.translate_lines(restored, [line], greedy).translations[0]
                  for line in lines]
    assert outputs == one_by_one
    assert outputs[1] == outputs[4] == ""
    # Blank lines never reach the model: they encode to nothing, the others to pieces + EOS.
    sequences, _ = translate.encode_sources(restored.tokenizer, lines, 64)
    assert [len(ids) > 0 for ids in sequences] == [True, False, True, True, False, True, True]


def test_reference_file_prints_bleu_with_signature_and_chrf(run_dir, tmp_path, capsys):
    references = [number_words.german(n) for n in (7, 421, 30, 703)]
    _, hypotheses, err = run_decode(capsys, "--workdir", run_dir, "--method", "greedy",
                                 "--input_file", _write(tmp_path / "s.en", SENTENCES),
                                 "--reference_file", _write(tmp_path / "r.de", references))
    expected_bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
    expected_chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
    assert f"BLEU = {expected_bleu:.2f} (nrefs:1|case:mixed|eff:no|tok:13a" in err
    assert f"chrF = {expected_chrf:.2f} (nrefs:1|case:mixed" in err
    exact = sum(h == r for h, r in zip(hypotheses, references, strict=True)) / 4
    assert f"exact match = {100 * exact:.1f}% of 4 lines" in err
    assert "fewer than 4 words" in err  # German number words are single compounds
    assert "BLEU" not in "".join(hypotheses)


def test_beam_and_sampling_flags_reach_the_search(run_dir, capsys):
    flags = ("--workdir", run_dir, "--input", "\n".join(SENTENCES))
    _, greedy, _ = run_decode(capsys, *flags, "--method", "greedy")
    # Identities of the searches (decoding.py): they hold only if the flags arrive.
    _, beam_one, err = run_decode(capsys, *flags, "--method", "beam", "--beam_size", "1",
                               "--length_penalty", "0")
    assert "beam (beam 1, alpha 0.0)" in err
    _, top_one, err = run_decode(capsys, *flags, "--method", "sample", "--top_k", "1",
                              "--seed", "5")
    assert "top-k 1" in err and "seed 5" in err
    assert beam_one == greedy == top_one and len(greedy) == len(SENTENCES)


def test_attention_plot_draws_the_attention_weights(run_dir, restored, tmp_path, capsys):
    png = tmp_path / "attention.png"
    request = decode_command.DecodeRequest(
        workdir=run_dir, inputs=("", "forty-two"), attention_plot=str(png),
        self_attention=True, decode_overrides={"method": "greedy"})
    decoded = decode_command.run(request)
    err = capsys.readouterr().err
    paths = [png, tmp_path / "attention.encoder_self.png",
             tmp_path / "attention.decoder_self.png"]
    for path in paths:
        assert f"attention of input line 2: {path}" in err
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000
    source = decoded.result.sources[1]
    max_length = restored.config.model.max_length  # an untrained model may never stop
    output = (decoded.result.outputs[1] + [restored.tokenizer.eos_id])[:max_length]
    expected = translate.attention_weights(restored.model, restored.params, np.array([source]),
                                           np.array([output]), bos_id=restored.tokenizer.bos_id)
    assert sorted(decoded.plots) == ["cross", "decoder_self", "encoder_self"]
    for kind, (_, plotted) in decoded.plots.items():
        layers = np.stack([np.asarray(layer[0]) for layer in expected[kind]])  # [L, H, Q, K]
        np.testing.assert_allclose(plotted, layers.reshape(-1, *layers.shape[2:]), atol=1e-6)
    assert decoded.plots["cross"][1].shape[1:] == (len(output), len(source))


def test_overlong_line_is_truncated_with_a_warning(run_dir, restored, capsys):
    long_line = " ".join(["seven hundred"] * 30)
    _, outputs, err = run_decode(capsys, "--workdir", run_dir, "--method", "greedy",
                              "--input", long_line, "--input", "one")
    max_length = restored.config.model.max_length
    assert f"warning: 1 line(s) longer than model.max_length={max_length}" in err
    assert len(outputs) == 2
    sources, truncated = translate.encode_sources(restored.tokenizer, [long_line, "one"],
                                                  max_length)
    assert truncated == 1 and len(sources[0]) == max_length
    assert sources[0][:-1] == restored.tokenizer.encode(long_line)[:max_length - 1]
    assert sources[0][-1] == restored.tokenizer.eos_id


def test_only_unknown_characters_decode_with_the_runs_beam_search(run_dir, capsys):
    status, outputs, err = run_decode(capsys, "--workdir", run_dir, "--input", "漢字 😀 ∮",
                                   "--input", "Ωμέγα")
    assert status == 0 and len(outputs) == 2
    assert "beam (beam 4, alpha 0.6)" in err  # the run's config.decode, no flags given


def _copy_run(run_dir, tmp_path, with_checkpoints):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "tokenizer.model"):
        shutil.copy(os.path.join(run_dir, name), copy / name)
    if with_checkpoints:
        shutil.copytree(os.path.join(run_dir, "checkpoints"), copy / "checkpoints")
    return copy


def test_bad_workdirs_exit_2_with_a_message(run_dir, tmp_path, capsys):
    err = decode_fails(capsys, "--workdir", str(tmp_path / "nowhere"), "--input", "one")
    assert "does not exist" in err
    err = decode_fails(capsys, "--workdir", str(tmp_path), "--input", "one")
    assert "config.json not found" in err
    copy = _copy_run(run_dir, tmp_path, with_checkpoints=False)
    err = decode_fails(capsys, "--workdir", str(copy), "--input", "one")
    assert "no checkpoints/" in err and "train first" in err
    err = decode_fails(capsys, "--workdir", run_dir, "--checkpoint", "averaged", "--input", "one")
    assert "no averaged/" in err
    err = decode_fails(capsys, "--workdir", run_dir, "--checkpoint", "7", "--input", "one")
    assert "checkpoint 7" in err


def test_checkpoint_of_another_config_or_tokenizer_exit_2(run_dir, tmp_path, capsys):
    copy = _copy_run(run_dir, tmp_path, with_checkpoints=True)
    config = json.loads((copy / "config.json").read_text())
    config["model"]["d_ff"] *= 2
    (copy / "config.json").write_text(json.dumps(config))
    err = decode_fails(capsys, "--workdir", str(copy), "--input", "one")
    assert "does not fit the model of the config" in err
    config["model"]["d_ff"] //= 2
    config["model"]["vocab_size"] = config["data"]["vocab_size"] = 8
    (copy / "config.json").write_text(json.dumps(config))
    err = decode_fails(capsys, "--workdir", str(copy), "--input", "one")
    assert "the tokenizer belongs to another run" in err


def test_bad_input_files_exit_2_naming_the_problem(run_dir, tmp_path, capsys):
    source = _write(tmp_path / "s.en", SENTENCES)
    err = decode_fails(capsys, "--workdir", run_dir, "--input_file", source,
                 "--reference_file", _write(tmp_path / "r.de", ["sieben"]))
    assert "the input has 4 lines but" in err and "has 1" in err
    latin1 = tmp_path / "latin1.en"
    latin1.write_bytes("one\nzwei Brücken\n".encode("latin-1"))
    err = decode_fails(capsys, "--workdir", run_dir, "--input_file", str(latin1))
    assert "line 2 is not UTF-8" in err
    err = decode_fails(capsys, "--workdir", run_dir, "--input_file", str(tmp_path / "missing"))
    assert "cannot read" in err
    not_gzip = _write(tmp_path / "plain.en.gz", SENTENCES)
    err = decode_fails(capsys, "--workdir", run_dir, "--input_file", not_gzip)
    assert "cannot read" in err and "plain.en.gz" in err
    err = decode_fails(capsys, "--workdir", run_dir, "--input", "one", "--top_p", "1.5")
    assert "decode.top_p=1.5" in err


@hypothesis.settings(max_examples=30, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(text=st.text(max_size=60).filter(lambda text: text.count("\n") < 3))
def test_random_unicode_never_crashes_and_keeps_one_line_per_line(restored, greedy, text):
    lines = decode_command.split_lines(text.encode("utf-8"), "fuzz")
    result = inference.translate_lines(restored, lines, greedy)
    written = io.StringIO()
    decode_command.write_lines(result.translations, None, written)
    assert written.getvalue().count("\n") == len(lines) == len(result.translations)
    for line, translation in zip(lines, result.translations, strict=True):
        if not restored.tokenizer.encode(line):
            assert translation == ""


# --------------------------------------------------------------------------- decoding controls


def _groups(lines, count):
    return [lines[start:start + count] for start in range(0, len(lines), count)]


def test_nbest_prints_n_hypotheses_per_input_best_first_with_scores(run_dir, capsys):
    flags = ("--workdir", run_dir, "--input", "\n".join(SENTENCES), "--method", "beam",
             "--beam_size", "4")
    _, best, _ = run_decode(capsys, *flags)
    status, lines, err = run_decode(capsys, *flags, "--nbest", "3", "--print_scores")
    assert status == 0 and "nbest 3" in err and len(lines) == 3 * len(SENTENCES)
    for group, expected_best in zip(_groups(lines, 3), best, strict=True):
        fields = [line.split("\t") for line in group]
        assert all(len(row) == 3 for row in fields)
        assert fields[0][0] == expected_best  # nbest does not change the search
        log_probs, scores = ([float(row[column]) for row in fields] for column in (1, 2))
        assert scores == sorted(scores, reverse=True)
        assert all(log_p < 0 and score < 0 for log_p, score in zip(log_probs, scores,
                                                                   strict=True))
        assert len({row[0] for row in fields}) == 3 or len(set(scores)) == 3


def test_jsonl_parses_and_matches_the_plain_output(run_dir, tmp_path, capsys):
    lines = [*SENTENCES[:2], "", SENTENCES[2]]
    flags = ("--workdir", run_dir, "--input_file", _write(tmp_path / "in.en", lines),
             "--nbest", "2")
    _, plain, _ = run_decode(capsys, *flags, "--print_scores")
    _, jsonl, _ = run_decode(capsys, *flags, "--output_format", "jsonl")
    objects = [json.loads(line) for line in jsonl]
    assert [entry["source"] for entry in objects] == lines
    assert all(sorted(entry) == ["hypotheses", "log_probs", "scores", "source"]
               for entry in objects)
    for entry, group in zip(objects, _groups(plain, 2), strict=True):
        assert [line.split("\t")[0] for line in group] == entry["hypotheses"]
        for line, log_p, score in zip(group, entry["log_probs"], entry["scores"],
                                      strict=True):
            assert line.split("\t")[1:] == [f"{log_p:.4f}", f"{score:.4f}"]
    assert objects[2] == {"source": "", "hypotheses": ["", ""], "log_probs": [0.0, 0.0],
                          "scores": [0.0, 0.0]}
    _, best, _ = run_decode(capsys, "--workdir", run_dir, "--input_file", str(tmp_path / "in.en"))
    assert [entry["hypotheses"][0] for entry in objects] == best


def test_num_samples_gives_k_reproducible_samples_per_input(run_dir, capsys):
    flags = ("--workdir", run_dir, "--input", "\n".join(SENTENCES), "--method", "sample",
             "--num_samples", "3", "--output_format", "jsonl")
    _, first, err = run_decode(capsys, *flags, "--seed", "7")
    _, again, _ = run_decode(capsys, *flags, "--seed", "7")
    _, other, _ = run_decode(capsys, *flags, "--seed", "8")
    assert "num_samples 3" in err and first == again and first != other
    objects = [json.loads(line) for line in first]
    assert [len(entry["hypotheses"]) for entry in objects] == [3] * len(SENTENCES)
    # An untrained model is close to uniform: three samples of a sentence rarely agree.
    assert any(len(set(entry["hypotheses"])) > 1 for entry in objects)
    _, text, _ = run_decode(capsys, *flags[:-2], "--seed", "7")
    assert text == [hypothesis for entry in objects for hypothesis in entry["hypotheses"]]


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_min_length_and_no_repeat_ngram_reach_every_search(run_dir, restored, capsys,
                                                           method):
    flags = ("--method", method, "--min_length", "6", "--no_repeat_ngram_size", "2")
    _, lines, err = run_decode(capsys, "--workdir", run_dir, "--input", "\n".join(SENTENCES),
                            *flags)
    assert "min_length 6, no_repeat_ngram_size 2" in err
    config = dataclasses.replace(restored.config.decode, method=method, min_length=6,
                                 no_repeat_ngram_size=2)
    assert inference.translate_lines(restored, SENTENCES, config).translations == lines
    # The rows as searched (content_ids would drop control tokens an untrained model emits).
    tokenizer, max_length = restored.tokenizer, restored.config.model.max_length
    sources, _ = translate.encode_sources(tokenizer, SENTENCES, max_length)
    translate_fn = translate.make_translate_fn(restored.model, config, bos_id=tokenizer.bos_id,
                                               eos_id=tokenizer.eos_id)
    for found in translate.translate_all(translate_fn, restored.params, sources,
                                         buckets=(max_length,), tokens_per_batch=4096):
        row = found.tokens[0][found.tokens[0] != tokenizer.pad_id].tolist()
        assert tokenizer.eos_id not in row[:6]
        bigrams = list(itertools.pairwise(row))
        assert len(row) > 6 and len(bigrams) == len(set(bigrams))


@pytest.mark.parametrize(("flags", "message"), [
    (("--method", "sample", "--nbest", "3"), "decode.nbest=3 needs method 'beam'"),
    (("--method", "greedy", "--nbest", "2"), "decode.nbest=2 needs method 'beam'"),
    (("--nbest", "5"), "decode.nbest=5 exceeds decode.beam_size=4"),
    (("--method", "beam", "--num_samples", "3"), "decode.num_samples=3 needs method 'sample'"),
    (("--min_length", "-1"), "decode.min_length=-1 must be zero or positive"),
    (("--print_scores", "--output_format", "jsonl"), "--print_scores is for"),
])
def test_controls_for_another_method_exit_2_before_the_model_loads(
        run_dir, capsys, monkeypatch, flags, message):
    def no_restore(*args, **kwargs):
        raise AssertionError("the model was loaded before the request was checked")
    monkeypatch.setattr(inference, "restore", no_restore)
    err = decode_fails(capsys, "--workdir", run_dir, "--input", "one", *flags)
    assert message in err and err.count("\n") == 1

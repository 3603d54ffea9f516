"""language_model.py and decode.py on a decoder_only run: prompts continued with the KV
cache (greedy == an uncached argmax loop), every search from the command line, refusals;
continuations.py's report through the same path.

The run is a few steps of the micro model (module fixture): the tests check mechanics,
not the quality of the continuations.
"""

import io
import sys

import jax
import jax.numpy as jnp

from flax_transformer import continuations, language_model, training
from flax_transformer.config import DecodeConfig
from flax_transformer.model import DecoderOnly
from tests.helpers import decode_fails, kind_run_fixtures, run_decode

PROMPTS = ["drei", "siebenhundert", "zwei", "neunzehntausend"]


run_dir, restored = kind_run_fixtures("decoder_only")


def _uncached_greedy(model, params, prompt, steps, eos_id, pad_id):
    """The whole prefix through model.apply for every new token (no cache)."""
    ids = list(prompt)
    for _ in range(steps):
        logits = model.apply({"params": params}, jnp.asarray([ids], jnp.int32))[0, -1]
        ids.append(int(jnp.argmax(logits.at[pad_id].set(-jnp.inf))))
        if ids[-1] == eos_id:
            break
    new = ids[len(prompt):]
    return new[:-1] if new and new[-1] == eos_id else new


def test_cached_greedy_equals_the_uncached_argmax_loop(restored):
    # Random parameters: a short training run may end every prompt at once.
    model = DecoderOnly(restored.config.model)
    params = training.init_params(restored.config.model, jax.random.key(7))
    tokenizer, steps = restored.tokenizer, 6
    done = language_model.continue_lines(
        model, params, tokenizer, PROMPTS, DecodeConfig(method="greedy",
                                                        max_extra_length=steps),
        restored.config.model.max_length)
    assert done.truncated == 0
    for prompt_ids, continuation in zip(done.prompts, done.continuations, strict=True):
        assert prompt_ids[0] == tokenizer.bos_id
        assert continuation == _uncached_greedy(model, params, prompt_ids, steps,
                                                tokenizer.eos_id, tokenizer.pad_id)
    assert any(done.continuations)  # the comparison covered new tokens


def test_output_is_the_prompt_as_typed_then_its_continuation(restored):
    tokenizer = restored.tokenizer
    bos, whole = [tokenizer.bos_id], tokenizer.encode("dreihundert")
    prompt, continuation = whole[:1], whole[1:]
    text = language_model.prompt_and_continuation(tokenizer, tokenizer.decode(prompt),
                                                  [*bos, *prompt], continuation)
    assert text == "dreihundert"
    # Characters the vocabulary lacks are kept as typed, not as SentencePiece's ⁇.
    odd = language_model.prompt_and_continuation(
        tokenizer, "✓drei", [*bos, *tokenizer.encode("✓drei")], continuation)
    assert odd == "✓drei" + tokenizer.decode(whole)[len(tokenizer.decode(prompt)):]
    # A prompt that was cut is shown as the model read it.
    assert language_model.prompt_and_continuation(
        tokenizer, None, [*bos, *prompt], continuation) == "dreihundert"


def test_long_prompts_are_cut_to_leave_one_position(restored):
    max_length = restored.config.model.max_length
    prompts, cut = language_model.encode_prompts(restored.tokenizer,
                                                 ["drei" * 40, "drei", ""], max_length)
    assert cut == [True, False, False]
    assert len(prompts[0]) == max_length - 1 and prompts[2] == [restored.tokenizer.bos_id]


def test_prompts_from_flags_file_and_stdin_agree_and_greedy_repeats(run_dir, tmp_path,
                                                                     capsys, monkeypatch):
    flags = ("--workdir", run_dir, "--method", "greedy")
    status, from_flags, err = run_decode(capsys, *flags,
                                      *[arg for p in PROMPTS for arg in ("--input", p)])
    assert status == 0 and "continuing prompts, greedy" in err
    assert [line[:len(p)] for line, p in zip(from_flags, PROMPTS, strict=True)] == PROMPTS
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    _, from_file, _ = run_decode(capsys, *flags, "--input_file", str(path))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(
        "\n".join(PROMPTS).encode("utf-8"))))
    _, from_stdin, _ = run_decode(capsys, *flags)
    assert from_flags == from_file == from_stdin


def test_beam_and_sampling_continue_prompts(run_dir, capsys):
    flags = ("--workdir", run_dir, "--input", "\n".join(PROMPTS))
    _, greedy, _ = run_decode(capsys, *flags, "--method", "greedy")
    # Identities of the searches: they hold only if the flags reach the continuation.
    _, beam_one, _ = run_decode(capsys, *flags, "--method", "beam", "--beam_size", "1",
                             "--length_penalty", "0")
    _, top_one, _ = run_decode(capsys, *flags, "--method", "sample", "--top_k", "1")
    assert beam_one == top_one == greedy
    _, beam, err = run_decode(capsys, *flags, "--method", "beam", "--beam_size", "3")
    assert "beam (beam 3" in err
    _, sampled, _ = run_decode(capsys, *flags, "--method", "sample", "--seed", "4")
    _, again, _ = run_decode(capsys, *flags, "--method", "sample", "--seed", "4")
    assert sampled == again
    for outputs in (beam, sampled):
        assert [line[:len(p)] for line, p in zip(outputs, PROMPTS, strict=True)] == PROMPTS


def test_references_score_the_continued_prompts(run_dir, tmp_path, capsys):
    source, references = tmp_path / "p.txt", tmp_path / "r.txt"
    source.write_text("drei\nzwei\n", encoding="utf-8")
    references.write_text("dreihundert\nzwei\n", encoding="utf-8")
    _, outputs, err = run_decode(capsys, "--workdir", run_dir, "--method", "greedy",
                              "--input_file", str(source), "--reference_file", str(references))
    exact = sum(o == r for o, r in zip(outputs, ["dreihundert", "zwei"], strict=True)) / 2
    assert f"exact match = {100 * exact:.1f}% of 2 lines" in err


def test_requests_for_other_kinds_exit_2(run_dir, capsys):
    err = decode_fails(capsys, "--workdir", run_dir, "--input", "drei", "--attention_plot", "a.png")
    assert "cross-attention, which this decoder_only run does not have" in err
    err = decode_fails(capsys, "--workdir", run_dir, "--input", "zwei", "--input", "drei<mask>")
    assert "input line 2 holds <mask>, which only an encoder_only run fills" in err


def test_number_words_report_continues_every_prompt(restored):
    model = DecoderOnly(restored.config.model)
    params = training.init_params(restored.config.model, jax.random.key(7))
    report = continuations.number_words_report(model, params, restored.tokenizer, samples=2)
    again = continuations.number_words_report(model, params, restored.tokenizer, samples=2)
    assert report == again
    for prompt in continuations.PROMPTS:
        assert report[f"greedy:{prompt}"].startswith(prompt)
    greedy = [report[f"greedy:{prompt}"] for prompt in continuations.PROMPTS]
    assert report["greedy_valid"] == continuations.valid_share(greedy)
    assert 0.0 <= report["sampled_valid"] <= 1.0 and 0.0 <= report["sampled_extended"] <= 1.0

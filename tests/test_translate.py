"""Tests of translate.py: the searches over a real Transformer / DecoderOnly, batching."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_transformer import decoding, translate
from flax_transformer.config import DecodeConfig
from flax_transformer.model import DecoderOnly, Transformer, stack_layers
from flax_transformer.presets import get_config

PAD, BOS, EOS = 0, 2, 3


# --------------------------------------------------------------------------- fixtures


def _tiny_config(decoder_layers=2):
    # Untied output: randomly initialised tied models repeat one token, a weak test.
    # Small stacks keep each XLA compile (the cost of these tests) near a second.
    return dataclasses.replace(
        get_config("tiny").model, vocab_size=32, d_model=32, num_heads=2, d_ff=64,
        num_encoder_layers=1, num_decoder_layers=decoder_layers, max_length=32,
        tie_output=False)


@pytest.fixture(scope="module")
def seq2seq():
    model = Transformer(_tiny_config())
    sources = np.random.RandomState(0).randint(4, 32, (4, 6)).astype(np.int32)
    sources[1, 4:] = PAD
    sources[3, 2:] = PAD
    params = _random_params(model, sources, sources)
    return model, params, jnp.asarray(sources)


def _random_params(model, *inputs, seed=0):
    """Random params of the right shapes without compiling Flax's init (seconds saved).

    Matrices get variance 1/fan-in, vectors (biases, LayerNorm) small noise around 0 or 1.
    Dense kernels stored [O, I] get the numbers of their [I, O] twins, transposed.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), *inputs)["params"]
    rng = np.random.RandomState(seed)
    out_in = model.config.kernel_layout == "out_in"

    def draw(path, leaf):
        if leaf.ndim >= 2 and out_in and jax.tree_util.keystr(path).endswith("['kernel']"):
            return rng.normal(0, leaf.shape[1] ** -0.5, leaf.shape[::-1]).T.astype(np.float32)
        if leaf.ndim >= 2:
            return rng.normal(0, leaf.shape[0] ** -0.5, leaf.shape).astype(np.float32)
        centre = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
        return (centre + rng.normal(0, 0.1, leaf.shape)).astype(np.float32)
    return jax.tree_util.tree_map_with_path(draw, shapes)


def _greedy_config(**changes):
    return DecodeConfig(**{"method": "greedy", "max_extra_length": 8, **changes})


@pytest.fixture(scope="module")
def greedy_outputs(seq2seq):
    model, params, sources = seq2seq
    return translate.make_translate_fn(model, _greedy_config(), bos_id=BOS, eos_id=EOS)(
        params, sources).tokens[:, 0]


def _jitted(function, *args, **kwargs):
    """Calls function compiled as a whole (much faster than op by op)."""
    return jax.jit(lambda: function(*args, **kwargs))()


# --------------------------------------------------------------------------- caches


def _uncached_greedy(model, params, sources, max_length):
    """Reference: greedy search that reruns the whole parallel decoder every step."""
    forward = jax.jit(lambda target: model.apply({"params": params}, sources, target))
    rows = sources.shape[0]
    target = np.full((rows, max_length), PAD, np.int32)
    target[:, 0] = BOS
    outputs = np.full((rows, max_length), PAD, np.int32)
    done = np.zeros(rows, bool)
    for step in range(max_length):
        logits = np.array(forward(target))
        logits[..., PAD] = -np.inf
        if step == 0:                      # translate's min_length >= 1: never an empty output
            logits[..., EOS] = -np.inf
        token = np.where(done, PAD, logits[:, step].argmax(-1))
        outputs[:, step] = token
        if step + 1 < max_length:
            target[:, step + 1] = token
        done |= token == EOS
    return outputs


def test_cached_greedy_equals_the_uncached_parallel_decoder(seq2seq, greedy_outputs):
    model, params, sources = seq2seq
    assert len(np.unique(np.asarray(greedy_outputs))) >= 4  # a non-degenerate model
    expected = _uncached_greedy(model, params, sources, greedy_outputs.shape[1])
    np.testing.assert_array_equal(greedy_outputs, expected)


def _length(tokens):
    """Tokens up to and including the first EOS (all of them without one)."""
    ends = np.flatnonzero(np.asarray(tokens) == EOS)
    return int(ends[0]) + 1 if len(ends) else len(tokens)



# --------------------------------------------------------------------------- beam search


def test_beam_scores_are_teacher_forced_log_probs_over_length_penalty(seq2seq):
    """Wrong cache reordering would decode a hypothesis from another beam's cache."""
    model, params, sources = seq2seq
    alpha, beams, max_length = 0.6, 3, 10

    @jax.jit
    def search(params, sources):
        tokens_to_logits, cache = translate.seq2seq_decoder(model, params, sources, max_length)
        return decoding.beam_search(tokens_to_logits, cache, beam_size=beams,
                                    length_penalty=alpha, bos_id=BOS, eos_id=EOS,
                                    max_length=max_length)
    tokens, reported_log_probs, scores = search(params, sources)
    flat = np.asarray(tokens).reshape(4 * beams, max_length)
    target_input = np.concatenate([np.full((4 * beams, 1), BOS), flat[:, :-1]], axis=1)
    logits = jax.jit(model.apply)({"params": params}, np.repeat(sources, beams, 0),
                                  target_input)
    log_probs = np.asarray(jax.nn.log_softmax(logits.at[..., PAD].set(-jnp.inf)))
    picked = np.take_along_axis(log_probs, flat[..., None], -1)[..., 0]
    lengths = np.array([_length(row) for row in flat])
    totals = np.where(np.arange(max_length) < lengths[:, None], picked, 0).sum(-1)
    expected = totals / ((5 + lengths) / 6) ** alpha
    np.testing.assert_allclose(np.asarray(reported_log_probs).reshape(-1), totals, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(scores).reshape(-1), expected, rtol=1e-4)
    for row in np.asarray(tokens):
        assert len({tuple(hypothesis) for hypothesis in row}) == beams


def _teacher_forced_log_probs(model, params, sources, tokens):
    """log P(tokens | source) [B, N] by one full forward pass (pad masked, up to EOS)."""
    batch, count, length = tokens.shape
    flat = np.asarray(tokens).reshape(batch * count, length)
    target_input = np.concatenate([np.full((batch * count, 1), BOS), flat[:, :-1]], axis=1)
    logits = jax.jit(model.apply)({"params": params}, np.repeat(sources, count, 0),
                                  target_input)
    log_probs = np.asarray(jax.nn.log_softmax(logits.at[..., PAD].set(-jnp.inf)))
    picked = np.take_along_axis(log_probs, flat[..., None], -1)[..., 0]
    return np.where(flat != PAD, picked, 0).sum(-1).reshape(batch, count)


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_reported_log_probs_match_rescoring_by_a_teacher_forced_pass(seq2seq, method):
    """nbest / num_samples hypotheses under min_length and no_repeat_ngram_size: the
    reported log P is the model's (constraints and filters do not renormalise it)."""
    model, params, sources = seq2seq
    config = DecodeConfig(method=method, max_extra_length=6, min_length=3,
                          no_repeat_ngram_size=2, beam_size=4, temperature=1.5, top_k=8,
                          nbest=3 if method == "beam" else 1,
                          num_samples=4 if method == "sample" else 1)
    found = translate.make_translate_fn(model, config, bos_id=BOS, eos_id=EOS)(
        params, sources)
    tokens = np.asarray(found.tokens)
    assert tokens.shape[:2] == (4, {"greedy": 1, "beam": 3, "sample": 4}[method])
    expected = _teacher_forced_log_probs(model, params, sources, tokens)
    # float32 sums of ~12 log-probs of a few nats each: relative to their magnitude.
    np.testing.assert_allclose(found.log_probs, expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())
    lengths = np.sum(tokens != PAD, axis=-1)
    np.testing.assert_allclose(found.scores, expected / ((5 + lengths) / 6) ** 0.6,
                               rtol=1e-4)
    for row in tokens.reshape(-1, tokens.shape[-1]):
        content = [int(token) for token in row[:_length(row)]]
        assert EOS not in content[:3]
        bigrams = list(itertools.pairwise(content))
        assert len(bigrams) == len(set(bigrams))
    if method == "beam":
        assert np.all(np.diff(np.asarray(found.scores), axis=1) <= 0)


def test_beam_size_one_without_penalty_equals_greedy(seq2seq, greedy_outputs):
    model, params, sources = seq2seq
    config = DecodeConfig(method="beam", beam_size=1, length_penalty=0.0,
                          max_extra_length=8)
    beam = translate.make_translate_fn(model, config, bos_id=BOS, eos_id=EOS)(params, sources)
    np.testing.assert_array_equal(beam.tokens[:, 0], greedy_outputs)


# --------------------------------------------------------------------------- files


def test_file_of_many_lengths_compiles_once_per_bucket_and_keeps_input_order(seq2seq):
    model, params, _ = seq2seq
    config = _greedy_config(max_extra_length=4)
    translate_fn = translate.make_translate_fn(model, config, bos_id=BOS, eos_id=EOS)
    rng = np.random.RandomState(2)
    lengths = [*range(1, 17), *range(1, 6), *range(9, 12)]  # 13 and 11 per bucket
    sequences = [rng.randint(4, 32, size=length).tolist() for length in lengths]
    sequences.insert(5, [])
    outputs = translate.translate_all(translate_fn, params, sequences, buckets=(8, 16),
                                      tokens_per_batch=64)
    assert translate_fn._cache_size() == 2
    assert outputs[5].tokens.shape == (1, 0)
    assert sum(np.sum(found.tokens != PAD) for found in outputs) > 80
    # Input order is kept whatever batches the sentences land in, with no new compile.
    reversed_outputs = translate.translate_all(translate_fn, params, sequences[::-1],
                                               buckets=(8, 16), tokens_per_batch=64)
    for found, expected in zip(reversed_outputs, outputs[::-1], strict=True):
        for leaf, expected_leaf in zip(found, expected, strict=True):
            np.testing.assert_array_equal(leaf, expected_leaf)
    assert translate_fn._cache_size() == 2


class _Pieces:
    """A tokenizer stand-in: one id per character, EOS 3."""

    eos_id = EOS

    def encode_batch(self, lines):
        return [[4 + ord(char) % 20 for char in line] for line in lines]


def test_encode_sources_appends_eos_truncates_and_keeps_empty_lines_empty():
    sequences, truncated = translate.encode_sources(_Pieces(), ["ab", "", "abcdef"], 4)
    assert truncated == 1
    assert [len(sequence) for sequence in sequences] == [3, 0, 4]
    assert sequences[0][-1] == sequences[2][-1] == EOS


# --------------------------------------------------------------------------- decoder-only


@pytest.fixture(scope="module")
def language_model():
    model = DecoderOnly(_tiny_config(decoder_layers=1))
    prompts = np.zeros((3, 6), np.int32)
    for row, length in enumerate((3, 6, 1)):
        prompts[row, :length] = np.random.RandomState(row).randint(4, 32, length)
    return model, _random_params(model, prompts, seed=1), prompts


def test_continuation_equals_step_by_step_argmax_of_full_forward(language_model):
    model, params, prompts = language_model
    new_tokens = 7
    continuation = translate.make_continue_fn(model, _greedy_config(), eos_id=EOS,
                                              max_new_tokens=new_tokens)(params, prompts)
    continuation = continuation.tokens[:, 0]
    assert continuation.shape == (3, new_tokens)
    forward = jax.jit(lambda tokens: model.apply({"params": params}, tokens))
    lengths = (prompts != PAD).sum(1)
    buffer = np.zeros((3, prompts.shape[1] + new_tokens), np.int32)
    buffer[:, :prompts.shape[1]] = prompts
    expected = np.full((3, new_tokens), PAD)
    done = np.zeros(3, bool)
    for step in range(new_tokens):
        logits = np.array(forward(buffer))
        logits[..., PAD] = -np.inf
        for row in np.flatnonzero(~done):
            token = logits[row, lengths[row] - 1 + step].argmax()
            buffer[row, lengths[row] + step] = expected[row, step] = token
            done[row] = token == EOS
    np.testing.assert_array_equal(continuation, expected)
    assert len(np.unique(expected)) >= 4


def test_prefill_is_one_model_call_with_no_loop_over_prompt_positions(language_model):
    model, params, prompts = language_model
    _, prompt_to_cache, cache = translate.lm_decoder(model, params, 3, 12)
    calls = []

    def counted(tokens, lengths, cache):
        calls.append(tokens.shape)
        return prompt_to_cache(tokens, lengths, cache)
    lengths = jnp.asarray((prompts != PAD).sum(1), jnp.int32)
    jaxpr = str(jax.make_jaxpr(
        lambda cache: decoding.prefill(counted, cache, prompts, lengths))(cache))
    assert calls == [prompts.shape]
    assert "while" not in jaxpr and "scan" not in jaxpr
    _, filled = decoding.prefill(prompt_to_cache, cache, prompts, lengths)
    np.testing.assert_array_equal(filled["positions"], lengths - 1)


def test_continuation_with_beam_one_agrees_with_greedy(language_model):
    model, params, prompts = language_model
    common = dict(eos_id=EOS, max_new_tokens=7)
    greedy = translate.make_continue_fn(model, _greedy_config(), **common)(params, prompts)
    beam = translate.make_continue_fn(
        model, DecodeConfig(method="beam", beam_size=1, length_penalty=0.0),
        **common)(params, prompts)
    np.testing.assert_array_equal(beam.tokens, greedy.tokens)


# --------------------------------------------------------------------------- attention maps


def test_attention_weights_are_distributions_over_real_source_tokens(seq2seq, greedy_outputs):
    model, params, sources = seq2seq
    maps = _jitted(translate.attention_weights, model, params, sources, greedy_outputs,
                   bos_id=BOS)
    assert [len(maps[name]) for name in ("encoder_self", "decoder_self", "cross")] == [1, 2, 2]
    cross = np.asarray(maps["cross"][1])
    assert cross.shape == (4, 2, greedy_outputs.shape[1], sources.shape[1])
    np.testing.assert_allclose(cross.sum(-1), 1.0, atol=1e-5)
    assert np.all(cross.transpose(0, 3, 1, 2)[np.asarray(sources == PAD)] == 0)


def _favouring(params, chosen):
    """params whose output bias ranks the ids where chosen(ids) is True first (+100)."""
    def bias(path, leaf):
        if not jax.tree_util.keystr(path).endswith("['projection']['bias']"):
            return leaf
        return np.asarray(leaf) + 100.0 * chosen(np.arange(leaf.shape[0]))
    return jax.tree_util.tree_map_with_path(bias, params)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_a_sentence_never_translates_to_nothing(seq2seq, method):
    """EOS is never the first output token, even where the model ranks it first at
    every step (here: a huge EOS bias): the output is one token, then EOS."""
    model, params, sources = seq2seq
    eos_loving = _favouring(params, lambda ids: ids == EOS)
    assert not jax.tree.all(jax.tree.map(np.array_equal, eos_loving, params))
    for min_length in (0, 1, 2):
        found = translate.make_translate_fn(
            model, _greedy_config(method=method, min_length=min_length), bos_id=BOS,
            eos_id=EOS)(eos_loving, sources)
        tokens = np.asarray(found.tokens[:, 0])                              # [B, T]
        first_eos = max(min_length, 1)
        assert np.all(tokens[:, :first_eos] != EOS) and np.all(tokens[:, :first_eos] != PAD)
        assert np.all(tokens[:, first_eos] == EOS), tokens


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_ids_past_the_tokenizers_pieces_are_never_emitted(seq2seq, method):
    """A corpus may give fewer pieces than model.vocab_size (base on number_words: 625 of
    37,000); the rows past them are never trained, and an id from there would decode as
    SentencePiece's " ⁇ ". Here the model ranks them first at every step."""
    model, params, sources = seq2seq
    piece_count = 20
    params = _favouring(params, lambda ids: ids >= piece_count)
    config = _greedy_config(method=method, beam_size=3)
    unmasked = translate.make_translate_fn(model, config, bos_id=BOS, eos_id=EOS)(
        params, sources)
    assert np.any(np.asarray(unmasked.tokens) >= piece_count)        # the test can fail
    found = translate.make_translate_fn(model, config, bos_id=BOS, eos_id=EOS,
                                        piece_count=piece_count)(params, sources)
    tokens = np.asarray(found.tokens)
    assert np.all(tokens < piece_count), tokens
    assert np.all(np.isfinite(np.asarray(found.scores)))
    assert np.all(tokens[:, 0, 0] != PAD)                   # still real translations


# --------------------------------------------------------------------------- scanned layers


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_a_scanned_model_translates_as_its_unrolled_twin(seq2seq, method):
    model, params, sources = seq2seq
    scanned = Transformer(dataclasses.replace(model.config, scan_layers=True))
    stacked = stack_layers(params, model.config)
    config = _greedy_config(method=method, beam_size=3)
    expected = translate.make_translate_fn(model, config, bos_id=BOS, eos_id=EOS)(
        params, sources)
    found = translate.make_translate_fn(scanned, config, bos_id=BOS, eos_id=EOS)(
        stacked, sources)
    np.testing.assert_array_equal(found.tokens, expected.tokens)
    np.testing.assert_allclose(found.scores, expected.scores, rtol=1e-5)
    maps = _jitted(translate.attention_weights, scanned, stacked, sources,
                   found.tokens[:, 0], bos_id=BOS)
    want = _jitted(translate.attention_weights, model, params, sources,
                   expected.tokens[:, 0], bos_id=BOS)
    for name in want:
        assert len(maps[name]) == len(want[name])
        for got, reference in zip(maps[name], want[name], strict=True):
            np.testing.assert_allclose(got, reference, atol=1e-6)


def test_a_scanned_language_model_continues_as_its_unrolled_twin(language_model):
    model, params, prompts = language_model
    scanned = DecoderOnly(dataclasses.replace(model.config, scan_layers=True))
    config = _greedy_config(max_extra_length=6)
    expected = _jitted(translate.continue_prompt, model, params, prompts, config,
                       eos_id=EOS)
    found = _jitted(translate.continue_prompt, scanned, stack_layers(params, model.config),
                    prompts, config, eos_id=EOS)
    np.testing.assert_array_equal(found.tokens, expected.tokens)

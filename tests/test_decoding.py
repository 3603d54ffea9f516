"""Tests of decoding.py: searches against hand-built models and independent references."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_transformer import decoding
from flax_transformer.config import DecodeConfig, get_config
from flax_transformer.model import DecoderOnly, Transformer

PAD, BOS, EOS = 0, 2, 3
A, B, C, D = 4, 5, 6, 7          # the ordinary tokens of the hand-built models
VOCAB = 8


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
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), *inputs)["params"]
    rng = np.random.RandomState(seed)

    def draw(path, leaf):
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
    return decoding.make_translate_fn(model, _greedy_config(), bos_id=BOS, eos_id=EOS)(
        params, sources)


def table_model(log_probs, batch_size):
    """tokens_to_logits reading next-token logits from table[step, previous token]."""
    table = jnp.asarray(log_probs, jnp.float32)                          # [steps, V, V]

    def tokens_to_logits(tokens, cache):
        step = jnp.minimum(cache["step"], table.shape[0] - 1)
        return table[step, tokens], {"step": cache["step"] + 1}
    return tokens_to_logits, {"step": jnp.zeros((batch_size,), jnp.int32)}


def _table(steps, entries):
    """log-prob table [steps, V, V] from {(step, previous): {token: prob}}; rest ~0."""
    table = np.full((steps, VOCAB, VOCAB), np.log(1e-6), np.float32)
    for (step, previous), probs in entries.items():
        for token, prob in probs.items():
            table[step, previous, token] = np.log(prob)
    return table


def _jitted(function, *args, **kwargs):
    """Calls function compiled as a whole (much faster than op by op)."""
    return jax.jit(lambda: function(*args, **kwargs))()


def _log_softmax(row):
    return row - np.log(np.sum(np.exp(row)))


# --------------------------------------------------------------------------- caches


def test_cached_greedy_equals_uncached_and_recomputed_cross(seq2seq, greedy_outputs):
    model, params, sources = seq2seq
    assert len(np.unique(np.asarray(greedy_outputs))) >= 4  # a non-degenerate model
    for caching in ("none", "self_only"):
        fn = decoding.make_translate_fn(model, _greedy_config(), bos_id=BOS, eos_id=EOS,
                                        caching=caching)
        np.testing.assert_array_equal(fn(params, sources), greedy_outputs)


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
        tokens_to_logits, cache = decoding.seq2seq_decoder(model, params, sources, max_length)
        return decoding.beam_search(tokens_to_logits, cache, beam_size=beams,
                                    length_penalty=alpha, bos_id=BOS, eos_id=EOS,
                                    max_length=max_length)
    tokens, scores = search(params, sources)
    flat = np.asarray(tokens).reshape(4 * beams, max_length)
    target_input = np.concatenate([np.full((4 * beams, 1), BOS), flat[:, :-1]], axis=1)
    logits = jax.jit(model.apply)({"params": params}, np.repeat(sources, beams, 0),
                                  target_input)
    log_probs = np.asarray(jax.nn.log_softmax(logits.at[..., PAD].set(-jnp.inf)))
    picked = np.take_along_axis(log_probs, flat[..., None], -1)[..., 0]
    lengths = np.array([_length(row) for row in flat])
    totals = np.where(np.arange(max_length) < lengths[:, None], picked, 0).sum(-1)
    expected = totals / ((5 + lengths) / 6) ** alpha
    np.testing.assert_allclose(np.asarray(scores).reshape(-1), expected, rtol=1e-4)
    for row in np.asarray(tokens):
        assert len({tuple(hypothesis) for hypothesis in row}) == beams


def test_beam_size_one_without_penalty_equals_greedy(seq2seq, greedy_outputs):
    model, params, sources = seq2seq
    config = DecodeConfig(method="beam", beam_size=1, length_penalty=0.0,
                          max_extra_length=8)
    beam = decoding.make_translate_fn(model, config, bos_id=BOS, eos_id=EOS)(params, sources)
    np.testing.assert_array_equal(beam, greedy_outputs)


def test_beam_finds_the_best_sequence_greedy_misses():
    # A then anything: at most 0.6 * 0.3 = 0.18; B then C: 0.4 * 0.9 = 0.36.
    table = _table(3, {(0, BOS): {A: 0.6, B: 0.4},
                       (1, A): {A: 0.3, B: 0.25, C: 0.25, D: 0.2},
                       (1, B): {C: 0.9, D: 0.1},
                       **{(2, token): {EOS: 1.0} for token in (A, B, C, D)}})
    common = dict(bos_id=BOS, eos_id=EOS, max_length=5)
    greedy = _jitted(decoding.greedy_search, *table_model(table, 1), **common)
    tokens, scores = _jitted(decoding.beam_search, *table_model(table, 1), beam_size=2,
                             length_penalty=0.0, **common)
    np.testing.assert_array_equal(greedy[0], [A, A, EOS, PAD, PAD])
    np.testing.assert_array_equal(tokens[0, 0], [B, C, EOS, PAD, PAD])
    np.testing.assert_allclose(scores[0, 0], math.log(0.4 * 0.9), atol=1e-4)


@pytest.mark.parametrize("beam_size", [1, 2])
def test_length_penalty_flips_the_choice_where_the_formula_says(beam_size):
    """Short [EOS] (p 0.55) vs long [A, EOS] (p 0.45): long wins iff alpha > alpha*."""
    table = _table(2, {(0, BOS): {EOS: 0.55, A: 0.45}, (1, A): {EOS: 1.0}})
    short = _log_softmax(table[0, BOS])[EOS]
    long = _log_softmax(table[0, BOS])[A] + _log_softmax(table[1, A])[EOS]
    # long / lp(2) > short / lp(1)  <=>  (7/6)^alpha > long / short
    critical = math.log(long / short) / math.log(7 / 6)
    assert 1.5 < critical < 2.5
    search = jax.jit(lambda alpha: decoding.beam_search(
        *table_model(table, 1), beam_size=beam_size, length_penalty=alpha,
        bos_id=BOS, eos_id=EOS, max_length=6))
    for alpha in (0.0, critical - 0.02, critical + 0.02, 3.0):
        tokens, scores = search(alpha)
        if alpha > critical:
            np.testing.assert_array_equal(tokens[0, 0, :2], [A, EOS])
            np.testing.assert_allclose(scores[0, 0], long / (7 / 6) ** alpha, rtol=1e-5)
        else:
            np.testing.assert_array_equal(tokens[0, 0, :2], [EOS, PAD])
            np.testing.assert_allclose(scores[0, 0], short, rtol=1e-5)


# --------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def bigram():
    """A random Markov chain over VOCAB tokens (no EOS, so rows run to max_length)."""
    logits = np.random.RandomState(1).normal(size=(1, VOCAB, VOCAB)).astype(np.float32)
    logits[..., EOS] = -30.0
    return logits


def test_degenerate_sampling_equals_greedy(bigram):
    common = dict(bos_id=jnp.array([A, B, C, D]), eos_id=EOS, max_length=12)
    greedy = _jitted(decoding.greedy_search, *table_model(bigram, 4), **common)
    assert len(np.unique(np.asarray(greedy))) >= 3
    for options in (dict(top_k=1), dict(top_p=1e-3), dict(temperature=1e-4),
                    dict(top_k=1, temperature=5.0)):
        sampled = _jitted(decoding.sample, *table_model(bigram, 4), jax.random.key(0),
                          **options, **common)
        np.testing.assert_array_equal(sampled, greedy, err_msg=str(options))


def test_same_seed_same_samples_other_seed_other_samples(bigram):
    common = dict(bos_id=A, eos_id=EOS, max_length=16)

    draw_with_key = jax.jit(
        lambda key: decoding.sample(*table_model(bigram, 8), key, **common))

    def draw(seed):
        return draw_with_key(jax.random.key(seed))
    first = draw(0)
    np.testing.assert_array_equal(first, draw(0))
    assert not np.array_equal(first, draw(1))
    assert len({tuple(row) for row in np.asarray(first)}) > 1  # rows draw independently


@pytest.mark.parametrize("options", [dict(temperature=0.7, top_k=3), dict(top_p=0.6)])
def test_sample_frequencies_follow_the_filtered_distribution(options):
    logits = np.array([0.0, 0.5, 1.2, -30.0, 2.0, 1.0, 0.2, -0.5], np.float32)
    logits[PAD] = 9.0  # the most likely token, yet never emitted
    table = np.broadcast_to(logits, (1, VOCAB, VOCAB))
    rows = 20000
    tokens = _jitted(decoding.sample, *table_model(table, rows), jax.random.key(3),
                     bos_id=A, eos_id=EOS, max_length=1, **options)
    frequencies = np.bincount(np.asarray(tokens)[:, 0], minlength=VOCAB) / rows
    expected = _filtered_probs(logits, **options)
    np.testing.assert_allclose(frequencies, expected, atol=0.015)


def _filtered_probs(logits, temperature=1.0, top_k=0, top_p=1.0):
    """Reference: the distribution sampling should follow, written independently."""
    scaled = np.delete(logits, PAD) / temperature
    order = np.argsort(-scaled)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    keep = np.zeros_like(probs, bool)
    mass = 0.0
    for rank, token in enumerate(order):
        if (top_k and rank >= top_k) or mass >= top_p:
            break
        keep[token] = True
        mass += probs[token]
    filtered = np.where(keep, probs, 0.0)
    return np.insert(filtered / filtered.sum(), PAD, 0.0)


def test_filter_logits_top_p_keeps_the_smallest_sufficient_set():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    for top_p, kept in ((0.4, 1), (0.75, 2), (0.85, 3), (0.99, 4)):
        filtered = decoding.filter_logits(jnp.asarray(logits), top_p=top_p)
        assert int(np.isfinite(filtered).sum()) == kept


# --------------------------------------------------------------------------- early exit


def _counting(tokens_to_logits, calls):
    def counted(tokens, cache):
        jax.debug.callback(lambda: calls.append(1), ordered=True)
        return tokens_to_logits(tokens, cache)
    return counted


def test_greedy_stops_when_every_row_has_ended_and_pads_after_eos():
    # Row A ends at once, rows B and C after one more token; EOS is never re-fed.
    table = _table(3, {(0, A): {EOS: 0.9, D: 0.1}, (0, B): {D: 0.9, EOS: 0.1},
                       (0, C): {D: 0.9, EOS: 0.1}, (1, D): {EOS: 0.9, C: 0.1}})
    calls = []
    tokens_to_logits, cache = table_model(table, 3)
    greedy = _jitted(decoding.greedy_search, _counting(tokens_to_logits, calls), cache,
                     bos_id=jnp.array([A, B, C]), eos_id=EOS, max_length=20)
    assert len(calls) == 2
    np.testing.assert_array_equal(greedy, [[EOS] + [PAD] * 19, [D, EOS] + [PAD] * 18,
                                           [D, EOS] + [PAD] * 18])


def test_beam_search_stops_once_no_alive_hypothesis_can_win():
    table = _table(3, {(0, BOS): {A: 0.5, B: 0.5},
                       **{(1, token): {EOS: 0.98, C: 0.02} for token in (A, B)}})
    calls = []
    tokens_to_logits, cache = table_model(table, 3)
    tokens, _ = _jitted(decoding.beam_search, _counting(tokens_to_logits, calls), cache,
                        beam_size=2, length_penalty=0.6, bos_id=BOS, eos_id=EOS,
                        max_length=20)
    # Two finished after step 2; no alive hypothesis can catch up however long it runs.
    assert len(calls) == 2
    assert {tuple(row[:3]) for row in np.asarray(tokens[0])} == {(A, EOS, PAD), (B, EOS, PAD)}


def test_beam_size_one_finishes_only_the_top_candidate_like_greedy():
    """[EOS] (0.4) beats greedy's [A, B, EOS] (0.33) but is never the best extension."""
    table = _table(3, {(0, BOS): {A: 0.6, EOS: 0.4}, (1, A): {B: 0.55, C: 0.45},
                       (2, B): {EOS: 1.0}})
    common = dict(bos_id=BOS, eos_id=EOS, max_length=5)
    greedy = _jitted(decoding.greedy_search, *table_model(table, 1), **common)
    tokens, _ = _jitted(decoding.beam_search, *table_model(table, 1), beam_size=1,
                        length_penalty=0.0, **common)
    np.testing.assert_array_equal(greedy[0], [A, B, EOS, PAD, PAD])
    np.testing.assert_array_equal(tokens[0, 0], greedy[0])


def test_beam_keeps_searching_while_a_longer_hypothesis_can_still_win():
    """Pool full after step 1 with [EOS], but [A, A, A, EOS] scores higher at alpha 3."""
    table = _table(4, {(0, BOS): {EOS: 0.5, A: 0.5}, (1, A): {A: 0.9, EOS: 0.1},
                       (2, A): {A: 0.9, EOS: 0.1}, (3, A): {EOS: 1.0}})
    tokens, _ = _jitted(decoding.beam_search, *table_model(table, 1), beam_size=1,
                        length_penalty=3.0, bos_id=BOS, eos_id=EOS, max_length=8)
    np.testing.assert_array_equal(tokens[0, 0, :5], [A, A, A, EOS, PAD])


def test_beam_ranks_finished_hypotheses_before_ones_cut_at_max_length():
    table = _table(2, {(0, BOS): {A: 0.85, EOS: 0.1, B: 0.05}, (1, A): {C: 0.99, EOS: 0.01},
                       (1, B): {C: 1.0}})
    tokens, scores = _jitted(decoding.beam_search, *table_model(table, 1), beam_size=2,
                             length_penalty=0.0, bos_id=BOS, eos_id=EOS, max_length=2)
    np.testing.assert_array_equal(tokens[0], [[EOS, PAD], [A, C]])
    np.testing.assert_allclose(scores[0], np.log([0.1, 0.85 * 0.99]), atol=1e-4)


# --------------------------------------------------------------------------- buckets


def test_bucket_length_and_default_buckets():
    assert decoding.default_buckets(40) == (8, 16, 32, 40)
    assert [decoding.bucket_length(n, (8, 16)) for n in (1, 8, 9, 16)] == [8, 8, 16, 16]
    with pytest.raises(ValueError, match="longer than the largest bucket"):
        decoding.bucket_length(17, (8, 16))


def test_bucket_batches_fixed_shape_per_bucket_and_every_sequence_once():
    sequences = [[5] * n for n in (3, 12, 0, 7, 1, 16, 9, 2)]
    batches = list(decoding.bucket_batches(sequences, (8, 16), tokens_per_batch=32))
    # Bucket 8 holds 4 sequences (budget 32 // 8 = 4 rows): one batch. Bucket 16 holds 3
    # (budget 2 rows): two batches of 2 rows, the second with a filler row.
    assert [batch.tokens.shape for batch in batches] == [(4, 8), (2, 16), (2, 16)]
    seen = np.concatenate([batch.indices[batch.indices >= 0] for batch in batches])
    assert sorted(seen.tolist()) == [0, 1, 3, 4, 5, 6, 7]  # the empty sequence is skipped
    for batch in batches:
        for index, row in zip(batch.indices, batch.tokens, strict=True):
            expected = sequences[index] if index >= 0 else []
            np.testing.assert_array_equal(row[:len(expected)], expected)
            assert np.all(row[len(expected):] == PAD)


def test_file_of_many_lengths_compiles_once_per_bucket(seq2seq):
    model, params, _ = seq2seq
    config = _greedy_config(max_extra_length=4)
    translate_fn = decoding.make_translate_fn(model, config, bos_id=BOS, eos_id=EOS)
    rng = np.random.RandomState(2)
    lengths = [*range(1, 17), *range(1, 6), *range(9, 12)]  # 13 and 11 per bucket
    sequences = [rng.randint(4, 32, size=length).tolist() for length in lengths]
    sequences.insert(5, [])
    outputs = decoding.translate_all(translate_fn, params, sequences, buckets=(8, 16),
                                     tokens_per_batch=64, eos_id=EOS)
    assert translate_fn._cache_size() == 2
    assert outputs[5] == [] and sum(len(output) for output in outputs) > 80
    # Input order is kept whatever batches the sentences land in, with no new compile.
    reversed_outputs = decoding.translate_all(translate_fn, params, sequences[::-1],
                                              buckets=(8, 16), tokens_per_batch=64, eos_id=EOS)
    assert reversed_outputs == outputs[::-1]
    assert translate_fn._cache_size() == 2


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
    continuation = decoding.make_continue_fn(model, _greedy_config(), eos_id=EOS,
                                             max_new_tokens=new_tokens)(params, prompts)
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


def test_continuation_uncached_and_beam_one_agree_with_cached(language_model):
    model, params, prompts = language_model
    common = dict(eos_id=EOS, max_new_tokens=7)
    cached = decoding.make_continue_fn(model, _greedy_config(), **common)(params, prompts)
    uncached = decoding.make_continue_fn(model, _greedy_config(), caching="none",
                                         **common)(params, prompts)
    beam = decoding.make_continue_fn(
        model, DecodeConfig(method="beam", beam_size=1, length_penalty=0.0),
        **common)(params, prompts)
    np.testing.assert_array_equal(uncached, cached)
    np.testing.assert_array_equal(beam, cached)


# --------------------------------------------------------------------------- attention maps


def test_attention_weights_are_distributions_over_real_source_tokens(seq2seq, greedy_outputs):
    model, params, sources = seq2seq
    maps = _jitted(decoding.attention_weights, model, params, sources, greedy_outputs,
                   bos_id=BOS)
    assert [len(maps[name]) for name in ("encoder_self", "decoder_self", "cross")] == [1, 2, 2]
    cross = np.asarray(maps["cross"][1])
    assert cross.shape == (4, 2, greedy_outputs.shape[1], sources.shape[1])
    np.testing.assert_allclose(cross.sum(-1), 1.0, atol=1e-5)
    assert np.all(cross.transpose(0, 3, 1, 2)[np.asarray(sources == PAD)] == 0)

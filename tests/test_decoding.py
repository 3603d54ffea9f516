"""Tests of decoding.py: searches against hand-built models and independent references.

The searches over a real Transformer / DecoderOnly are in test_translate.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_transformer import decoding
from flax_transformer.config import DecodeConfig

PAD, BOS, EOS = 0, 2, 3
A, B, C, D = 4, 5, 6, 7          # the ordinary tokens of the hand-built models
VOCAB = 8


# --------------------------------------------------------------------------- fixtures


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


# --------------------------------------------------------------------------- beam search


def test_beam_finds_the_best_sequence_greedy_misses():
    # A then anything: at most 0.6 * 0.3 = 0.18; B then C: 0.4 * 0.9 = 0.36.
    table = _table(3, {(0, BOS): {A: 0.6, B: 0.4},
                       (1, A): {A: 0.3, B: 0.25, C: 0.25, D: 0.2},
                       (1, B): {C: 0.9, D: 0.1},
                       **{(2, token): {EOS: 1.0} for token in (A, B, C, D)}})
    common = dict(bos_id=BOS, eos_id=EOS, max_length=5)
    greedy, _, _ = _jitted(decoding.greedy_search, *table_model(table, 1), **common)
    tokens, _, scores = _jitted(decoding.beam_search, *table_model(table, 1), beam_size=2,
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
        tokens, _, scores = search(alpha)
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
    greedy, _, _ = _jitted(decoding.greedy_search, *table_model(bigram, 4), **common)
    assert len(np.unique(np.asarray(greedy))) >= 3
    for options in (dict(top_k=1), dict(top_p=1e-3), dict(temperature=1e-4),
                    dict(top_k=1, temperature=5.0)):
        sampled, _, _ = _jitted(decoding.sample, *table_model(bigram, 4), jax.random.key(0),
                                **options, **common)
        np.testing.assert_array_equal(sampled, greedy, err_msg=str(options))


def test_same_seed_same_samples_other_seed_other_samples(bigram):
    common = dict(bos_id=A, eos_id=EOS, max_length=16)

    draw_with_key = jax.jit(
        lambda key: decoding.sample(*table_model(bigram, 8), key, **common))

    def draw(seed):
        return draw_with_key(jax.random.key(seed)).tokens
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
    tokens, _, _ = _jitted(decoding.sample, *table_model(table, rows), jax.random.key(3),
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
    greedy, _, _ = _jitted(decoding.greedy_search, _counting(tokens_to_logits, calls), cache,
                           bos_id=jnp.array([A, B, C]), eos_id=EOS, max_length=20)
    assert len(calls) == 2
    np.testing.assert_array_equal(greedy, [[EOS] + [PAD] * 19, [D, EOS] + [PAD] * 18,
                                           [D, EOS] + [PAD] * 18])


def test_beam_search_stops_once_no_alive_hypothesis_can_win():
    table = _table(3, {(0, BOS): {A: 0.5, B: 0.5},
                       **{(1, token): {EOS: 0.98, C: 0.02} for token in (A, B)}})
    calls = []
    tokens_to_logits, cache = table_model(table, 3)
    tokens, _, _ = _jitted(decoding.beam_search, _counting(tokens_to_logits, calls), cache,
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
    greedy, _, _ = _jitted(decoding.greedy_search, *table_model(table, 1), **common)
    tokens, _, _ = _jitted(decoding.beam_search, *table_model(table, 1), beam_size=1,
                           length_penalty=0.0, **common)
    np.testing.assert_array_equal(greedy[0], [A, B, EOS, PAD, PAD])
    np.testing.assert_array_equal(tokens[0, 0], greedy[0])


def test_beam_keeps_searching_while_a_longer_hypothesis_can_still_win():
    """Pool full after step 1 with [EOS], but [A, A, A, EOS] scores higher at alpha 3."""
    table = _table(4, {(0, BOS): {EOS: 0.5, A: 0.5}, (1, A): {A: 0.9, EOS: 0.1},
                       (2, A): {A: 0.9, EOS: 0.1}, (3, A): {EOS: 1.0}})
    tokens, _, _ = _jitted(decoding.beam_search, *table_model(table, 1), beam_size=1,
                           length_penalty=3.0, bos_id=BOS, eos_id=EOS, max_length=8)
    np.testing.assert_array_equal(tokens[0, 0, :5], [A, A, A, EOS, PAD])


def test_beam_ranks_finished_hypotheses_before_ones_cut_at_max_length():
    table = _table(2, {(0, BOS): {A: 0.85, EOS: 0.1, B: 0.05}, (1, A): {C: 0.99, EOS: 0.01},
                       (1, B): {C: 1.0}})
    tokens, _, scores = _jitted(decoding.beam_search, *table_model(table, 1), beam_size=2,
                                length_penalty=0.0, bos_id=BOS, eos_id=EOS, max_length=2)
    np.testing.assert_array_equal(tokens[0], [[EOS, PAD], [A, C]])
    np.testing.assert_allclose(scores[0], np.log([0.1, 0.85 * 0.99]), atol=1e-4)


# --------------------------------------------------------------------------- prefill, dispatch


def test_prefill_feeds_every_prompt_but_its_last_token_in_one_call():
    prompts = jnp.array([[A, B, C], [D, PAD, PAD], [B, A, PAD]])
    calls = []

    def prompt_to_cache(tokens, lengths, cache):
        calls.append((np.asarray(tokens), np.asarray(lengths)))
        return {"fed": cache["fed"] + lengths}
    last, cache = decoding.prefill(prompt_to_cache, {"fed": jnp.zeros(3, jnp.int32)},
                                   prompts, jnp.array([3, 1, 2]))
    assert len(calls) == 1
    np.testing.assert_array_equal(calls[0][0], prompts)
    np.testing.assert_array_equal(calls[0][1], [2, 0, 1])
    np.testing.assert_array_equal(last, [C, D, A])
    np.testing.assert_array_equal(cache["fed"], [2, 0, 1])


def test_search_dispatches_on_the_configs_method():
    table = _table(3, {(0, BOS): {A: 0.6, B: 0.4},
                       (1, A): {A: 0.3, B: 0.25, C: 0.25, D: 0.2},
                       (1, B): {C: 0.9, D: 0.1},
                       **{(2, token): {EOS: 1.0} for token in (A, B, C, D)}})
    common = dict(bos_id=BOS, eos_id=EOS, max_length=5)
    greedy = _jitted(decoding.search, *table_model(table, 1),
                     DecodeConfig(method="greedy"), **common)
    beam = _jitted(decoding.search, *table_model(table, 1),
                   DecodeConfig(method="beam", beam_size=2, length_penalty=0.0), **common)
    sampled = _jitted(decoding.search, *table_model(table, 1),
                      DecodeConfig(method="sample", top_k=1), **common)
    assert greedy.tokens.shape == beam.tokens.shape == sampled.tokens.shape == (1, 1, 5)
    np.testing.assert_array_equal(greedy.tokens[0, 0], [A, A, EOS, PAD, PAD])
    np.testing.assert_array_equal(beam.tokens[0, 0], [B, C, EOS, PAD, PAD])
    np.testing.assert_array_equal(sampled.tokens, greedy.tokens)


# --------------------------------------------------------------------------- constraints


def _ngrams_repeat(row, n):
    row = [int(token) for token in row if token != PAD]
    grams = [tuple(row[i:i + n]) for i in range(len(row) - n + 1)]
    return len(grams) != len(set(grams))


def _searches(decode_config_changes):
    """greedy, beam (nbest 1) and sample of decoding.search on the bigram chain."""
    methods = {"greedy": {}, "beam": dict(beam_size=3), "sample": dict(seed=1)}
    return {method: DecodeConfig(method=method, **extra, **decode_config_changes)
            for method, extra in methods.items()}


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_no_repeat_ngram_size_holds_in_every_search(bigram, method):
    common = dict(bos_id=jnp.array([A, B, C, D]), eos_id=EOS, max_length=12)
    unconstrained = _jitted(decoding.search, *table_model(bigram, 4),
                            _searches({})[method], **common).tokens[:, 0]
    assert any(_ngrams_repeat(row, 2) for row in np.asarray(unconstrained))
    for n in (2, 3):
        found = _jitted(decoding.search, *table_model(bigram, 4),
                        _searches(dict(no_repeat_ngram_size=n))[method], **common)
        for row in np.asarray(found.tokens[:, 0]):
            assert not _ngrams_repeat(row, n), (n, row)
            assert row[-1] != PAD  # the chain has no EOS: rows still fill every slot


@pytest.fixture
def eos_first():
    """EOS is the likeliest token everywhere (p 0.7); A, B, C, D share the rest."""
    table = np.full((1, VOCAB, VOCAB), np.log(0.3 / 4), np.float32)
    table[..., EOS] = np.log(0.7)
    table[..., PAD] = table[..., BOS] = np.log(1e-6)
    return table


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_min_length_forbids_eos_before_it_in_every_search(eos_first, method):
    common = dict(bos_id=BOS, eos_id=EOS, max_length=8)
    free = _jitted(decoding.search, *table_model(eos_first, 4), _searches({})[method],
                   **common)
    assert np.all(np.asarray(free.tokens[:, 0, 0]) == EOS) or method == "sample"
    for min_length in (1, 3):
        found = _jitted(decoding.search, *table_model(eos_first, 4),
                        _searches(dict(min_length=min_length))[method], **common)
        tokens = np.asarray(found.tokens[:, 0])
        assert np.all(tokens[:, :min_length] != EOS), tokens
        assert np.all(tokens[:, :min_length] != PAD), tokens
        if method != "sample":
            assert np.all(tokens[:, min_length] == EOS)  # then EOS wins again


@pytest.mark.parametrize("method", ["greedy", "sample"])
def test_a_row_the_rules_leave_no_token_ends_with_eos_instead_of_emitting_pad(
        eos_first, method):
    # n = 1 bans every token once written; min_length 10 bans EOS: after the 6 other
    # tokens (1, BOS, A, B, C, D) nothing is allowed, so the row ends.
    config = _searches(dict(min_length=10, no_repeat_ngram_size=1))[method]
    found = _jitted(decoding.search, *table_model(eos_first, 2), config, bos_id=BOS,
                    eos_id=EOS, max_length=12)
    for row in np.asarray(found.tokens[:, 0]):
        assert sorted(row[:6]) == [1, BOS, A, B, C, D] and row[6] == EOS
        assert np.all(row[7:] == PAD)


def _table_log_prob(table, start, tokens):
    """log P(tokens | start) read from a table model (pad masked), up to the first EOS."""
    total, previous = 0.0, start
    for step, token in enumerate(tokens):
        if token == PAD:
            break
        row = np.array(table[min(step, table.shape[0] - 1), previous], np.float64)
        row[PAD] = -np.inf
        total += (row - np.log(np.sum(np.exp(row))))[token]
        previous = token
    return total


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_reported_log_probs_and_scores_are_the_models(bigram, method):
    """log_probs = the table's log P of the tokens, also under constraints; scores =
    log_probs / GNMT lp(|Y|); beam's nbest come best first."""
    changes = dict(length_penalty=0.6, no_repeat_ngram_size=2, min_length=2)
    changes.update(nbest=3 if method == "beam" else 1,
                   num_samples=3 if method == "sample" else 1)
    table = bigram.copy()
    table[..., EOS] = -1.0  # EOS possible, so that lengths differ
    starts = [A, B, C, D]
    found = _jitted(decoding.search, *table_model(table, 4),
                    _searches(changes)[method], bos_id=jnp.array(starts), eos_id=EOS,
                    max_length=10)
    count = 1 if method == "greedy" else 3
    assert found.tokens.shape == (4, count, 10) and found.scores.shape == (4, count)
    lengths = np.sum(np.asarray(found.tokens) != PAD, axis=-1)
    for row, start in enumerate(starts):
        for index in range(count):
            expected = _table_log_prob(table, start, np.asarray(found.tokens[row, index]))
            np.testing.assert_allclose(found.log_probs[row, index], expected,
                                       rtol=1e-5, atol=1e-5 * abs(expected))
    np.testing.assert_allclose(found.scores,
                               found.log_probs / ((5 + lengths) / 6) ** 0.6, rtol=1e-6)
    if method == "beam":
        assert np.all(np.diff(np.asarray(found.scores), axis=1) <= 0)
        whole = _jitted(decoding.beam_search, *table_model(table, 4), beam_size=3,
                        length_penalty=0.6, bos_id=jnp.array(starts), eos_id=EOS,
                        max_length=10, constraints=decoding.Constraints(2, 2))
        np.testing.assert_array_equal(found.tokens, whole.tokens)


def test_num_samples_draws_independent_reproducible_samples_per_input(bigram):
    config = DecodeConfig(method="sample", num_samples=5, seed=3)
    common = dict(bos_id=jnp.array([A, B]), eos_id=EOS, max_length=12)
    first = _jitted(decoding.search, *table_model(bigram, 2), config, **common)
    again = _jitted(decoding.search, *table_model(bigram, 2), config, **common)
    other = _jitted(decoding.search, *table_model(bigram, 2),
                    DecodeConfig(method="sample", num_samples=5, seed=4), **common)
    assert first.tokens.shape == (2, 5, 12)
    np.testing.assert_array_equal(first.tokens, again.tokens)
    assert not np.array_equal(first.tokens, other.tokens)
    for row, start in zip(np.asarray(first.tokens), (A, B), strict=True):
        assert len({tuple(sample) for sample in row}) > 1
        # Each sample continues its own input: the chain's first step from that start.
        assert all(bigram[0, start, sample[0]] > -30 for sample in row)
    one = _jitted(decoding.search, *table_model(bigram, 2),
                  DecodeConfig(method="sample", seed=3), **common)
    assert one.tokens.shape == (2, 1, 12)

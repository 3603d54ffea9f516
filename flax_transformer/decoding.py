"""Searching for outputs: greedy, beam search and sampling over one model interface.

Every search takes ``tokens_to_logits(tokens int [B], cache) -> (logits float [B, V],
cache)``, where the cache is a pytree whose leaves all have the batch as leading axis
(beam search gathers them along it). The searches are pure functions whose loops are
``lax.while_loop`` over fixed-size buffers that stop as soon as every row is done.

Conventions shared by every search:

* outputs exclude the start token (BOS, or the last prompt token), include EOS, and hold
  ``pad_id`` after it; a row that never emits EOS fills all ``max_length`` slots;
* ``pad_id`` is never emitted (its logit is masked), so padding keeps meaning "nothing";
* ``bos_id`` is an int, or int [B] with one start token per row;
* every search returns ``Hypotheses`` (tokens, log-probabilities, GNMT scores) and
  applies ``Constraints`` (min_length, no_repeat_ngram_size): see ``search_rules.py``,
  which also holds sampling's ``filter_logits``.

This module holds search only: ``translate.py`` turns a Transformer or DecoderOnly and
its params into ``tokens_to_logits`` and runs these searches over files of sentences.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from flax_transformer.config import DecodeConfig
from flax_transformer.search_rules import (
    Constraints,
    Hypotheses,
    constrain,
    filter_logits,
    forbid,
    gnmt_length_penalty,
    normalised_scores,
)

Array = jnp.ndarray
Cache = Any
TokensToLogits = Callable[[Array, Cache], tuple[Array, Cache]]
PromptToCache = Callable[[Array, Array, Cache], Cache]

NEG_INF = -1.0e7  # finite "minus infinity" of beam scores: no inf - inf = NaN anywhere


def _batch_size(cache: Cache) -> int:
    return jax.tree.leaves(cache)[0].shape[0]


def _start_tokens(bos_id: int | Array, batch_size: int) -> Array:
    """int [B] start tokens from a scalar BOS id or a per-row array."""
    return jnp.broadcast_to(jnp.asarray(bos_id, jnp.int32), (batch_size,))


# --------------------------------------------------------------------------- greedy, sampling


def _token_by_token(tokens_to_logits: TokensToLogits, cache: Cache,
                    choose: Callable[[Array, Array], Array], *, bos_id: int | Array,
                    eos_id: int, max_length: int, pad_id: int, length_penalty: float,
                    constraints: Constraints) -> Hypotheses:
    """The loop shared by greedy search and sampling: one chosen token per row and step.

    ``choose(logits [B, V], step) -> int [B]`` sees logits with ``pad_id`` masked and the
    constraints applied (where they forbid every token, EOS is allowed: the row ends);
    the log-probability is the model's, before both.
    """
    start = _start_tokens(bos_id, _batch_size(cache))
    batch = start.shape[0]
    outputs = jnp.full((batch, max_length), pad_id, jnp.int32)             # [B, T]
    initial = (jnp.int32(0), start, jnp.zeros((batch,), bool), outputs,
               jnp.zeros((batch,), jnp.float32), cache)

    def not_done(state):
        step, _, finished, _, _, _ = state
        return (step < max_length) & ~jnp.all(finished)

    def step_fn(state):
        step, last, finished, outputs, log_probs, cache = state
        logits, cache = tokens_to_logits(last, cache)
        logits = forbid(logits.astype(jnp.float32), pad_id)
        allowed = constrain(logits, outputs, step, constraints, eos_id=eos_id,
                            value=-jnp.inf)
        if constraints != Constraints():  # a row the rules leave no token ends instead
            stuck = jnp.all(allowed == -jnp.inf, axis=-1, keepdims=True)       # [B, 1]
            allowed = jnp.where(stuck & (jnp.arange(logits.shape[-1]) == eos_id), logits,
                                allowed)
        chosen = choose(allowed, step).astype(jnp.int32)
        chosen = jnp.where(finished, pad_id, chosen)
        chosen_log_p = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1),
                                           chosen[:, None], axis=-1)[:, 0]  # [B]
        log_probs += jnp.where(finished, 0.0, chosen_log_p)
        outputs = lax.dynamic_update_slice(outputs, chosen[:, None], (0, step))
        return step + 1, chosen, finished | (chosen == eos_id), outputs, log_probs, cache

    _, _, _, outputs, log_probs, _ = lax.while_loop(not_done, step_fn, initial)
    return Hypotheses(outputs, log_probs,
                      normalised_scores(outputs, log_probs, length_penalty, pad_id))


def greedy_search(tokens_to_logits: TokensToLogits, cache: Cache, *, bos_id: int | Array,
                  eos_id: int, max_length: int, pad_id: int = 0, length_penalty: float = 0.0,
                  constraints: Constraints = Constraints()) -> Hypotheses:
    """The most likely next token at every step.

    Args:
      tokens_to_logits: the model, ``(tokens int [B], cache) -> (logits [B, V], cache)``.
      cache: its initial cache (leaves [B, ...]).
      bos_id: start token, int or int [B].
      eos_id: end token; a row stops after emitting it.
      max_length: T, most output tokens per row.
      pad_id: written after EOS; never emitted.
      length_penalty: alpha of the reported scores only (the search ignores it).
      constraints: min_length and no_repeat_ngram_size.

    Returns:
      Hypotheses: tokens int [B, T] without the start token, with EOS, pad after EOS;
      log_probs and scores float [B].
    """
    def choose(logits, step):
        del step
        return jnp.argmax(logits, axis=-1)
    return _token_by_token(tokens_to_logits, cache, choose, bos_id=bos_id, eos_id=eos_id,
                           max_length=max_length, pad_id=pad_id,
                           length_penalty=length_penalty, constraints=constraints)


def sample(tokens_to_logits: TokensToLogits, cache: Cache, rng: Array, *,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           bos_id: int | Array, eos_id: int, max_length: int, pad_id: int = 0,
           length_penalty: float = 0.0,
           constraints: Constraints = Constraints()) -> Hypotheses:
    """Ancestral sampling from the filtered next-token distribution (see filter_logits).

    The constraints remove tokens before the filters. The key of step t is
    ``fold_in(rng, t)``: the same rng gives the same samples. The reported log_probs are
    the model's (unfiltered log-softmax), not those of the distribution sampled from.

    Returns:
      Hypotheses laid out as greedy_search's.
    """
    def choose(logits, step):
        filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
        return jax.random.categorical(jax.random.fold_in(rng, step), filtered, axis=-1)
    return _token_by_token(tokens_to_logits, cache, choose, bos_id=bos_id, eos_id=eos_id,
                           max_length=max_length, pad_id=pad_id,
                           length_penalty=length_penalty, constraints=constraints)


# --------------------------------------------------------------------------- beam search


def expand_beams(cache: Cache, beam_size: int) -> Cache:
    """Repeats every leaf [B, ...] -> [B·W, ...]; row b·W + w is beam w of example b."""
    return jax.tree.map(lambda leaf: jnp.repeat(leaf, beam_size, axis=0), cache)


def _gather_beams(values: Array, indices: Array) -> Array:
    """values [B, N, ...], indices int [B, M] -> [B, M, ...]."""
    return jax.vmap(lambda row, row_indices: row[row_indices])(values, indices)


def _reorder_cache(cache: Cache, beam_indices: Array) -> Cache:
    """Each beam of the new cache [B·W, ...] copies the beam it extends (beam_indices [B, W])."""
    batch, beams = beam_indices.shape
    flat = (jnp.arange(batch)[:, None] * beams + beam_indices).reshape(-1)  # [B·W]
    return jax.tree.map(lambda leaf: jnp.take(leaf, flat, axis=0), cache)


class BeamState(NamedTuple):
    """Loop state of beam search: W alive hypotheses and a pool of W finished ones."""

    step: Array              # int [], output position written next
    last_tokens: Array       # int [B, W], fed to the model next
    alive_tokens: Array      # int [B, W, T], hypotheses without EOS
    alive_log_probs: Array   # float [B, W], log P of each alive hypothesis
    finished_tokens: Array   # int [B, W, T], hypotheses ending in EOS, best first
    finished_scores: Array   # float [B, W], log P / lp, NEG_INF for an empty slot
    finished_log_probs: Array  # float [B, W], log P of each finished hypothesis
    finished_flags: Array    # bool [B, W], slot holds a hypothesis
    cache: Cache             # leaves [B·W, ...]


def _initial_beam_state(start: Array, cache: Cache, beam_size: int, max_length: int,
                        pad_id: int) -> BeamState:
    batch = start.shape[0]
    tokens = jnp.full((batch, beam_size, max_length), pad_id, jnp.int32)
    # Only beam 0 is live at first: the W copies of the start would fill the beam with
    # duplicates otherwise.
    first_beam = jnp.where(jnp.arange(beam_size) == 0, 0.0, NEG_INF)
    return BeamState(
        step=jnp.int32(0),
        last_tokens=jnp.repeat(start[:, None], beam_size, axis=1),
        alive_tokens=tokens,
        alive_log_probs=jnp.broadcast_to(first_beam, (batch, beam_size)),
        finished_tokens=tokens,
        finished_scores=jnp.full((batch, beam_size), NEG_INF),
        finished_log_probs=jnp.full((batch, beam_size), NEG_INF),
        finished_flags=jnp.zeros((batch, beam_size), bool),
        cache=expand_beams(cache, beam_size))


def _beam_not_done(state: BeamState, *, alpha: float, max_length: int) -> Array:
    """True while some row's alive hypotheses could still enter its finished pool.

    Log-probabilities only fall as a hypothesis grows and lp only rises with length, so
    the best score an alive hypothesis can ever reach is log P_now / lp(max_length).
    A row is done once its pool is full and its worst finished score is at least that
    (alpha ≥ 0, as DecodeConfig enforces).
    """
    longest = gnmt_length_penalty(max_length, alpha)
    best_possible = jnp.max(state.alive_log_probs, axis=-1) / longest                # [B]
    worst_finished = jnp.min(jnp.where(state.finished_flags, state.finished_scores, NEG_INF),
                             axis=-1)
    row_done = jnp.all(state.finished_flags, axis=-1) & (worst_finished >= best_possible)
    return (state.step < max_length) & ~jnp.all(row_done)


def _beam_candidates(state: BeamState, log_probs: Array) -> tuple[Array, ...]:
    """The 2W best one-token extensions of the alive hypotheses, best first.

    Returns:
      log_probs [B, 2W], beam indices [B, 2W], tokens [B, 2W], sequences [B, 2W, T].
    """
    batch, beams, vocab = log_probs.shape
    totals = (state.alive_log_probs[:, :, None] + log_probs).reshape(batch, beams * vocab)
    candidate_log_probs, flat = lax.top_k(totals, 2 * beams)                 # [B, 2W]
    beam_indices, tokens = flat // vocab, flat % vocab
    sequences = _gather_beams(state.alive_tokens, beam_indices)               # [B, 2W, T]
    sequences = lax.dynamic_update_slice(
        sequences, tokens[:, :, None].astype(jnp.int32), (0, 0, state.step))
    return candidate_log_probs, beam_indices, tokens, sequences


def _beam_step(state: BeamState, *, tokens_to_logits: TokensToLogits, alpha: float,
               eos_id: int, pad_id: int, constraints: Constraints) -> BeamState:
    """Extends every alive hypothesis by one token; EOS endings move to the finished pool.

    As in the textbook (and fairseq), the step keeps the W best extensions: those of them
    that end in EOS are finished, and the beam is refilled with the best non-EOS ones from
    the 2W candidates. So beam size 1 with alpha = 0 is exactly greedy search.
    """
    batch, beams = state.last_tokens.shape
    logits, cache = tokens_to_logits(state.last_tokens.reshape(-1), state.cache)
    logits = forbid(logits.astype(jnp.float32), pad_id, NEG_INF)
    log_probs = constrain(jax.nn.log_softmax(logits, axis=-1),
                          state.alive_tokens.reshape(batch * beams, -1), state.step,
                          constraints, eos_id=eos_id, value=NEG_INF)
    log_probs = log_probs.reshape(batch, beams, -1)                           # [B, W, V]
    log_p, beam_indices, tokens, sequences = _beam_candidates(state, log_probs)
    is_eos = tokens == eos_id

    alive = lax.top_k(jnp.where(is_eos, NEG_INF + log_p, log_p), beams)[1]  # [B, W]
    ends = is_eos & (jnp.arange(2 * beams) < beams) & (log_p > NEG_INF / 2)
    new_scores = jnp.where(ends, log_p / gnmt_length_penalty(state.step + 1, alpha), NEG_INF)
    pool_scores = jnp.concatenate([state.finished_scores, new_scores], axis=1)  # [B, 3W]
    pool = lax.top_k(pool_scores, beams)[1]                                    # [B, W]
    return BeamState(
        step=state.step + 1,
        last_tokens=_gather_beams(tokens, alive).astype(jnp.int32),
        alive_tokens=_gather_beams(sequences, alive),
        alive_log_probs=_gather_beams(log_p, alive),
        finished_tokens=_gather_beams(
            jnp.concatenate([state.finished_tokens, sequences], axis=1), pool),
        finished_scores=_gather_beams(pool_scores, pool),
        finished_log_probs=_gather_beams(
            jnp.concatenate([state.finished_log_probs, log_p], axis=1), pool),
        finished_flags=_gather_beams(
            jnp.concatenate([state.finished_flags, ends], axis=1), pool),
        cache=_reorder_cache(cache, _gather_beams(beam_indices, alive)))


def _best_first(state: BeamState, *, alpha: float, max_length: int) -> Hypotheses:
    """Finished hypotheses best first; slots a row could not fill take alive ones.

    An alive hypothesis at the end ran out of room (max_length tokens, no EOS); it is
    scored as log P / lp(max_length) but ranks below every finished hypothesis.
    """
    alive_scores = state.alive_log_probs / gnmt_length_penalty(max_length, alpha)
    ranking = jnp.concatenate([
        jnp.where(state.finished_flags, state.finished_scores, 4 * NEG_INF),
        alive_scores + 2 * NEG_INF], axis=1)                                  # [B, 2W]
    best = lax.top_k(ranking, state.alive_log_probs.shape[1])[1]              # [B, W]
    scores = jnp.concatenate([state.finished_scores, alive_scores], axis=1)
    log_probs = jnp.concatenate([state.finished_log_probs, state.alive_log_probs], axis=1)
    tokens = jnp.concatenate([state.finished_tokens, state.alive_tokens], axis=1)
    return Hypotheses(_gather_beams(tokens, best), _gather_beams(log_probs, best),
                      _gather_beams(scores, best))


def beam_search(tokens_to_logits: TokensToLogits, cache: Cache, *, beam_size: int,
                length_penalty: float = 0.6, bos_id: int | Array, eos_id: int,
                max_length: int, pad_id: int = 0,
                constraints: Constraints = Constraints()) -> Hypotheses:
    """Beam search with the GNMT length penalty and a separate pool of finished hypotheses.

    Args:
      tokens_to_logits: the model; it is called on B·W rows, so the cache is expanded to
        [B·W, ...] (row b·W + w = beam w of example b) and reordered by a gather along
        the leading axis after every step.
      cache: the initial cache, leaves [B, ...].
      beam_size: W.
      length_penalty: alpha of lp(Y) = ((5 + |Y|) / 6)^alpha; score = log P(Y) / lp(Y).
      bos_id, eos_id, max_length, pad_id, constraints: as in greedy_search; the
        constraints set the log-probability of a forbidden token to NEG_INF.

    Returns:
      Hypotheses with tokens int [B, W, T], log_probs and scores float [B, W]: hypotheses
      that ended with EOS, best first, then (only where a row has fewer than W of them)
      hypotheses cut off at max_length, scored log P / lp(T). The loop stops early once no
      alive hypothesis can beat any of the W finished ones of its row.
    """
    alpha = length_penalty
    start = _start_tokens(bos_id, _batch_size(cache))
    state = _initial_beam_state(start, cache, beam_size, max_length, pad_id)
    state = lax.while_loop(
        functools.partial(_beam_not_done, alpha=alpha, max_length=max_length),
        functools.partial(_beam_step, tokens_to_logits=tokens_to_logits, alpha=alpha,
                          eos_id=eos_id, pad_id=pad_id, constraints=constraints),
        state)
    return _best_first(state, alpha=alpha, max_length=max_length)


# --------------------------------------------------------------------------- prompts, dispatch


def prefill(prompt_to_cache: PromptToCache, cache: Cache, prompt_tokens: Array,
            prompt_lengths: Array) -> tuple[Array, Cache]:
    """Feeds each row's prompt but its last token to the model, in one call.

    ``prompt_to_cache(tokens int [B, P], lengths int [B], cache) -> cache`` runs the model
    over the whole block at once (the same code as training) and advances each row by its
    own length, so rows of different lengths share one call. The returned last prompt
    tokens are the ``bos_id`` of the search that continues the prompts.

    Args:
      prompt_tokens: int [B, P], right-padded.
      prompt_lengths: int [B], each at least 1.

    Returns:
      last prompt token per row int [B], and the cache after the rest of the prompt.
    """
    cache = prompt_to_cache(prompt_tokens, prompt_lengths - 1, cache)
    last = jnp.take_along_axis(prompt_tokens, (prompt_lengths - 1)[:, None], axis=1)[:, 0]
    return last.astype(jnp.int32), cache


def search(tokens_to_logits: TokensToLogits, cache: Cache, decode_config: DecodeConfig, *,
           bos_id: int | Array, eos_id: int, max_length: int, pad_id: int = 0,
           rng: Array | None = None) -> Hypotheses:
    """Runs decode_config.method with its constraints.

    Returns:
      Hypotheses [B, N, ...], best first for beam search: N = decode_config.nbest for beam
      search, decode_config.num_samples for sampling (row b's samples are independent),
      1 for greedy search. rng: the sampling key; None = ``jax.random.key(decode_config.seed)``.
    """
    common = dict(bos_id=bos_id, eos_id=eos_id, max_length=max_length, pad_id=pad_id,
                  constraints=Constraints(decode_config.min_length,
                                          decode_config.no_repeat_ngram_size))
    alpha = decode_config.length_penalty
    if decode_config.method == "greedy":
        found = greedy_search(tokens_to_logits, cache, length_penalty=alpha, **common)
        return jax.tree.map(lambda leaf: leaf[:, None], found)
    if decode_config.method == "beam":
        found = beam_search(tokens_to_logits, cache, beam_size=decode_config.beam_size,
                            length_penalty=alpha, **common)
        return jax.tree.map(lambda leaf: leaf[:, :decode_config.nbest], found)
    if decode_config.method == "sample":
        return _samples(tokens_to_logits, cache, decode_config, rng, **common)
    raise ValueError(f"decode.method={decode_config.method!r} must be 'greedy', 'beam' or "
                     "'sample'.")


def _samples(tokens_to_logits: TokensToLogits, cache: Cache, decode_config: DecodeConfig,
             rng: Array | None, *, bos_id: int | Array, **common: Any) -> Hypotheses:
    """decode_config.num_samples = K samples per row: [B, K, ...], the rows repeated K times."""
    samples = decode_config.num_samples
    batch = _batch_size(cache)
    if samples > 1:
        cache = expand_beams(cache, samples)
        bos_id = jnp.repeat(_start_tokens(bos_id, batch), samples)
    found = sample(tokens_to_logits, cache,
                   jax.random.key(decode_config.seed) if rng is None else rng,
                   temperature=decode_config.temperature, top_k=decode_config.top_k,
                   top_p=decode_config.top_p, bos_id=bos_id,
                   length_penalty=decode_config.length_penalty, **common)
    return jax.tree.map(lambda leaf: leaf.reshape(batch, samples, *leaf.shape[1:]), found)

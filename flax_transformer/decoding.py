"""Searching for outputs: greedy, beam search and sampling over one model interface.

Every search takes ``tokens_to_logits(tokens int [B], cache) -> (logits float [B, V],
cache)``, where the cache is a pytree whose leaves all have the batch as leading axis
(beam search gathers them along it). The searches are pure functions whose loops are
``lax.while_loop`` over fixed-size buffers that stop as soon as every row is done.

Conventions shared by every search:

* outputs exclude the start token (BOS, or the last prompt token), include EOS, and hold
  ``pad_id`` after it; a row that never emits EOS fills all ``max_length`` slots;
* ``pad_id`` is never emitted (its logit is masked), so padding keeps meaning "nothing";
* ``bos_id`` is an int, or int [B] with one start token per row.

The model adapters (``seq2seq_decoder``, ``lm_decoder``, ``translate``,
``continue_prompt``) turn a Transformer / DecoderOnly and its params into that
interface, with the full cache (self-attention K/V buffers plus cross-attention K/V
computed once), the Flax-WMT cache (cross K/V recomputed every step) or no cache at all.
``bucket_batches`` and ``translate_all`` pad a file of sentences to a few fixed shapes so
that it compiles once per bucket, never once per sentence.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flax_transformer.config import DecodeConfig, ModelConfig

Array = jnp.ndarray
Cache = Any
TokensToLogits = Callable[[Array, Cache], tuple[Array, Cache]]

NEG_INF = -1.0e7  # finite "minus infinity" of beam scores: no inf - inf = NaN anywhere
CACHING_MODES = ("full", "self_only", "none")


# --------------------------------------------------------------------------- helpers


def _batch_size(cache: Cache) -> int:
    return jax.tree.leaves(cache)[0].shape[0]


def _start_tokens(bos_id: int | Array, batch_size: int) -> Array:
    """int [B] start tokens from a scalar BOS id or a per-row array."""
    return jnp.broadcast_to(jnp.asarray(bos_id, jnp.int32), (batch_size,))


def _forbid(logits: Array, token_id: int, value: float = -jnp.inf) -> Array:
    """Masks one token out of logits [..., V]."""
    return logits.at[..., token_id].set(value)


def _row_select(condition: Array, new: Cache, old: Cache) -> Cache:
    """Per-row choice between two caches: condition bool [B] picks ``new``."""
    def select(new_leaf, old_leaf):
        shape = (-1,) + (1,) * (new_leaf.ndim - 1)
        return jnp.where(condition.reshape(shape), new_leaf, old_leaf)
    return jax.tree.map(select, new, old)


# --------------------------------------------------------------------------- greedy, sampling


def _token_by_token(tokens_to_logits: TokensToLogits, cache: Cache,
                    choose: Callable[[Array, Array], Array], *, bos_id: int | Array,
                    eos_id: int, max_length: int, pad_id: int) -> Array:
    """The loop shared by greedy search and sampling: one chosen token per row and step.

    ``choose(logits [B, V], step) -> int [B]`` sees logits with ``pad_id`` masked.
    """
    start = _start_tokens(bos_id, _batch_size(cache))
    batch = start.shape[0]
    outputs = jnp.full((batch, max_length), pad_id, jnp.int32)             # [B, T]
    initial = (jnp.int32(0), start, jnp.zeros((batch,), bool), outputs, cache)

    def not_done(state):
        step, _, finished, _, _ = state
        return (step < max_length) & ~jnp.all(finished)

    def step_fn(state):
        step, last, finished, outputs, cache = state
        logits, cache = tokens_to_logits(last, cache)
        chosen = choose(_forbid(logits.astype(jnp.float32), pad_id), step).astype(jnp.int32)
        chosen = jnp.where(finished, pad_id, chosen)
        outputs = lax.dynamic_update_slice(outputs, chosen[:, None], (0, step))
        return step + 1, chosen, finished | (chosen == eos_id), outputs, cache

    return lax.while_loop(not_done, step_fn, initial)[3]


def greedy_search(tokens_to_logits: TokensToLogits, cache: Cache, *, bos_id: int | Array,
                  eos_id: int, max_length: int, pad_id: int = 0) -> Array:
    """The most likely next token at every step.

    Args:
      tokens_to_logits: the model, ``(tokens int [B], cache) -> (logits [B, V], cache)``.
      cache: its initial cache (leaves [B, ...]).
      bos_id: start token, int or int [B].
      eos_id: end token; a row stops after emitting it.
      max_length: T, most output tokens per row.
      pad_id: written after EOS; never emitted.

    Returns:
      tokens int [B, T]: without the start token, with EOS, pad after EOS.
    """
    def choose(logits, step):
        del step
        return jnp.argmax(logits, axis=-1)
    return _token_by_token(tokens_to_logits, cache, choose, bos_id=bos_id, eos_id=eos_id,
                           max_length=max_length, pad_id=pad_id)


def filter_logits(logits: Array, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> Array:
    """Temperature, then top-k, then nucleus (top-p) filtering; removed tokens get -inf.

    Args:
      logits: float [B, V].
      temperature: divides the logits (> 0).
      top_k: keep the k largest logits; 0 keeps all.
      top_p: keep the smallest set of likeliest tokens whose probability reaches top_p
        (the likeliest token is always kept); 1.0 keeps all.

    Returns:
      float [B, V].
    """
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth_largest = lax.top_k(logits, top_k)[0][:, -1:]                    # [B, 1]
        logits = jnp.where(logits >= kth_largest, logits, -jnp.inf)
    if top_p < 1.0:
        descending = -jnp.sort(-logits, axis=-1)                             # [B, V]
        probs = jax.nn.softmax(descending, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        kept = jnp.where(mass_before < top_p, descending, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)                    # [B, 1]
        logits = jnp.where(logits >= threshold, logits, -jnp.inf)
    return logits


def sample(tokens_to_logits: TokensToLogits, cache: Cache, rng: Array, *,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           bos_id: int | Array, eos_id: int, max_length: int, pad_id: int = 0) -> Array:
    """Ancestral sampling from the filtered next-token distribution (see filter_logits).

    The key of step t is ``fold_in(rng, t)``: the same rng gives the same samples.

    Returns:
      tokens int [B, T], T = max_length, laid out as greedy_search's.
    """
    def choose(logits, step):
        filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
        return jax.random.categorical(jax.random.fold_in(rng, step), filtered, axis=-1)
    return _token_by_token(tokens_to_logits, cache, choose, bos_id=bos_id, eos_id=eos_id,
                           max_length=max_length, pad_id=pad_id)


# --------------------------------------------------------------------------- beam search


def gnmt_length_penalty(length: Array | int, alpha: float) -> Array:
    """GNMT length penalty lp(Y) = ((5 + |Y|) / 6)^alpha; |Y| counts EOS, not BOS."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


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
               eos_id: int, pad_id: int) -> BeamState:
    """Extends every alive hypothesis by one token; EOS endings move to the finished pool.

    As in the textbook (and fairseq), the step keeps the W best extensions: those of them
    that end in EOS are finished, and the beam is refilled with the best non-EOS ones from
    the 2W candidates. So beam size 1 with alpha = 0 is exactly greedy search.
    """
    batch, beams = state.last_tokens.shape
    logits, cache = tokens_to_logits(state.last_tokens.reshape(-1), state.cache)
    logits = _forbid(logits.astype(jnp.float32), pad_id, NEG_INF)
    log_probs = jax.nn.log_softmax(logits, axis=-1).reshape(batch, beams, -1)  # [B, W, V]
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
        finished_flags=_gather_beams(
            jnp.concatenate([state.finished_flags, ends], axis=1), pool),
        cache=_reorder_cache(cache, _gather_beams(beam_indices, alive)))


def _best_first(state: BeamState, *, alpha: float, max_length: int) -> tuple[Array, Array]:
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
    tokens = jnp.concatenate([state.finished_tokens, state.alive_tokens], axis=1)
    return _gather_beams(tokens, best), _gather_beams(scores, best)


def beam_search(tokens_to_logits: TokensToLogits, cache: Cache, *, beam_size: int,
                length_penalty: float = 0.6, bos_id: int | Array, eos_id: int,
                max_length: int, pad_id: int = 0) -> tuple[Array, Array]:
    """Beam search with the GNMT length penalty and a separate pool of finished hypotheses.

    Args:
      tokens_to_logits: the model; it is called on B·W rows, so the cache is expanded to
        [B·W, ...] (row b·W + w = beam w of example b) and reordered by a gather along
        the leading axis after every step.
      cache: the initial cache, leaves [B, ...].
      beam_size: W.
      length_penalty: alpha of lp(Y) = ((5 + |Y|) / 6)^alpha; score = log P(Y) / lp(Y).
      bos_id, eos_id, max_length, pad_id: as in greedy_search.

    Returns:
      tokens int [B, W, T] and scores float [B, W]: hypotheses that ended with EOS, best
      first, then (only where a row has fewer than W of them) hypotheses cut off at
      max_length, scored log P / lp(T). The loop stops early once no alive hypothesis can
      beat any of the W finished ones of its row.
    """
    alpha = length_penalty
    start = _start_tokens(bos_id, _batch_size(cache))
    state = _initial_beam_state(start, cache, beam_size, max_length, pad_id)
    state = lax.while_loop(
        functools.partial(_beam_not_done, alpha=alpha, max_length=max_length),
        functools.partial(_beam_step, tokens_to_logits=tokens_to_logits, alpha=alpha,
                          eos_id=eos_id, pad_id=pad_id),
        state)
    return _best_first(state, alpha=alpha, max_length=max_length)


# --------------------------------------------------------------------------- prompts


def prefill(tokens_to_logits: TokensToLogits, cache: Cache, prompt_tokens: Array,
            prompt_lengths: Array) -> tuple[Array, Cache]:
    """Feeds each row's prompt but its last token, one token per step.

    Rows with shorter prompts keep their cache unchanged (a per-row select), so rows of
    different lengths share one loop. The returned last prompt tokens are the ``bos_id``
    of the search that continues the prompts.

    Args:
      prompt_tokens: int [B, P], right-padded.
      prompt_lengths: int [B], each at least 1.

    Returns:
      last prompt token per row int [B], and the cache after the rest of the prompt.
    """
    def feed(index, cache):
        _, advanced = tokens_to_logits(prompt_tokens[:, index], cache)
        return _row_select(index < prompt_lengths - 1, advanced, cache)

    cache = lax.fori_loop(0, jnp.max(prompt_lengths) - 1, feed, cache)
    last = jnp.take_along_axis(prompt_tokens, (prompt_lengths - 1)[:, None], axis=1)[:, 0]
    return last.astype(jnp.int32), cache


# --------------------------------------------------------------------------- model adapters


def _check_caching(caching: str, allowed: Sequence[str] = CACHING_MODES) -> None:
    if caching not in allowed:
        raise ValueError(f"caching={caching!r} must be one of {tuple(allowed)}.")


def _cross_key_values(module: Any, encoded: Array) -> tuple[tuple[Array, Array], ...]:
    """Per decoder layer, cross-attention keys and values [B, S, H, K] of ``encoded``."""
    return tuple(layer.cross_key_value(encoded) for layer in module.decoder.layers)


def _write_and_recompute(full_logits: Callable[[Cache, Array], Array]) -> TokensToLogits:
    """The no-cache interface: write tokens into a [B, L] buffer, rerun the whole decoder.

    ``full_logits(cache, buffer int [B, L]) -> logits [B, L, V]``.
    """
    def tokens_to_logits(tokens, cache):
        positions = cache["positions"]                                      # [B]
        rows = jnp.arange(tokens.shape[0])
        buffer = cache["tokens"].at[rows, positions].set(tokens.astype(jnp.int32))
        logits = full_logits(cache, buffer)[rows, positions]                # [B, V]
        return logits, dict(cache, tokens=buffer, positions=positions + 1)
    return tokens_to_logits


def _empty_buffer(batch: int, length: int, pad_id: int) -> dict:
    return {"tokens": jnp.full((batch, length), pad_id, jnp.int32),
            "positions": jnp.zeros((batch,), jnp.int32)}


def _seq2seq_self_only(model: Any, variables: dict, source_tokens: Array, encoded: Array,
                       max_length: int) -> tuple[TokensToLogits, Cache]:
    """Self-attention cache; cross K/V recomputed from ``encoded`` every step (Flax WMT)."""
    full = model.apply(variables, encoded, source_tokens, max_length, method="init_cache")
    layers = tuple({"key": c["key"], "value": c["value"]} for c in full["layers"])
    cache = dict(full, layers=layers, encoded=encoded)

    def tokens_to_logits(tokens, cache):
        cross = model.apply(variables, cache["encoded"], method=_cross_key_values)
        layers = tuple(dict(layer, cross_key=key, cross_value=value)
                       for layer, (key, value) in zip(cache["layers"], cross, strict=True))
        step_cache = {k: v for k, v in cache.items() if k != "encoded"}
        logits, step_cache = model.apply(variables, tokens, dict(step_cache, layers=layers),
                                         method="decode_step")
        kept = tuple({"key": c["key"], "value": c["value"]} for c in step_cache["layers"])
        return logits, dict(step_cache, layers=kept, encoded=cache["encoded"])
    return tokens_to_logits, cache


def seq2seq_decoder(model: Any, params: Any, source_tokens: Array, max_length: int, *,
                    caching: str = "full", pad_id: int = 0) -> tuple[TokensToLogits, Cache]:
    """Encodes the sources once and returns the Transformer as ``tokens_to_logits``.

    Args:
      model: a ``Transformer``.
      params: its "params" collection.
      source_tokens: int [B, S], right-padded with pad_id.
      max_length: outputs of up to this many tokens (≤ model.config.max_length).
      caching: "full" = self-attention K/V buffers + cross-attention K/V computed once;
        "self_only" = self-attention buffers, cross K/V recomputed from the encoder
        output every step (the Flax WMT example); "none" = the whole decoder rerun over
        the [B, max_length] output buffer every step.
      pad_id: fills the empty output buffer of caching="none".

    Returns:
      (tokens_to_logits, initial cache); every cache leaf has B leading.
    """
    _check_caching(caching)
    variables = {"params": params}
    encoded = model.apply(variables, source_tokens, method="encode")         # [B, S, D]
    if caching == "full":
        cache = model.apply(variables, encoded, source_tokens, max_length,
                            method="init_cache")

        def cached(tokens, cache):
            return model.apply(variables, tokens, cache, method="decode_step")
        return cached, cache
    if caching == "self_only":
        return _seq2seq_self_only(model, variables, source_tokens, encoded, max_length)
    cache = dict(_empty_buffer(source_tokens.shape[0], max_length, pad_id),
                 encoded=encoded, source_tokens=source_tokens)
    return _write_and_recompute(lambda c, buffer: model.apply(
        variables, c["encoded"], c["source_tokens"], buffer, method="decode")), cache


def lm_decoder(model: Any, params: Any, batch_size: int, max_length: int, *,
               caching: str = "full", pad_id: int = 0) -> tuple[TokensToLogits, Cache]:
    """A ``DecoderOnly`` as ``tokens_to_logits`` over sequences of up to max_length tokens.

    caching: "full" (self-attention K/V buffers) or "none" (rerun over the buffer).
    """
    _check_caching(caching, ("full", "none"))
    variables = {"params": params}
    if caching == "full":
        cache = model.apply(variables, batch_size, max_length, method="init_cache")

        def cached(tokens, cache):
            return model.apply(variables, tokens, cache, method="decode_step")
        return cached, cache
    return (_write_and_recompute(lambda c, buffer: model.apply(variables, buffer)),
            _empty_buffer(batch_size, max_length, pad_id))


def _search(tokens_to_logits: TokensToLogits, cache: Cache, decode_config: DecodeConfig, *,
            bos_id: int | Array, eos_id: int, max_length: int, pad_id: int,
            rng: Array | None) -> Array:
    """Runs decode_config.method; beam search returns its best hypothesis. int [B, T]."""
    common = dict(bos_id=bos_id, eos_id=eos_id, max_length=max_length, pad_id=pad_id)
    if decode_config.method == "greedy":
        return greedy_search(tokens_to_logits, cache, **common)
    if decode_config.method == "beam":
        tokens, _ = beam_search(tokens_to_logits, cache, beam_size=decode_config.beam_size,
                                length_penalty=decode_config.length_penalty, **common)
        return tokens[:, 0]
    if decode_config.method == "sample":
        if rng is None:
            rng = jax.random.key(decode_config.seed)
        return sample(tokens_to_logits, cache, rng, temperature=decode_config.temperature,
                      top_k=decode_config.top_k, top_p=decode_config.top_p, **common)
    raise ValueError(f"decode.method={decode_config.method!r} must be 'greedy', 'beam' or "
                     "'sample'.")


def output_length(source_length: int, decode_config: DecodeConfig,
                  model_config: ModelConfig) -> int:
    """Most output tokens for sources padded to source_length: S + max_extra_length, capped
    by the positions the model knows."""
    return min(source_length + decode_config.max_extra_length, model_config.max_length)


def translate(model: Any, params: Any, source_tokens: Array, decode_config: DecodeConfig, *,
              bos_id: int, eos_id: int, pad_id: int = 0, rng: Array | None = None,
              caching: str = "full") -> Array:
    """Source sentences -> output tokens with decode_config's search (pure, jit-able).

    Args:
      model: a ``Transformer`` (static under jit).
      params: its "params" collection.
      source_tokens: int [B, S], right-padded with pad_id.
      decode_config: method, beam size, alpha, sampling options, max_extra_length.
      bos_id, eos_id, pad_id: from the tokenizer.
      rng: sampling key; None = ``jax.random.key(decode_config.seed)``.
      caching: see seq2seq_decoder; "full" unless comparing speeds.

    Returns:
      int [B, T], T = output_length(S, ...): no BOS, EOS included, pad after it.
    """
    max_length = output_length(source_tokens.shape[1], decode_config, model.config)
    tokens_to_logits, cache = seq2seq_decoder(model, params, source_tokens, max_length,
                                              caching=caching, pad_id=pad_id)
    return _search(tokens_to_logits, cache, decode_config, bos_id=bos_id, eos_id=eos_id,
                   max_length=max_length, pad_id=pad_id, rng=rng)


def make_translate_fn(model: Any, decode_config: DecodeConfig, *, bos_id: int, eos_id: int,
                      pad_id: int = 0, caching: str = "full") -> Callable[..., Array]:
    """``translate`` compiled once per source shape: fn(params, source_tokens, rng=None)."""
    _check_caching(caching)

    def translate_fn(params, source_tokens, rng=None):
        return translate(model, params, source_tokens, decode_config, bos_id=bos_id,
                         eos_id=eos_id, pad_id=pad_id, rng=rng, caching=caching)
    return jax.jit(translate_fn)


def continue_prompt(model: Any, params: Any, prompt_tokens: Array,
                    decode_config: DecodeConfig, *, eos_id: int, pad_id: int = 0,
                    max_new_tokens: int | None = None, rng: Array | None = None,
                    caching: str = "full") -> Array:
    """Continues prompts with a ``DecoderOnly`` model and decode_config's search.

    Args:
      model: a ``DecoderOnly``.
      params: its "params" collection.
      prompt_tokens: int [B, P], right-padded with pad_id; rows may differ in length but
        each needs at least one token (prepend BOS if the model was trained with one).
      decode_config: the search; beam search works too.
      eos_id, pad_id: from the tokenizer.
      max_new_tokens: N; None = decode_config.max_extra_length. Capped so that prompt
        and continuation fit model.config.max_length positions.
      rng: sampling key (None = decode_config.seed).
      caching: "full" or "none" (see lm_decoder).

    Returns:
      the continuations only, int [B, N], left-aligned, EOS included, pad after it.
    """
    prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
    prompt_length = prompt_tokens.shape[1]
    wanted = decode_config.max_extra_length if max_new_tokens is None else max_new_tokens
    new_tokens = min(wanted, model.config.max_length - prompt_length)
    if new_tokens < 1:
        raise ValueError(f"prompts of {prompt_length} tokens leave no room for a continuation "
                         f"within model.max_length={model.config.max_length}.")
    tokens_to_logits, cache = lm_decoder(model, params, prompt_tokens.shape[0],
                                         prompt_length + new_tokens, caching=caching,
                                         pad_id=pad_id)
    lengths = jnp.sum(prompt_tokens != pad_id, axis=1).astype(jnp.int32)
    last, cache = prefill(tokens_to_logits, cache, prompt_tokens, lengths)
    return _search(tokens_to_logits, cache, decode_config, bos_id=last, eos_id=eos_id,
                   max_length=new_tokens, pad_id=pad_id, rng=rng)


def make_continue_fn(model: Any, decode_config: DecodeConfig, *, eos_id: int,
                     pad_id: int = 0, max_new_tokens: int | None = None,
                     caching: str = "full") -> Callable[..., Array]:
    """``continue_prompt`` compiled once per prompt shape: fn(params, prompt_tokens, rng=None)."""
    def continue_fn(params, prompt_tokens, rng=None):
        return continue_prompt(model, params, prompt_tokens, decode_config, eos_id=eos_id,
                               pad_id=pad_id, max_new_tokens=max_new_tokens, rng=rng,
                               caching=caching)
    return jax.jit(continue_fn)


def attention_weights(model: Any, params: Any, source_tokens: Array, output_tokens: Array,
                      *, bos_id: int) -> dict[str, list[Array]]:
    """Attention weights of a Transformer teacher-forced on its own outputs (for heatmaps).

    Query row t of the decoder is the position whose logits chose output_tokens[:, t].

    Args:
      source_tokens: int [B, S]; output_tokens: int [B, T] as returned by a search.

    Returns:
      {"encoder_self": [B, H, S, S], "decoder_self": [B, H, T, T], "cross": [B, H, T, S]}
      lists with one array per layer, first layer first.
    """
    target_input = jnp.concatenate(
        [jnp.full_like(output_tokens[:, :1], bos_id), output_tokens[:, :-1]], axis=1)
    _, state = model.apply({"params": params}, source_tokens, target_input,
                           mutable=["intermediates"])
    sown = state["intermediates"]

    def per_layer(stack, layer_count, sublayer):
        return [sown[stack][f"layer_{index}"][sublayer]["attention_weights"][0]
                for index in range(layer_count)]
    config = model.config
    return {"encoder_self": per_layer("encoder", config.num_encoder_layers, "self_attention"),
            "decoder_self": per_layer("decoder", config.num_decoder_layers, "self_attention"),
            "cross": per_layer("decoder", config.num_decoder_layers, "encoder_attention")}


# --------------------------------------------------------------------------- buckets


def default_buckets(max_length: int, smallest: int = 8) -> tuple[int, ...]:
    """Powers of two from ``smallest`` below max_length, then max_length itself."""
    buckets = []
    length = smallest
    while length < max_length:
        buckets.append(length)
        length *= 2
    return (*buckets, max_length)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``length`` tokens."""
    for bucket in sorted(buckets):
        if length <= bucket:
            return bucket
    raise ValueError(f"a sequence of {length} tokens is longer than the largest bucket "
                     f"{max(buckets)}; truncate it or add a larger bucket.")


@dataclasses.dataclass(frozen=True)
class SourceBatch:
    """Sequences padded to one bucket shape.

    Attributes:
      indices: int [B], position of each row in the input list; -1 for a filler row.
      tokens: int32 [B, S], right-padded with pad_id (filler rows are all pad).
    """

    indices: np.ndarray
    tokens: np.ndarray


def _rows_per_batch(bucket: int, count: int, tokens_per_batch: int) -> int:
    """Budgeted rows, or the next power of two ≥ count when fewer sequences are waiting."""
    budget = max(1, tokens_per_batch // bucket)
    return min(budget, 1 << max(0, count - 1).bit_length())


def bucket_batches(sequences: Sequence[Sequence[int]], buckets: Sequence[int], *,
                   tokens_per_batch: int, pad_id: int = 0) -> Iterator[SourceBatch]:
    """Groups sequences by bucket into batches of one fixed shape per bucket.

    Every batch of a bucket has the same [rows, bucket] shape (filler rows pad the last
    one), so decoding a whole file compiles at most len(buckets) times. Rows are
    tokens_per_batch // bucket, or fewer (a power of two) when the bucket holds fewer
    sequences. Empty sequences are left out (nothing to decode).
    """
    by_bucket: dict[int, list[int]] = {}
    for index, sequence in enumerate(sequences):
        if len(sequence):
            by_bucket.setdefault(bucket_length(len(sequence), buckets), []).append(index)
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket]
        rows = _rows_per_batch(bucket, len(members), tokens_per_batch)
        for begin in range(0, len(members), rows):
            indices = np.full((rows,), -1, np.int64)
            tokens = np.full((rows, bucket), pad_id, np.int32)
            for row, index in enumerate(members[begin:begin + rows]):
                indices[row] = index
                tokens[row, :len(sequences[index])] = sequences[index]
            yield SourceBatch(indices=indices, tokens=tokens)


def strip_output(tokens: Sequence[int], eos_id: int, pad_id: int = 0) -> list[int]:
    """One output row -> its tokens before the first EOS, without padding."""
    kept = []
    for token in np.asarray(tokens).tolist():
        if token == eos_id:
            break
        if token != pad_id:
            kept.append(token)
    return kept


def translate_all(translate_fn: Callable[..., Array], params: Any,
                  sequences: Sequence[Sequence[int]], *, buckets: Sequence[int],
                  tokens_per_batch: int, eos_id: int, pad_id: int = 0,
                  rng: Array | None = None,
                  on_batch: Callable[[int], None] | None = None) -> list[list[int]]:
    """Decodes a list of token sequences through bucketed batches, in input order.

    Args:
      translate_fn: e.g. make_translate_fn(...) or make_continue_fn(...).
      sequences: token ids per sentence; an empty one gets an empty output.
      buckets, tokens_per_batch: see bucket_batches.
      rng: sampling key, folded with the batch number; None = the config's seed.
      on_batch: called with the number of real sentences after each batch (progress bars).

    Returns:
      output tokens per sentence, EOS and padding removed.
    """
    outputs: list[list[int]] = [[] for _ in sequences]
    for number, batch in enumerate(bucket_batches(sequences, buckets,
                                                  tokens_per_batch=tokens_per_batch,
                                                  pad_id=pad_id)):
        batch_rng = None if rng is None else jax.random.fold_in(rng, number)
        decoded = np.asarray(translate_fn(params, batch.tokens, batch_rng))
        real = batch.indices >= 0
        for index, row in zip(batch.indices[real], decoded[real], strict=True):
            outputs[index] = strip_output(row, eos_id, pad_id)
        if on_batch is not None:
            on_batch(int(real.sum()))
    return outputs

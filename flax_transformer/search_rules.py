"""The rules of the searches, apart from their loops: what they return and may emit.

* ``Hypotheses``: what every search returns. ``log_probs`` is the log-probability of a
  hypothesis under the model (log-softmax over the vocabulary less ``pad_id``, which no
  search emits; before any sampling filter, EOS/n-gram ban); ``scores`` is the
  length-normalised log P / lp(|Y|) with the GNMT penalty lp of ``gnmt_length_penalty``
  (|Y| counts EOS);
* ``Constraints``, applied by every search: ``min_length`` forbids EOS before that many
  tokens and ``no_repeat_ngram_size`` n forbids any token that would repeat an n-gram of
  the output (fairseq's ``--no-repeat-ngram-size``; the start token and a prompt are not
  part of the output);
* ``filter_logits``: sampling's temperature, top-k and nucleus (top-p) filters.

Pure jnp functions; ``decoding.py`` holds the searches that apply them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

Array = jnp.ndarray


class Hypotheses(NamedTuple):
    """What a search returns. [B, N, ...] from beam_search and search, [B, ...] from
    greedy_search and sample (one hypothesis per row)."""

    tokens: Array      # int [B, (N,) T], laid out as decoding.py's docstring says
    log_probs: Array   # float [B, (N)], log P(tokens) under the model
    scores: Array      # float [B, (N)], log_probs / lp(|tokens|): what beam search ranks by


class Constraints(NamedTuple):
    """Rules every search applies to the next token (0 = off)."""

    min_length: int = 0             # EOS forbidden at output positions < min_length
    no_repeat_ngram_size: int = 0   # no n-gram of this size twice in an output


def gnmt_length_penalty(length: Array | int, alpha: float) -> Array:
    """GNMT length penalty lp(Y) = ((5 + |Y|) / 6)^alpha; |Y| counts EOS, not BOS."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def normalised_scores(tokens: Array, log_probs: Array, alpha: float, pad_id: int) -> Array:
    """log_probs / lp(|Y|), |Y| the tokens other than pad (EOS included). [...]."""
    return log_probs / gnmt_length_penalty(jnp.sum(tokens != pad_id, axis=-1), alpha)


def forbid(logits: Array, token_id: int, value: float = -jnp.inf) -> Array:
    """Masks one token out of logits [..., V]."""
    return logits.at[..., token_id].set(value)


def repeated_ngram_tokens(tokens: Array, length: Array | int, n: int,
                          vocab_size: int) -> Array:
    """Tokens that, written at position ``length``, would repeat an n-gram of the output.

    Pure and shape-static: the n-grams are read from the fixed-size buffer, and only
    those wholly before ``length`` count. Token v is banned for row b iff some n-gram
    ``tokens[b, i:i+n]`` with i + n ≤ length starts with the row's last n - 1 tokens
    ``tokens[b, length-n+1:length]`` and ends with v (n = 1 bans every token written).

    Args:
      tokens: int [B, T], the outputs so far (anything at positions ≥ length).
      length: int scalar, the number of tokens written.
      n: the n-gram size (≥ 1, static).
      vocab_size: V.

    Returns:
      bool [B, V].
    """
    batch, total = tokens.shape
    if total < n:
        return jnp.zeros((batch, vocab_size), bool)
    starts = total - n + 1
    windows = jnp.stack([tokens[:, i:i + starts] for i in range(n)], axis=-1)  # [B, I, n]
    last = lax.dynamic_slice_in_dim(
        jnp.pad(tokens, ((0, 0), (n - 1, 0))), length, n - 1, axis=1)        # [B, n-1]
    matches = jnp.all(windows[:, :, :n - 1] == last[:, None, :], axis=-1)  # [B, I]
    matches &= (jnp.arange(starts) + n <= length)[None, :]
    banned = jnp.zeros((batch, vocab_size), jnp.int32)
    banned = banned.at[jnp.arange(batch)[:, None], windows[:, :, n - 1]].max(
        matches.astype(jnp.int32))
    return banned > 0


def constrain(scores: Array, outputs: Array, step: Array, constraints: Constraints, *,
              eos_id: int, value: float) -> Array:
    """Sets ``value`` where constraints forbid the token at output position ``step``.

    Args:
      scores: float [R, V] logits or log-probabilities of the next token.
      outputs: int [R, T], the outputs so far (step tokens written).
    """
    if constraints.no_repeat_ngram_size:
        banned = repeated_ngram_tokens(outputs, step, constraints.no_repeat_ngram_size,
                                       scores.shape[-1])
        scores = jnp.where(banned, value, scores)
    if constraints.min_length:
        scores = jnp.where(step < constraints.min_length, forbid(scores, eos_id, value),
                           scores)
    return scores


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

"""BERT's masked-token corruption as a pure function with an explicit key.

Each maskable token is chosen with probability ``rate`` (15 %); a chosen token becomes
``<mask>`` (80 %), a random piece (10 %) or stays as it is (10 %), and the loss is taken
at the chosen positions only. The draws of row r come from ``fold_in(key, r)`` with r
counted in the GLOBAL batch, so a batch split over devices is corrupted exactly as the
whole batch would be on one device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASK_SHARE, RANDOM_SHARE = 0.8, 0.1


def mask_tokens(key: jax.Array, tokens: jnp.ndarray, maskable: jnp.ndarray, *, mask_id: int,
                random_low: int, random_high: int, rate: float = 0.15,
                row_offset: jnp.ndarray | int = 0) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Corrupts ``tokens`` for masked-token training.

    For tokens ``[[7, 8, 9, 3]]`` (3 = EOS, not maskable) where 8 is chosen and drawn to
    be masked, the result is ``[[7, M, 9, 3]]`` with weights ``[[0, 1, 0, 0]]``.

    Args:
      key: PRNG key of this batch.
      tokens: int [B, T].
      maskable: bool [B, T], positions that may be chosen (no padding, no specials).
      mask_id: id of the ``<mask>`` piece.
      random_low, random_high: random replacements are uniform in [low, high).
      rate: probability that a maskable position is chosen.
      row_offset: index of row 0 in the global batch (device shard offset).

    Returns:
      inputs int [B, T] (the corrupted tokens) and weights float32 [B, T] (1 = chosen).
    """
    rows, length = tokens.shape

    def draws(row):
        choose_key, how_key, token_key = jax.random.split(jax.random.fold_in(key, row), 3)
        return (jax.random.uniform(choose_key, (length,)),
                jax.random.uniform(how_key, (length,)),
                jax.random.randint(token_key, (length,), random_low, random_high))

    choose, how, random_tokens = jax.vmap(draws)(row_offset + jnp.arange(rows))  # [B, T] each
    chosen = maskable & (choose < rate)
    to_mask = chosen & (how < MASK_SHARE)
    to_random = chosen & (how >= MASK_SHARE) & (how < MASK_SHARE + RANDOM_SHARE)
    inputs = jnp.where(to_mask, mask_id, jnp.where(to_random, random_tokens, tokens))
    return inputs.astype(tokens.dtype), chosen.astype(jnp.float32)

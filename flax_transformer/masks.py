"""Every attention mask of the model, and only here.

Masks are boolean with ``True`` = may attend, shaped to broadcast against attention
logits [B, H, T, S] (the head axis is always 1 here: all heads share a mask).
"""

from __future__ import annotations

import jax.numpy as jnp


def causal_mask(length: int) -> jnp.ndarray:
    """Look-ahead mask: query t may attend to keys s <= t.

    For length 4::

        [[1, 0, 0, 0],
         [1, 1, 0, 0],
         [1, 1, 1, 0],
         [1, 1, 1, 1]]

    Returns:
      bool [T, T].
    """
    return jnp.tril(jnp.ones((length, length), dtype=bool))


def padding_mask(key_tokens: jnp.ndarray, pad_id: int = 0) -> jnp.ndarray:
    """Hides keys that are padding.

    For key tokens ``[[5, 7, 0]]`` (0 = pad) every query row reads::

        [[1, 1, 0]]

    Args:
      key_tokens: int [B, S].
      pad_id: the padding token id.

    Returns:
      bool [B, 1, 1, S].
    """
    return (key_tokens != pad_id)[:, None, None, :]


def segment_mask(query_segments: jnp.ndarray, key_segments: jnp.ndarray) -> jnp.ndarray:
    """Keeps packed pairs apart: a query sees only keys of its own, non-zero segment.

    For query segments ``[1, 1, 2]`` and key segments ``[1, 2, 2]``::

        [[1, 0, 0],
         [1, 0, 0],
         [0, 1, 1]]

    Args:
      query_segments: int [B, T], 0 = padding.
      key_segments: int [B, S], 0 = padding.

    Returns:
      bool [B, 1, T, S].
    """
    same = query_segments[:, :, None] == key_segments[:, None, :]       # [B, T, S]
    return (same & (key_segments[:, None, :] != 0))[:, None, :, :]


def encoder_mask(source_tokens: jnp.ndarray, pad_id: int = 0,
                 source_segments: jnp.ndarray | None = None) -> jnp.ndarray:
    """Encoder self-attention: every non-pad key of the same segment.

    Returns:
      bool [B, 1, 1, S], or [B, 1, S, S] with segments.
    """
    if source_segments is None:
        return padding_mask(source_tokens, pad_id)
    return segment_mask(source_segments, source_segments)


def decoder_mask(target_tokens: jnp.ndarray, pad_id: int = 0,
                 target_segments: jnp.ndarray | None = None) -> jnp.ndarray:
    """Decoder self-attention: causal AND non-pad keys (AND same segment).

    For target tokens ``[[2, 9, 0]]``::

        [[1, 0, 0],
         [1, 1, 0],
         [1, 1, 0]]

    Returns:
      bool [B, 1, T, T].
    """
    causal = causal_mask(target_tokens.shape[-1])[None, None]          # [1, 1, T, T]
    if target_segments is None:
        return causal & padding_mask(target_tokens, pad_id)
    return causal & segment_mask(target_segments, target_segments)


def cross_mask(source_tokens: jnp.ndarray, pad_id: int = 0,
               target_segments: jnp.ndarray | None = None,
               source_segments: jnp.ndarray | None = None) -> jnp.ndarray:
    """Encoder–decoder attention: non-pad source keys (of the query's own segment).

    A query row of target padding needs no mask of its own: its output is never used.
    For source tokens ``[[5, 7, 0]]`` every query row reads::

        [[1, 1, 0]]

    Returns:
      bool [B, 1, 1, S], or [B, 1, T, S] with segments.
    """
    if target_segments is None or source_segments is None:
        return padding_mask(source_tokens, pad_id)
    return segment_mask(target_segments, source_segments)


def cache_mask(positions: jnp.ndarray, cache_length: int, block_length: int = 1) -> jnp.ndarray:
    """Self-attention of a block of new tokens per row over a fixed-size key/value cache.

    Row b writes its block at slots ``positions[b] ..`` and query t of the block may see
    slots 0 .. positions[b] + t (the slots past it are stale or empty). For positions
    ``[1]``, a block of 2 and a cache of 4::

        [[1, 1, 0, 0],
         [1, 1, 1, 0]]

    Args:
      positions: int [B], the position of each row's first block token.
      cache_length: L, size of the cache buffers.
      block_length: T, tokens per row in the block.

    Returns:
      bool [B, 1, T, L].
    """
    slots = jnp.arange(cache_length)[None, None, :]                          # [1, 1, L]
    last_visible = positions[:, None] + jnp.arange(block_length)[None, :]    # [B, T]
    return (slots <= last_visible[:, :, None])[:, None, :, :]

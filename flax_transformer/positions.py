"""Sinusoidal positional encodings of the paper (section 3.5), as pure jnp functions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def sinusoidal_positions(length: int, d_model: int) -> jnp.ndarray:
    """The table PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(same).

    Sine and cosine are interleaved (even dimensions sine, odd dimensions cosine) as in
    the paper, not concatenated as half-and-half.

    Args:
      length: number of positions (rows).
      d_model: encoding width D (columns); may be odd, then the last column is a sine.

    Returns:
      float32 [length, D].
    """
    positions = np.arange(length, dtype=np.float64)[:, None]             # [L, 1]
    two_i = np.arange(0, d_model, 2, dtype=np.float64)[None, :]          # [1, ceil(D/2)]
    angles = positions / np.power(10000.0, two_i / d_model)              # [L, ceil(D/2)]
    table = np.zeros((length, d_model), dtype=np.float64)
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, : d_model // 2])
    return jnp.asarray(table, dtype=jnp.float32)


def positions_from_segments(segments: jnp.ndarray) -> jnp.ndarray:
    """Position of every token inside its own segment, restarting at 0 per segment.

    Used for packed rows: ``segments`` [B, T] holds 1, 1, 1, 2, 2, 0 (0 = padding) and the
    result is 0, 1, 2, 0, 1, 0.

    Args:
      segments: int [B, T], segment id per token (consecutive runs), 0 for padding.

    Returns:
      int32 [B, T].
    """
    index = jnp.arange(segments.shape[-1], dtype=jnp.int32)             # [T]
    is_start = jnp.concatenate(
        [jnp.ones_like(segments[..., :1], dtype=bool), segments[..., 1:] != segments[..., :-1]],
        axis=-1,
    )                                                                    # [B, T]
    start_index = jnp.where(is_start, index, 0)
    start_index = jax.lax.cummax(start_index, axis=start_index.ndim - 1)
    return (index - start_index).astype(jnp.int32)

"""Dropout's random bits: JAX's Threefry-2x32 hash written as elementwise lax ops.

``jax.random.bits`` is the same hash, but on a CPU JAX lowers Threefry as a rolled loop
and the "rbg" keys as an RngBitGenerator call; neither fuses with what consumes the bits,
so every dropout site wrote its bits to memory and read them back (6-8 % of a train
step, benchmarks/README.md). As plain additions, rotations and xors, the 20 rounds fuse
into the select that applies the mask. Same generator, same bits as
``jax.extend.random.threefry_2x32`` (tests/test_random_bits.py).

The hash is ~110 instructions per dropout site, so it is written in ``lax`` (no jnp
dtype promotion on every operation) and ``uint16_bits`` is jitted: a model with 32 sites
of two shapes traces and lowers it twice, not 32 times, and the step's program is half
the size it would be (start-up, benchmarks/README.md).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Threefry-2x32's rotation constants, four rounds each, alternating (Salmon et al. 2011).
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA


def _u32(value: int) -> np.uint32:
    return np.uint32(value)


def _rotate_left(x: jax.Array, bits: int) -> jax.Array:
    return lax.bitwise_or(lax.shift_left(x, _u32(bits)),
                          lax.shift_right_logical(x, _u32(32 - bits)))


def threefry_2x32(key0: jax.Array, key1: jax.Array, x0: jax.Array,
                  x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 with 20 rounds: (x0, x1) uint32 counters -> two uint32 words.

    Args:
      key0, key1: uint32 scalars, the key.
      x0, x1: uint32 arrays of one shape (or scalars, broadcast), the counter pair of
        each output.

    Returns:
      (y0, y1) of that shape; equal to ``threefry_2x32((key0, key1), concat(x0, x1))``
      split in two halves.
    """
    key0, key1, x0, x1 = (jnp.asarray(v, jnp.uint32) for v in (key0, key1, x0, x1))
    x0, x1 = jnp.broadcast_arrays(x0, x1)
    keys = (key0, key1, lax.bitwise_xor(lax.bitwise_xor(key0, key1), _u32(_PARITY)))
    x0, x1 = lax.add(x0, keys[0]), lax.add(x1, keys[1])
    for block in range(5):
        for bits in _ROTATIONS[block % 2]:
            x0 = lax.add(x0, x1)
            x1 = lax.bitwise_xor(_rotate_left(x1, bits), x0)
        x0 = lax.add(x0, keys[(block + 1) % 3])
        x1 = lax.add(x1, lax.add(keys[(block + 2) % 3], _u32(block + 1)))
    return x0, x1


@functools.partial(jax.jit, static_argnums=1)
def uint16_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform uint16 bits of ``shape`` from a PRNG key: four per Threefry counter.

    Counter (x0, c) gives elements 4c .. 4c + 3. A threefry key is the Threefry key and
    x0 = 0.

    An rbg key has four words. JAX seeds both halves alike and splits and folds each half
    by Threefry on its own, so in every key JAX derives the halves are equal: the first
    half is the Threefry key (an rbg key gives the bits of the threefry key of the same
    seed). A key wrapped from other data, or an unsafe_rbg key, may have different
    halves: x0 is then a mix of their difference (0 when they are equal), so such keys
    still get streams of their own.
    """
    size = math.prod(shape)
    words = jax.random.key_data(key).reshape(-1)                          # [2] or [4]
    key0, key1 = words[0], words[1]
    x0 = _u32(0)
    if words.shape[0] == 4:
        x0 = lax.bitwise_xor(lax.bitwise_xor(words[2], key0),
                             _rotate_left(lax.bitwise_xor(words[3], key1), 16))
    elif words.shape[0] != 2:
        raise ValueError(f"uint16_bits needs a threefry2x32 or rbg key, got {words.shape[0]} "
                         "words of key data")
    counters = lax.iota(np.uint32, (size + 3) // 4)                      # [C]
    y0, y1 = threefry_2x32(key0, key1, x0, counters)                      # x0 broadcast
    halves = lax.bitcast_convert_type(jnp.stack([y0, y1], axis=-1), np.uint16)  # [C, 2, 2]
    return halves.reshape(-1)[:size].reshape(shape)

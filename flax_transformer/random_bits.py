"""Dropout's random bits: JAX's Threefry-2x32 hash written as elementwise jnp.

``jax.random.bits`` is the same hash, but on a CPU JAX lowers Threefry as a rolled loop
and the "rbg" keys as an RngBitGenerator call; neither fuses with what consumes the bits,
so every dropout site wrote its bits to memory and read them back (6-8 % of a train
step, benchmarks/README.md). As plain additions, rotations and xors, the 20 rounds fuse
into the select that applies the mask. Same generator, same bits as
``jax.extend.random.threefry_2x32`` (tests/test_random_bits.py).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Threefry-2x32's rotation constants, four rounds each, alternating (Salmon et al. 2011).
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA


def _rotate_left(x: jnp.ndarray, bits: int) -> jnp.ndarray:
    return (x << jnp.uint32(bits)) | (x >> jnp.uint32(32 - bits))


def threefry_2x32(key0: jnp.ndarray, key1: jnp.ndarray, x0: jnp.ndarray,
                  x1: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Threefry-2x32 with 20 rounds: (x0, x1) uint32 counters -> two uint32 words.

    Args:
      key0, key1: uint32 scalars, the key.
      x0, x1: uint32 arrays of one shape, the counter pair of each output.

    Returns:
      (y0, y1) of that shape; equal to ``threefry_2x32((key0, key1), concat(x0, x1))``
      split in two halves.
    """
    keys = (key0, key1, key0 ^ key1 ^ jnp.uint32(_PARITY))
    x0, x1 = x0 + keys[0], x1 + keys[1]
    for block in range(5):
        for bits in _ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, bits) ^ x0
        x0 = x0 + keys[(block + 1) % 3]
        x1 = x1 + keys[(block + 2) % 3] + jnp.uint32(block + 1)
    return x0, x1


def uint16_bits(key: jax.Array, shape: tuple[int, ...]) -> jnp.ndarray:
    """Uniform uint16 bits of ``shape`` from a PRNG key: four per Threefry counter.

    A threefry key is the Threefry key; an rbg key's 4 words become one by hashing its
    second pair under its first. Counter c gives elements 4c .. 4c + 3.
    """
    size = math.prod(shape)
    words = jax.random.key_data(key).reshape(-1, 2)                       # [W/2, 2]
    key0, key1 = words[0]
    for row in range(1, words.shape[0]):      # (an rbg key's two halves may be equal)
        key0, key1 = threefry_2x32(key0, key1, words[row, 0], words[row, 1])
    counters = jax.lax.iota(jnp.uint32, (size + 3) // 4)                  # [C]
    y0, y1 = threefry_2x32(key0, key1, jnp.zeros_like(counters), counters)
    halves = jax.lax.bitcast_convert_type(jnp.stack([y0, y1], axis=-1), jnp.uint16)
    return halves.reshape(-1)[:size].reshape(shape)                       # [C, 2, 2] -> shape

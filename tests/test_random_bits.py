"""random_bits.py: JAX's Threefry-2x32, bit for bit, and uniform 16-bit halves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32 as jax_threefry_2x32

from flax_transformer import random_bits


def test_threefry_is_jaxs_bit_for_bit():
    rng = np.random.default_rng(0)
    for _ in range(5):
        key = rng.integers(0, 2 ** 32, 2, dtype=np.uint32)
        x0, x1 = rng.integers(0, 2 ** 32, (2, 1000), dtype=np.uint32)
        y0, y1 = jax.jit(random_bits.threefry_2x32)(key[0], key[1], x0, x1)
        expected = jax_threefry_2x32(jnp.asarray(key), jnp.concatenate([x0, x1]))
        np.testing.assert_array_equal(np.concatenate([y0, y1]), expected)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_uint16_bits_are_uniform_and_depend_on_the_key(impl):
    shape = (37, 29, 11)                                   # not a multiple of 4
    bits = np.asarray(jax.jit(random_bits.uint16_bits, static_argnums=1)(
        jax.random.key(1, impl=impl), shape)).astype(np.int64)
    assert bits.shape == shape and bits.dtype == np.int64
    counts = np.bincount(bits.ravel() >> 12, minlength=16)   # 16 equal bins
    expected = bits.size / 16
    assert np.sum((counts - expected) ** 2 / expected) < 40   # chi² with 15 dof: p ≈ 5e-4
    assert abs(bits.mean() - 32767.5) < 5 * 18918 / np.sqrt(bits.size)
    neighbours = np.corrcoef(bits.ravel()[:-1], bits.ravel()[1:])[0, 1]
    assert abs(neighbours) < 5 / np.sqrt(bits.size)
    other = np.asarray(random_bits.uint16_bits(jax.random.key(2, impl=impl), shape))
    assert np.mean(other == bits) < 0.01
    again = np.asarray(random_bits.uint16_bits(jax.random.key(1, impl=impl), shape))
    np.testing.assert_array_equal(again, bits)

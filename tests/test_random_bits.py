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


def test_an_rbg_key_uses_its_first_half_and_keys_of_other_data_still_differ():
    shape = (6, 50)
    # JAX keeps an rbg key's halves equal (seeded alike, split and folded per half), so
    # the rbg key of a seed gives the bits of the threefry key of that seed ...
    for derive in (lambda key: key, lambda key: jax.random.fold_in(key, 7),
                   lambda key: jax.random.split(key)[1]):
        rbg = derive(jax.random.key(3, impl="rbg"))
        threefry = derive(jax.random.key(3, impl="threefry2x32"))
        words = jax.random.key_data(rbg)
        np.testing.assert_array_equal(words[:2], words[2:])
        np.testing.assert_array_equal(random_bits.uint16_bits(rbg, shape),
                                      random_bits.uint16_bits(threefry, shape))
    # ... and a key wrapped from other data, whichever second-half word differs, has a
    # stream of its own.
    base = np.array([1, 2, 1, 2], np.uint32)
    bits = random_bits.uint16_bits(jax.random.wrap_key_data(base, impl="rbg"), shape)
    for word in (2, 3):
        other = base.copy()
        other[word] += 1
        other_bits = random_bits.uint16_bits(jax.random.wrap_key_data(other, impl="rbg"), shape)
        assert np.mean(np.asarray(other_bits) == np.asarray(bits)) < 0.01


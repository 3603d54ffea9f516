"""masking.py: BERT's 15 % / 80-10-10 corruption, checked statistically and structurally."""

import jax
import jax.numpy as jnp
import numpy as np

from flax_transformer import masking

LOW, HIGH, MASK = 5, 1005, 4


def _corrupt(key, tokens, maskable=None, row_offset=0):
    maskable = tokens > MASK if maskable is None else maskable
    inputs, weights = masking.mask_tokens(key, tokens, maskable, mask_id=MASK, random_low=LOW,
                                          random_high=HIGH, row_offset=row_offset)
    return np.asarray(inputs), np.asarray(weights)


def _within(count, trials, probability, sigmas=5.0):
    """|count - n p| within ``sigmas`` binomial standard deviations."""
    std = np.sqrt(trials * probability * (1 - probability))
    return abs(count - trials * probability) <= sigmas * std


def test_proportions_are_15_percent_then_80_10_10():
    tokens = jnp.asarray(np.random.default_rng(0).integers(LOW, HIGH, (64, 512)), jnp.int32)
    inputs, weights = _corrupt(jax.random.key(0), tokens)
    chosen = weights > 0
    tokens = np.asarray(tokens)
    assert _within(chosen.sum(), tokens.size, 0.15)
    n = int(chosen.sum())
    masked = (inputs == MASK) & chosen
    unchanged = (inputs == tokens) & chosen
    replaced = chosen & ~masked & ~unchanged
    # A random replacement equals the original with probability 1 / (HIGH - LOW).
    collide = 1.0 / (HIGH - LOW)
    assert _within(masked.sum(), n, 0.8)
    assert _within(replaced.sum(), n, 0.1 * (1 - collide))
    assert _within(unchanged.sum(), n, 0.1 + 0.1 * collide)
    assert np.all((inputs[replaced] >= LOW) & (inputs[replaced] < HIGH))


def test_only_chosen_positions_change_and_specials_never_do():
    rng = np.random.default_rng(1)
    tokens = rng.integers(LOW, HIGH, (16, 40)).astype(np.int32)
    tokens[:, 30:] = 0                      # padding
    tokens[:, 29] = 3                       # EOS
    inputs, weights = _corrupt(jax.random.key(1), jnp.asarray(tokens))
    assert not weights[:, 29:].any()
    np.testing.assert_array_equal(inputs[weights == 0], tokens[weights == 0])
    assert weights.sum() > 0


def test_a_sharded_batch_is_corrupted_as_the_whole_batch():
    tokens = jnp.asarray(np.random.default_rng(2).integers(LOW, HIGH, (8, 24)), jnp.int32)
    key = jax.random.key(7)
    whole = _corrupt(key, tokens)
    halves = [_corrupt(key, tokens[start:start + 4], row_offset=start) for start in (0, 4)]
    for index in range(2):
        np.testing.assert_array_equal(whole[index],
                                      np.concatenate([half[index] for half in halves]))


def test_the_key_decides_the_corruption():
    tokens = jnp.asarray(np.random.default_rng(3).integers(LOW, HIGH, (8, 64)), jnp.int32)
    first, again = _corrupt(jax.random.key(0), tokens), _corrupt(jax.random.key(0), tokens)
    other = _corrupt(jax.random.key(1), tokens)
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[1], other[1])

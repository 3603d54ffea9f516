"""Tests of search_rules.py: the n-gram ban and the sampling filters against references.

How every search applies them is tested in test_decoding.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_transformer import search_rules

VOCAB = 8


def test_filter_logits_top_p_keeps_the_smallest_sufficient_set():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    for top_p, kept in ((0.4, 1), (0.75, 2), (0.85, 3), (0.99, 4)):
        filtered = search_rules.filter_logits(jnp.asarray(logits), top_p=top_p)
        assert int(np.isfinite(filtered).sum()) == kept


def _repeated_ngram_reference(tokens, length, n):
    """Brute force: tokens v whose n-gram ending tokens[:length] + [v] occurs earlier."""
    written = [int(token) for token in tokens[:length]]
    banned = set()
    for token in range(VOCAB):
        sequence = [*written, token]
        grams = [tuple(sequence[i:i + n]) for i in range(len(sequence) - n + 1)]
        if grams and grams[-1] in grams[:-1]:
            banned.add(token)
    return banned


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_repeated_ngram_tokens_equal_a_brute_force_reference(n):
    rng = np.random.RandomState(n)
    # Few distinct tokens so that n-grams do repeat; the tail past length is garbage.
    tokens = rng.randint(4, 4 + (2 if n > 2 else 3), size=(200, 10)).astype(np.int32)
    lengths = rng.randint(0, 11, size=200)
    banned = jax.jit(jax.vmap(
        lambda row, length: search_rules.repeated_ngram_tokens(row[None], length, n, VOCAB)[0]))(
        tokens, lengths)
    hits = 0
    for row, length, row_banned in zip(tokens, lengths, np.asarray(banned), strict=True):
        expected = _repeated_ngram_reference(row, length, n)
        assert set(np.flatnonzero(row_banned)) == expected, (row, length)
        hits += bool(expected)
    assert hits > 10  # the reference bans something in many rows: a test with teeth

"""Scaled dot-product attention against a float64 NumPy reference of the paper's equation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from flax_transformer import attention


def reference_attention(query, key, value, mask=None):
    """softmax(Q K^T / sqrt(d_k)) V in float64; masked keys get probability 0."""
    query, key, value = (np.asarray(a, np.float64) for a in (query, key, value))
    logits = query @ key.T / np.sqrt(query.shape[-1])                   # [T, S]
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    weights = shifted / shifted.sum(axis=-1, keepdims=True)             # [T, S]
    return weights @ value, weights


def _random_qkv(seed, target_length=5, source_length=7, head_dim=8):
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(target_length, head_dim)).astype(np.float32)
    key = rng.normal(size=(source_length, head_dim)).astype(np.float32)
    value = rng.normal(size=(source_length, head_dim)).astype(np.float32)
    return query, key, value


@pytest.mark.parametrize("use_mask", [False, True])
def test_scaled_dot_product_attention_matches_reference(use_mask):
    query, key, value = _random_qkv(0)
    mask = np.random.default_rng(1).random((5, 7)) < 0.6 if use_mask else None
    if mask is not None:
        mask[:, 0] = True                                                # no empty rows here
    output, weights = attention.scaled_dot_product_attention(query, key, value, mask)
    expected_output, expected_weights = reference_attention(query, key, value, mask)
    assert output.shape == (5, 8) and weights.shape == (5, 7)
    diff = max(np.max(np.abs(output - expected_output)),
               np.max(np.abs(weights - expected_weights)))
    print(f"attention (mask={use_mask}) max |diff| vs float64 reference: {diff:.3e}")
    assert diff < 1e-5
    if mask is not None:
        assert np.all(np.asarray(weights)[~mask] == 0.0)


def test_scaled_dot_product_attention_uses_sqrt_dk_scale():
    # Scaling query by 2 must change the output exactly as the reference predicts; a
    # missing or wrong 1/sqrt(d_k) would fail the comparison with large logits.
    query, key, value = _random_qkv(2, head_dim=32)
    output, _ = attention.scaled_dot_product_attention(3 * query, key, value)
    expected, _ = reference_attention(3 * query, key, value)
    np.testing.assert_allclose(output, expected, atol=1e-5)


def test_fully_masked_row_gives_zeros_not_nan():
    query, key, value = _random_qkv(3, target_length=3, source_length=4)
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=bool)
    output, weights = (np.asarray(a) for a in
                       attention.scaled_dot_product_attention(query, key, value, mask))
    assert np.all(np.isfinite(output)) and np.all(np.isfinite(weights))
    np.testing.assert_array_equal(output[1], 0.0)
    np.testing.assert_array_equal(weights[1], 0.0)
    expected, _ = reference_attention(query[[0, 2]], key, value, mask[[0, 2]])
    np.testing.assert_allclose(output[[0, 2]], expected, atol=1e-5)
    grads = jax.grad(lambda q: attention.scaled_dot_product_attention(
        q, key, value, mask)[0].sum())(query)
    assert np.all(np.isfinite(grads))


def test_scaled_dot_product_attention_jit_equals_no_jit():
    query, key, value = _random_qkv(4)
    mask = np.tril(np.ones((5, 7), dtype=bool))
    eager = attention.scaled_dot_product_attention(query, key, value, mask)
    jitted = jax.jit(attention.scaled_dot_product_attention)(query, key, value, mask)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_multi_head_attention_equals_loop_over_batch_and_heads():
    rng = np.random.default_rng(5)
    batch, target_length, source_length, heads, head_dim = 3, 4, 6, 2, 8
    query = rng.normal(size=(batch, target_length, heads, head_dim)).astype(np.float32)
    key = rng.normal(size=(batch, source_length, heads, head_dim)).astype(np.float32)
    value = rng.normal(size=(batch, source_length, heads, head_dim)).astype(np.float32)
    # A per-example padding mask [B, 1, 1, S] that broadcasts over heads and queries.
    lengths = np.array([6, 3, 1])
    mask = (np.arange(source_length)[None, :] < lengths[:, None])[:, None, None, :]
    output, weights = attention.multi_head_attention(query, key, value, mask)
    assert output.shape == (batch, target_length, heads, head_dim)
    assert weights.shape == (batch, heads, target_length, source_length)
    for b in range(batch):
        for h in range(heads):
            expected_output, expected_weights = reference_attention(
                query[b, :, h], key[b, :, h], value[b, :, h],
                np.broadcast_to(mask[b, 0], (target_length, source_length)))
            np.testing.assert_allclose(output[b, :, h], expected_output, atol=1e-5)
            np.testing.assert_allclose(weights[b, h], expected_weights, atol=1e-6)


def test_multi_head_attention_without_mask_attends_everywhere():
    rng = np.random.default_rng(6)
    query, key, value = (rng.normal(size=(2, 3, 2, 4)).astype(np.float32) for _ in range(3))
    output, _ = attention.multi_head_attention(query, key, value)
    for b in range(2):
        for h in range(2):
            expected, _ = reference_attention(query[b, :, h], key[b, :, h], value[b, :, h])
            np.testing.assert_allclose(output[b, :, h], expected, atol=1e-5)


def test_split_merge_heads_round_trip_and_layout():
    inputs = jnp.arange(2 * 3 * 12, dtype=jnp.float32).reshape(2, 3, 12)
    split = attention.split_heads(inputs, 4)
    assert split.shape == (2, 3, 4, 3)
    # Head h holds the contiguous slice of features [h*K, (h+1)*K).
    np.testing.assert_array_equal(split[1, 2, 2], inputs[1, 2, 6:9])
    np.testing.assert_array_equal(attention.merge_heads(split), inputs)


@pytest.mark.parametrize("use_mask", [False, True])
def test_fused_xla_attention_equals_reference_values_and_gradients(use_mask):
    rng = np.random.default_rng(3)
    query, key, value = (jnp.asarray(rng.normal(size=(2, length, 3, 8)), jnp.float32)
                         for length in (5, 7, 7))
    mask = None
    if use_mask:                     # padded keys, a causal-like pattern, one empty row
        mask = jnp.asarray(rng.random((2, 1, 5, 7)) < 0.6).at[:, :, :, 0].set(True)
        mask = mask.at[1, :, 2, :].set(False)
    cotangent = jnp.asarray(rng.normal(size=(2, 5, 3, 8)), jnp.float32)

    def reference(q, k, v):
        return jnp.sum(attention.multi_head_attention(q, k, v, mask)[0] * cotangent)

    def fused(q, k, v):
        return jnp.sum(attention.fused_attention(q, k, v, mask, "xla") * cotangent)

    expected = attention.multi_head_attention(query, key, value, mask)[0]
    output = attention.fused_attention(query, key, value, mask, "xla")
    np.testing.assert_allclose(output, expected, atol=1e-5 * float(jnp.max(jnp.abs(expected))))
    if use_mask:
        assert float(jnp.max(jnp.abs(output[1, 2]))) == 0.0           # the empty row
    for ours, theirs in zip(jax.grad(fused, (0, 1, 2))(query, key, value),
                            jax.grad(reference, (0, 1, 2))(query, key, value), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5 * float(jnp.max(jnp.abs(theirs))))


def test_softmax_values_and_gradients_equal_jax_nn_softmax():
    logits = jax.random.normal(jax.random.key(0), (3, 4, 9)) * 4
    weights = jax.random.normal(jax.random.key(1), logits.shape)
    np.testing.assert_allclose(attention.softmax(logits), jax.nn.softmax(logits), atol=1e-7)
    ours = jax.grad(lambda x: jnp.sum(attention.softmax(x) * weights))(logits)
    expected = jax.grad(lambda x: jnp.sum(jax.nn.softmax(x) * weights))(logits)
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    with jax.enable_x64(True):
        check_grads(attention.softmax, (np.asarray(logits, np.float64),), order=2)


def test_masked_softmax_zeroes_masked_entries_and_fully_masked_rows():
    logits = jax.random.normal(jax.random.key(2), (2, 3, 5)) * 4
    mask = jax.random.bernoulli(jax.random.key(3), 0.6, logits.shape).at[0, 1].set(False)
    probabilities = attention.softmax(logits, mask)
    shifted = np.where(mask, np.exp(np.asarray(logits, np.float64)), 0.0)
    totals = shifted.sum(-1, keepdims=True)
    np.testing.assert_allclose(probabilities, shifted / np.where(totals > 0, totals, 1.0),
                               atol=1e-6)
    assert np.all(np.asarray(probabilities[0, 1]) == 0.0)
    weights = jax.random.normal(jax.random.key(4), logits.shape)
    gradient = jax.grad(lambda x: jnp.sum(attention.softmax(x, mask) * weights))(logits)
    assert np.all(np.isfinite(gradient)) and np.all(np.asarray(gradient)[~np.asarray(mask)] == 0)
    partial = np.asarray(mask).any(-1)
    expected = jax.grad(lambda x: jnp.sum(jnp.where(
        partial[..., None], jax.nn.softmax(jnp.where(mask, x, -1e30)), 0.0) * weights))(logits)
    np.testing.assert_allclose(gradient, expected, atol=1e-6)

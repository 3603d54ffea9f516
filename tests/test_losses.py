"""losses.py against float64 NumPy references written from the definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_transformer import losses


def _reference_smoothed(logits, targets, weights, smoothing):
    logits = logits.astype(np.float64)
    vocab = logits.shape[-1]
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    soft = np.full(logits.shape, smoothing / (vocab - 1))
    np.put_along_axis(soft, targets[..., None], 1.0 - smoothing, axis=-1)
    entropy = -np.sum(soft * np.log(np.where(soft > 0, soft, 1.0)), axis=-1)  # 0 log 0 = 0
    cross = -np.sum(soft * log_probs, axis=-1)
    return np.sum((cross - entropy) * weights), np.sum(weights)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothed_cross_entropy_matches_reference(smoothing):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32)
    targets = rng.integers(0, 11, (3, 5))
    weights = (rng.random((3, 5)) > 0.3).astype(np.float32)
    total, weight = losses.label_smoothed_cross_entropy(
        jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), smoothing)
    ref_total, ref_weight = _reference_smoothed(logits, targets, weights, smoothing)
    np.testing.assert_allclose(float(total), ref_total, rtol=1e-5)
    assert float(weight) == ref_weight


def test_smoothed_loss_is_zero_at_the_smoothed_distribution():
    vocab, smoothing = 7, 0.1
    soft = np.full((1, 1, vocab), smoothing / (vocab - 1))
    soft[0, 0, 3] = 1 - smoothing
    total, _ = losses.label_smoothed_cross_entropy(
        jnp.log(jnp.asarray(soft, jnp.float32)), jnp.array([[3]]), jnp.ones((1, 1)), smoothing)
    assert abs(float(total)) < 1e-5


def test_padding_weights_exclude_tokens():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(1, 4, 6)), jnp.float32)
    targets = jnp.array([[1, 2, 3, 0]])
    full, _ = losses.label_smoothed_cross_entropy(logits[:, :3], targets[:, :3],
                                                  jnp.ones((1, 3)), 0.1)
    masked, weight = losses.label_smoothed_cross_entropy(logits, targets,
                                                         jnp.array([[1.0, 1, 1, 0]]), 0.1)
    np.testing.assert_allclose(float(full), float(masked), rtol=1e-6)
    assert float(weight) == 3.0


def test_token_metrics_nll_and_accuracy():
    logits = jnp.array([[[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]]])
    targets = jnp.array([[0, 1]])
    metrics = losses.token_metrics(logits, targets, jnp.ones((1, 2)))
    log_probs = np.log(np.exp([[2.0, 0, 0], [0, 0, 3.0]]) /
                       np.exp([[2.0, 0, 0], [0, 0, 3.0]]).sum(-1, keepdims=True))
    np.testing.assert_allclose(float(metrics["nll"][0]), -(log_probs[0, 0] + log_probs[1, 1]),
                               rtol=1e-6)
    assert float(metrics["accuracy"][0]) == 1.0 and float(metrics["accuracy"][1]) == 2.0


def test_accuracy_counts_the_first_largest_logit_as_argmax_does():
    logits = jnp.array([[[1.0, 3.0, 3.0], [5.0, 5.0, 0.0], [0.0, 1.0, 2.0]]])
    metrics = losses.token_metrics(logits, jnp.array([[2, 0, 2]]), jnp.ones((1, 3)))
    expected = np.sum(np.argmax(np.asarray(logits), -1) == np.array([[2, 0, 2]]))
    assert float(metrics["accuracy"][0]) == expected == 2.0


def test_accuracy_matches_argmax_under_many_ties():
    rng = np.random.default_rng(7)
    logits = rng.integers(0, 3, (4, 50, 5)).astype(np.float32)  # most rows tie
    targets = rng.integers(0, 5, (4, 50))
    weights = (rng.random((4, 50)) < 0.8).astype(np.float32)
    metrics = jax.jit(losses.token_metrics)(jnp.asarray(logits), jnp.asarray(targets),
                                            jnp.asarray(weights))
    expected = np.sum((np.argmax(logits, -1) == targets) * weights)
    assert 20 < expected < weights.sum() - 20  # both outcomes occur
    assert float(metrics["accuracy"][0]) == expected


def test_smoothed_loss_gradient_is_softmax_minus_smoothed_targets():
    rng = np.random.default_rng(4)
    logits = jnp.asarray(rng.normal(size=(2, 3, 9)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 9, (2, 3)))
    gradient = jax.grad(lambda x: losses.label_smoothed_cross_entropy(
        x, targets, jnp.ones((2, 3)), 0.1)[0])(logits)
    soft = np.full((2, 3, 9), 0.1 / 8)
    np.put_along_axis(soft, np.asarray(targets)[..., None], 0.9, axis=-1)
    np.testing.assert_allclose(gradient, jax.nn.softmax(logits) - soft, atol=1e-6)

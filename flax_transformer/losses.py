"""Label-smoothed cross-entropy and token metrics as (sum, weight) pairs; pure jnp."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def label_smoothed_cross_entropy(
    logits: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray, smoothing: float
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Cross-entropy against (1 - ε) on the target and ε / (V - 1) on every other token.

    The entropy of the smoothed distribution is subtracted, so a perfect model scores 0
    (the loss is the KL divergence to the smoothed targets, as in tensor2tensor).

    Args:
      logits: float [B, T, V].
      targets: int [B, T].
      weights: float [B, T], 1 for real tokens and 0 for padding.
      smoothing: ε_ls in [0, 1).

    Returns:
      (sum of per-token losses, sum of weights), both scalars.
    """
    vocab_size = logits.shape[-1]
    confidence = 1.0 - smoothing
    low = smoothing / (vocab_size - 1)
    normalizer = -(confidence * jnp.log(confidence) + (vocab_size - 1) * low * jnp.log(low + 1e-20))
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)          # [B, T, V]
    target_log_probs = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    mean_log_probs = jnp.sum(log_probs, axis=-1)                                   # [B, T]
    per_token = -(confidence - low) * target_log_probs - low * mean_log_probs - normalizer
    return jnp.sum(per_token * weights), jnp.sum(weights)


def token_metrics(logits: jnp.ndarray, targets: jnp.ndarray,
                  weights: jnp.ndarray) -> dict[str, tuple[jnp.ndarray, jnp.ndarray]]:
    """Negative log-likelihood (for perplexity) and accuracy as (sum, weight) pairs.

    Args:
      logits: float [B, T, V]; targets: int [B, T]; weights: float [B, T].

    Returns:
      {"nll": (sum, weight), "accuracy": (sum, weight)}.
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]     # [B, T]
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    weight = jnp.sum(weights)
    return {"nll": (jnp.sum(nll * weights), weight),
            "accuracy": (jnp.sum(correct * weights), weight)}

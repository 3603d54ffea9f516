"""Scaled dot-product attention (section 3.2) and head split/merge, as pure functions.

``scaled_dot_product_attention`` is written for one example and one head, exactly as the
paper's equation reads; ``multi_head_attention`` vmaps it over heads and batch. That is the
definition (``model.attention = "reference"``); ``fused_attention`` computes the same
function through ``jax.nn.dot_product_attention`` ("xla", or "cudnn": flash attention on a
GPU), which returns no attention weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def softmax(logits: jnp.ndarray, mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """exp(x) / Σ exp(x) over the last axis, counting only where ``mask`` is True.

    Masked entries get 0, and a row with no True entry gets all zeros (not NaN). The
    derivative is written in terms of the output p, dp = p · (dx - Σ p · dx), so a
    training step keeps only p for its backward pass. (``jax.nn.softmax`` does that only
    under the ``jax_softmax_custom_jvp`` flag, off by default in jax 0.10: autodiff of the
    division kept the exponentials and 1/Σ broadcast to [T, S] as well, and zeroing a
    fully masked row afterwards kept a second [T, S] array: 2 MiB each per attention in a
    base step.)

    Args:
      logits: float [..., S].
      mask: bool broadcastable to logits, True = counts; None = everywhere.

    Returns:
      probabilities [..., S], each row summing to 1 (or 0 where fully masked).
    """
    return _masked_softmax(logits, jnp.ones((), bool) if mask is None else mask)


@jax.custom_jvp
def _masked_softmax(logits: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    logits = jnp.where(mask, logits, -jnp.inf)
    largest = jnp.max(logits, axis=-1, keepdims=True)                   # -inf: fully masked
    unnormalized = jnp.exp(logits - jnp.where(jnp.isfinite(largest), largest, 0.0))
    total = jnp.sum(unnormalized, axis=-1, keepdims=True)
    return unnormalized / jnp.where(total > 0, total, 1.0)


@_masked_softmax.defjvp
def _masked_softmax_jvp(primals, tangents):
    (logits, mask), (logits_dot, _) = primals, tangents
    probabilities = _masked_softmax(logits, mask)
    return probabilities, probabilities * (
        logits_dot - jnp.sum(probabilities * logits_dot, axis=-1, keepdims=True))


def scaled_dot_product_attention(
    query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray, mask: jnp.ndarray | None = None
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """softmax(Q Kᵀ / √d_k) V for one example and one head.

    A query row whose keys are all masked gets zero weights and a zero output (not NaN).

    Args:
      query: [T, K].
      key: [S, K].
      value: [S, K].
      mask: bool [T, S] (or broadcastable), True = may attend; None = attend everywhere.

    Returns:
      output [T, K] and attention weights [T, S] (float32).
    """
    scale = jnp.sqrt(jnp.asarray(query.shape[-1], dtype=jnp.float32))
    logits = jnp.einsum("tk,sk->ts", query, key, preferred_element_type=jnp.float32)
    logits = logits / scale                                              # [T, S]
    weights = softmax(logits, mask)                                      # [T, S]
    output = jnp.einsum("ts,sk->tk", weights.astype(value.dtype), value)
    return output, weights


# One head -> H heads (axis 1 of [T, H, K]) -> B examples.
_over_heads = jax.vmap(scaled_dot_product_attention, in_axes=(1, 1, 1, 0), out_axes=(1, 0))
_over_batch = jax.vmap(_over_heads, in_axes=(0, 0, 0, 0), out_axes=(0, 0))


def multi_head_attention(
    query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray, mask: jnp.ndarray | None = None
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Scaled dot-product attention for every example and head in parallel.

    Args:
      query: [B, T, H, K].
      key: [B, S, H, K].
      value: [B, S, H, K].
      mask: bool broadcastable to [B, H, T, S]; None = attend everywhere.

    Returns:
      output [B, T, H, K] and weights [B, H, T, S].
    """
    batch, target_length, heads, _ = query.shape
    source_length = key.shape[1]
    if mask is None:
        mask = jnp.ones((1, 1, 1, 1), dtype=bool)
    mask = jnp.broadcast_to(mask, (batch, heads, target_length, source_length))
    return _over_batch(query, key, value, mask)


IMPLEMENTATIONS = ("reference", "xla", "cudnn")


def fused_attention(
    query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray, mask: jnp.ndarray | None,
    implementation: str,
) -> jnp.ndarray:
    """multi_head_attention's output through jax.nn.dot_product_attention.

    Same masks, same scale 1/√K; a query whose keys are all masked gets a zero output, as in
    the reference (the library would average the masked values instead).

    Args:
      query: [B, T, H, K]; key, value: [B, S, H, K].
      mask: bool broadcastable to [B, H, T, S], True = may attend; None = everywhere.
      implementation: "xla" (any backend) or "cudnn" (NVIDIA GPUs, float16/bfloat16).

    Returns:
      output [B, T, H, K].
    """
    if mask is None:
        return jax.nn.dot_product_attention(query, key, value, implementation=implementation)
    batch, target_length, heads, _ = query.shape
    mask = jnp.broadcast_to(mask, (batch, heads, target_length, key.shape[1]))
    output = jax.nn.dot_product_attention(query, key, value, mask=mask,
                                          implementation=implementation)
    has_key = jnp.any(mask, axis=-1).transpose(0, 2, 1)[..., None]          # [B, T, H, 1]
    return jnp.where(has_key, output, jnp.zeros((), output.dtype))


def split_heads(inputs: jnp.ndarray, num_heads: int) -> jnp.ndarray:
    """[B, T, D] -> [B, T, H, K] with K = D / H."""
    batch, length, d_model = inputs.shape
    return inputs.reshape(batch, length, num_heads, d_model // num_heads)


def merge_heads(inputs: jnp.ndarray) -> jnp.ndarray:
    """[B, T, H, K] -> [B, T, H·K]."""
    batch, length, heads, head_dim = inputs.shape
    return inputs.reshape(batch, length, heads * head_dim)

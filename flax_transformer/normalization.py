"""Layer normalization over the last axis, with its gradient written out.

``layer_norm(x) = (x - mean(x)) / sqrt(var(x) + ε) · scale + bias``, per position over the
D features. Autodiff of Flax's ``nn.LayerNorm`` keeps several [..., D] arrays alive from
the forward pass to the backward one; XLA:CPU (jax 0.10) even materialises ``scale``
broadcast to [B, T, D] for every LayerNorm (2 MiB each in a base step, 30 LayerNorms). The
backward pass here needs only the normalized input x̂ and the per-position 1/σ:

    d_x = (g - mean(g) - x̂ · mean(g · x̂)) / σ,   g = d_out · scale,
    d_scale = Σ d_out · x̂,   d_bias = Σ d_out   (sums over every position).

Statistics and arithmetic are at least float32 (bfloat16 inputs are normalized in
float32); the output has the input's dtype. The values match Flax's
``nn.LayerNorm(use_fast_variance=False)`` up to float rounding (tests/test_normalization.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(inputs: Array, scale: Array, bias: Array, epsilon: float) -> Array:
    """inputs [..., D], scale [D], bias [D] -> [..., D] in inputs' dtype."""
    return _normalize(inputs, scale, bias, epsilon)[0]


def _normalize(inputs, scale, bias, epsilon):
    """(outputs, residuals): the function and, as it is, the VJP's forward rule."""
    compute = jnp.promote_types(inputs.dtype, jnp.float32)                     # bf16 -> f32
    features = inputs.astype(compute)                                          # [..., D]
    centered = features - jnp.mean(features, axis=-1, keepdims=True)
    inverse_std = jax.lax.rsqrt(jnp.mean(jnp.square(centered), axis=-1, keepdims=True)
                                + epsilon)                                     # [..., 1]
    normalized = centered * inverse_std                                        # x̂ [..., D]
    outputs = normalized * scale.astype(compute) + bias.astype(compute)
    # An empty array of the bias's dtype: residuals must be arrays, and d_bias needs it.
    bias_dtype = jnp.zeros((0,), bias.dtype)
    return outputs.astype(inputs.dtype), (normalized, inverse_std, scale, bias_dtype)


def _layer_norm_backward(epsilon, residuals, d_outputs):
    del epsilon  # inside inverse_std already
    normalized, inverse_std, scale, bias_dtype = residuals
    d_features = d_outputs.astype(normalized.dtype)                            # [..., D]
    positions = tuple(range(d_features.ndim - 1))
    d_scale = jnp.sum(d_features * normalized, axis=positions)                 # [D]
    d_bias = jnp.sum(d_features, axis=positions)                               # [D]
    scaled = d_features * scale.astype(normalized.dtype)                       # g [..., D]
    d_inputs = inverse_std * (scaled - jnp.mean(scaled, axis=-1, keepdims=True)
                              - normalized * jnp.mean(scaled * normalized, axis=-1,
                                                      keepdims=True))
    return (d_inputs.astype(d_outputs.dtype), d_scale.astype(scale.dtype),
            d_bias.astype(bias_dtype.dtype))


layer_norm.defvjp(_normalize, _layer_norm_backward)

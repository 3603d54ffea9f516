"""layer_norm: values and gradients against a float64 reference and against nn.LayerNorm."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from flax_transformer.config import ModelConfig
from flax_transformer.layers import layer_norm as layer_norm_module
from flax_transformer.normalization import layer_norm

EPSILON = 1e-6


def reference(x, scale, bias):
    """The formula in float64: (x - mean) / sqrt(var + ε) · scale + bias."""
    x, scale, bias = (np.asarray(a, np.float64) for a in (x, scale, bias))
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + EPSILON) * scale + bias


def _arrays(seed, shape=(3, 5, 16)):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * 3 + 2).astype(np.float32)
    scale = (1 + 0.3 * rng.normal(size=shape[-1:])).astype(np.float32)
    bias = (0.3 * rng.normal(size=shape[-1:])).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias)


def test_values_match_the_formula():
    x, scale, bias = _arrays(0)
    np.testing.assert_allclose(layer_norm(x, scale, bias, EPSILON), reference(x, scale, bias),
                               atol=2e-6)


def test_gradients_equal_autodiff_of_the_formula():
    x, scale, bias = _arrays(1)
    weights = jax.random.normal(jax.random.key(2), x.shape)

    def plain(x, scale, bias):
        mean = jnp.mean(x, -1, keepdims=True)
        variance = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(variance + EPSILON) * scale + bias

    ours = jax.grad(lambda *a: jnp.sum(layer_norm(*a, EPSILON) * weights), (0, 1, 2))
    autodiff = jax.grad(lambda *a: jnp.sum(plain(*a) * weights), (0, 1, 2))
    for got, expected in zip(ours(x, scale, bias), autodiff(x, scale, bias), strict=True):
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)


def test_gradients_match_finite_differences():
    with jax.enable_x64(True):
        x, scale, bias = (a.astype(jnp.float64) for a in _arrays(3, (2, 3, 8)))
        check_grads(lambda *a: layer_norm(*a, EPSILON), (x, scale, bias), order=2,
                    modes=["rev"])


def test_bfloat16_inputs_give_bfloat16_outputs_and_gradients():
    x, scale, bias = _arrays(4)
    x = x.astype(jnp.bfloat16)
    outputs, vjp = jax.vjp(lambda x, s, b: layer_norm(x, s, b, EPSILON), x, scale, bias)
    d_x, d_scale, d_bias = vjp(jnp.ones_like(outputs))
    assert (outputs.dtype, d_x.dtype, d_scale.dtype, d_bias.dtype) == (
        jnp.bfloat16, jnp.bfloat16, jnp.float32, jnp.float32)
    np.testing.assert_allclose(np.asarray(outputs, np.float32),
                               reference(np.asarray(x, np.float32), scale, bias), atol=0.05)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_module_has_nn_layernorm_parameters_and_values(dtype):
    config = ModelConfig(layer_norm_epsilon=EPSILON, dtype=dtype)
    x, scale, bias = _arrays(5)
    ours = layer_norm_module(config)
    flax_norm = nn.LayerNorm(epsilon=EPSILON, use_fast_variance=False, dtype=jnp.dtype(dtype))
    ours_params = ours.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours_params) == jax.tree.map(
        jnp.shape, flax_norm.init(jax.random.key(0), x))
    params = {"params": {"scale": scale, "bias": bias}}
    got, expected = ours.apply(params, x), flax_norm.apply(params, x)
    assert got.dtype == expected.dtype == jnp.dtype(dtype)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32),
                               atol=2e-6 if dtype == "float32" else 0.05)

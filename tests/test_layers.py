"""One full encoder and decoder layer against float64 NumPy equations of the paper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_transformer import masks
from flax_transformer.config import ModelConfig
from flax_transformer.layers import DecoderLayer, Dropout, Embedder, EncoderLayer, FeedForward
from flax_transformer.positions import sinusoidal_positions

EPSILON = 1e-6


def small_config(**changes) -> ModelConfig:
    values = dict(vocab_size=23, d_model=16, num_heads=4, d_ff=32, num_encoder_layers=1,
                  num_decoder_layers=1, max_length=16, dropout_rate=0.0,
                  layer_norm_epsilon=EPSILON)
    values.update(changes)
    config = ModelConfig(**values)
    config.validate()
    return config


# ----------------------------------------------------------------- float64 reference


def _f64(tree, config: ModelConfig):
    """float64 copies of our params, Dense kernels as [I, O] (x W) whatever the layout."""
    def convert(path, leaf):
        leaf = np.asarray(leaf, np.float64)
        is_kernel = jax.tree_util.keystr(path).endswith("['kernel']")
        return leaf.T if is_kernel and config.kernel_layout == "out_in" else leaf
    return jax.tree_util.tree_map_with_path(convert, tree)


def ref_layer_norm(x, params):
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + EPSILON) * params["scale"] + params["bias"]


def ref_linear(x, params):
    """x W + b (b absent for the paper's bias-free attention projections)."""
    return x @ params["kernel"] + params.get("bias", 0.0)


def ref_multi_head(queries_from, keys_from, params, mask, num_heads):
    """Concat(head_1..head_h) W^O with head_i = softmax(Q_i K_i^T / sqrt(d_k)) V_i.

    queries_from [B, T, D], keys_from [B, S, D], mask bool [B, T, S].
    """
    query = ref_linear(queries_from, params["query"])
    key = ref_linear(keys_from, params["key"])
    value = ref_linear(keys_from, params["value"])
    head_dim = query.shape[-1] // num_heads
    heads = []
    for h in range(num_heads):
        part = slice(h * head_dim, (h + 1) * head_dim)
        logits = query[..., part] @ key[..., part].transpose(0, 2, 1) / np.sqrt(head_dim)
        logits = np.where(mask, logits, -np.inf)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        heads.append(weights @ value[..., part])
    return ref_linear(np.concatenate(heads, axis=-1), params["output"])


def ref_feed_forward(x, params):
    """FFN(x) = max(0, x W1 + b1) W2 + b2."""
    return ref_linear(np.maximum(0.0, ref_linear(x, params["hidden"])), params["output"])


def ref_sublayer(x, sublayer, norm_params, norm):
    """post_ln: LayerNorm(x + Sublayer(x)); pre_ln: x + Sublayer(LayerNorm(x))."""
    if norm == "pre_ln":
        return x + sublayer(ref_layer_norm(x, norm_params))
    return ref_layer_norm(x + sublayer(x), norm_params)


def ref_encoder_layer(x, params, mask, num_heads, norm):
    hidden = ref_sublayer(
        x, lambda h: ref_multi_head(h, h, params["self_attention"], mask, num_heads),
        params["attention_residual"]["norm"], norm)
    return ref_sublayer(hidden, lambda h: ref_feed_forward(h, params["feed_forward"]),
                        params["feed_forward_residual"]["norm"], norm)


def ref_decoder_layer(y, encoded, params, self_mask, cross_mask, num_heads, norm):
    hidden = ref_sublayer(
        y, lambda h: ref_multi_head(h, h, params["self_attention"], self_mask, num_heads),
        params["self_residual"]["norm"], norm)
    hidden = ref_sublayer(
        hidden,
        lambda h: ref_multi_head(h, encoded, params["encoder_attention"], cross_mask,
                                 num_heads),
        params["cross_residual"]["norm"], norm)
    return ref_sublayer(hidden, lambda h: ref_feed_forward(h, params["feed_forward"]),
                        params["feed_forward_residual"]["norm"], norm)


# ----------------------------------------------------------------- tests


def _random_params(module, seed, *inputs):
    """Params of ``module`` drawn from N(0, 0.3²) (LayerNorm scales 1 + N(0, 0.3²)), so
    that every weight, bias and scale matters; shapes come from ``init`` without running it."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), *inputs)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.asarray(
            ("scale" in jax.tree_util.keystr(path)) + 0.3 * rng.normal(size=leaf.shape),
            jnp.float32),
        shapes)


def _inputs(seed, shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("norm, layout", [("post_ln", "out_in"), ("pre_ln", "out_in"),
                                          ("post_ln", "in_out")])
def test_encoder_layer_matches_paper_equations(norm, layout):
    config = small_config(norm=norm, kernel_layout=layout)
    inputs = _inputs(0, (2, 5, 16))
    source_tokens = np.array([[3, 4, 5, 6, 7], [3, 4, 5, 0, 0]])
    mask = masks.encoder_mask(source_tokens)                            # [B, 1, 1, S]
    layer = EncoderLayer(config)
    params = _random_params(layer, 2, inputs, mask)
    outputs = jax.jit(layer.apply)({"params": params}, inputs, mask)
    expected = ref_encoder_layer(np.float64(inputs), _f64(params, config),
                                 np.broadcast_to(mask[:, 0], (2, 5, 5)), 4, norm)
    diff = np.max(np.abs(np.asarray(outputs) - expected))
    print(f"EncoderLayer ({norm}) max |diff| vs float64 reference: {diff:.3e}")
    assert diff < 1e-5


@pytest.mark.parametrize("norm, layout", [("post_ln", "out_in"), ("pre_ln", "out_in"),
                                          ("post_ln", "in_out")])
def test_decoder_layer_matches_paper_equations(norm, layout):
    config = small_config(norm=norm, kernel_layout=layout)
    inputs, encoded = _inputs(3, (2, 4, 16)), _inputs(4, (2, 5, 16))
    source_tokens = np.array([[3, 4, 5, 6, 7], [3, 4, 0, 0, 0]])
    target_tokens = np.array([[2, 8, 9, 10], [2, 8, 9, 0]])
    self_mask = masks.decoder_mask(target_tokens)                       # [B, 1, T, T]
    cross = masks.cross_mask(source_tokens)              # [B, 1, 1, S]
    layer = DecoderLayer(config)
    params = _random_params(layer, 6, inputs, encoded, self_mask, cross)
    outputs, cache = jax.jit(layer.apply)({"params": params}, inputs, encoded, self_mask, cross)
    assert cache is None
    expected = ref_decoder_layer(np.float64(inputs), np.float64(encoded),
                                 _f64(params, config),
                                 np.asarray(self_mask[:, 0]),
                                 np.broadcast_to(cross[:, 0], (2, 4, 5)), 4, norm)
    diff = np.max(np.abs(np.asarray(outputs) - expected))
    print(f"DecoderLayer ({norm}) max |diff| vs float64 reference: {diff:.3e}")
    assert diff < 1e-5


@pytest.mark.parametrize("norm, blocks", [("post_ln", (4,)), ("post_ln", (1, 1, 1, 1)),
                                         ("pre_ln", (3, 1)), ("pre_ln", (1, 2, 1))])
def test_decoder_layer_with_a_cache_equals_it_without_for_blocks_of_any_length(norm, blocks):
    """Prefill (a block), one-token steps and training are one code path: same outputs."""
    config = small_config(norm=norm)
    inputs, encoded = _inputs(3, (2, 4, 16)), _inputs(4, (2, 5, 16))
    source_tokens = np.array([[3, 4, 5, 6, 7], [3, 4, 0, 0, 0]])
    self_mask = masks.causal_mask(4)[None, None]
    cross = masks.cross_mask(source_tokens)
    layer = DecoderLayer(config)
    variables = {"params": _random_params(layer, 6, inputs, encoded, self_mask, cross)}
    expected, _ = layer.apply(variables, inputs, encoded, self_mask, cross)
    cache = layer.apply(variables, 2, 6, encoded, method="init_cache")    # L = 6 > T
    start, pieces = 0, []
    for length in blocks:
        index = np.full((2,), start, np.int32)
        outputs, cache = layer.apply(variables, inputs[:, start:start + length], None,
                                     masks.cache_mask(index, 6, length), cross,
                                     cache=cache, cache_index=index)
        pieces.append(outputs)
        start += length
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), expected, atol=1e-5)


def test_feed_forward_is_relu_mlp():
    config = small_config()
    inputs = _inputs(7, (2, 3, 16))
    module = FeedForward(config)
    params = _random_params(module, 0, inputs)
    np.testing.assert_allclose(module.apply({"params": params}, inputs),
                               ref_feed_forward(np.float64(inputs), _f64(params, config)),
                               atol=1e-5)


def test_embedder_scales_by_sqrt_d_model_and_adds_positions():
    config = small_config()
    tokens = np.array([[5, 1, 7, 0], [2, 3, 4, 5]])
    module = Embedder(config)
    variables = {"params": _random_params(module, 0, tokens)}
    table = np.asarray(variables["params"]["embedding"]["embedding"], np.float64)
    expected = table[tokens] * np.sqrt(16) + np.asarray(sinusoidal_positions(4, 16))[None]
    np.testing.assert_allclose(module.apply(variables, tokens), expected, atol=1e-5)
    positions = np.array([[0, 1, 0, 1], [3, 2, 1, 0]])
    expected = table[tokens] * 4.0 + np.asarray(sinusoidal_positions(16, 16))[positions]
    np.testing.assert_allclose(module.apply(variables, tokens, positions), expected, atol=1e-5)


def test_dropout_is_active_only_when_not_deterministic():
    inputs = _inputs(8, (2, 5, 16))
    mask = jnp.ones((1, 1, 1, 5), bool)
    params = _random_params(EncoderLayer(small_config()), 0, inputs, mask)
    without = EncoderLayer(small_config(dropout_rate=0.0)).apply({"params": params}, inputs, mask)
    dropped = EncoderLayer(small_config(dropout_rate=0.5))
    same = dropped.apply({"params": params}, inputs, mask, deterministic=True)
    np.testing.assert_allclose(same, without, atol=1e-6)
    noisy = dropped.apply({"params": params}, inputs, mask, deterministic=False,
                          rngs={"dropout": jax.random.key(1)})
    assert np.max(np.abs(np.asarray(noisy) - np.asarray(without))) > 1e-2


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_keeps_each_element_with_probability_one_minus_rate_and_is_unbiased(rate):
    inputs = jnp.ones((64, 33, 16))                      # odd size per row: bit halves split
    outputs = np.asarray(Dropout(rate).apply({}, inputs, False,
                                             rngs={"dropout": jax.random.key(3)}))
    kept = outputs != 0
    keep_probability = 1 - round(rate * 2 ** 16) / 2 ** 16
    np.testing.assert_allclose(outputs[kept], 1 / keep_probability, rtol=1e-6)
    spread = 5 * np.sqrt(keep_probability * (1 - keep_probability) / kept.size)   # 5 sigma
    assert abs(kept.mean() - (1 - rate)) < spread
    assert abs(outputs.mean() - 1) < spread / keep_probability
    second = Dropout(rate).apply({}, inputs, False, rngs={"dropout": jax.random.key(4)})
    assert np.any((np.asarray(second) != 0) != kept)                 # the key matters

"""The three models: invariances, cached decoding, parameter counts, gradients, bf16."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_transformer import presets
from flax_transformer.config import ModelConfig
from flax_transformer.layers import Dropout
from flax_transformer.model import (
    DecoderOnly,
    EncoderOnly,
    Transformer,
    stack_layers,
    unstack_layers,
)
from flax_transformer.positions import positions_from_segments

VOCAB = 23


def small_config(**changes) -> ModelConfig:
    values = dict(vocab_size=VOCAB, d_model=16, num_heads=4, d_ff=32, num_encoder_layers=1,
                  num_decoder_layers=2, max_length=32, dropout_rate=0.1)
    values.update(changes)
    config = ModelConfig(**values)
    config.validate()
    return config


def random_tokens(seed, lengths, padded_length, first=None):
    """int [B, padded_length]: random ids 4..V-1 for each row's length, then padding 0."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((len(lengths), padded_length), np.int32)
    for row, length in enumerate(lengths):
        tokens[row, :length] = rng.integers(4, VOCAB, size=length)
        if first is not None:
            tokens[row, 0] = first
    return tokens


SOURCE = random_tokens(0, [6, 3, 1], 6)                # [B, S]
TARGET = random_tokens(1, [5, 2, 4], 5, first=2)       # [B, T], BOS-shifted


def random_params(shapes, seed):
    """float32 params for the shapes ``init`` gives: matrices ~ N(0, 1/rows), LayerNorm
    scales ~ 1 + N(0, 0.2²), biases ~ N(0, 0.2²) (non-zero so that each one is checked).
    Cheaper than compiling ``init`` for every configuration."""
    rng = np.random.default_rng(seed)

    def draw(path, shape):
        scale = shape.shape[0] ** -0.5 if len(shape.shape) == 2 else 0.2
        offset = 1.0 if "scale" in jax.tree_util.keystr(path) else 0.0
        return jnp.asarray(offset + scale * rng.normal(size=shape.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.cache
def build(kind, config):
    """(model, variables, jitted apply) of ``kind`` for ``config``, made once per session."""
    model = kind(config)
    example = {Transformer: (SOURCE, TARGET), DecoderOnly: (TARGET,), EncoderOnly: (SOURCE,)}
    shapes = jax.eval_shape(model.init, jax.random.key(0), *example[kind])["params"]
    return model, {"params": random_params(shapes, 0)}, jax.jit(model.apply)


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ----------------------------------------------------------------- invariances


def test_transformer_future_targets_do_not_change_past_logits():
    _, variables, apply = build(Transformer, small_config())
    full_target = random_tokens(2, [5, 5, 5], 5, first=2)
    logits = apply(variables, SOURCE, full_target)
    for t in range(4):
        changed = full_target.copy()
        changed[:, t + 1:] = random_tokens(3 + t, [4 - t] * 3, 4 - t)
        changed_logits = apply(variables, SOURCE, changed)
        assert _max_diff(changed_logits[:, : t + 1], logits[:, : t + 1]) < 1e-6
        assert _max_diff(changed_logits[:, t + 1:], logits[:, t + 1:]) > 1e-4


def test_decoder_only_future_tokens_do_not_change_past_logits():
    _, variables, apply = build(DecoderOnly, small_config())
    tokens = random_tokens(4, [5, 5, 5], 5)
    logits = apply(variables, tokens)
    for t in range(4):
        changed = tokens.copy()
        changed[:, t + 1:] = random_tokens(5 + t, [4 - t] * 3, 4 - t)
        changed_logits = apply(variables, changed)
        assert _max_diff(changed_logits[:, : t + 1], logits[:, : t + 1]) < 1e-6
        assert _max_diff(changed_logits[:, t + 1:], logits[:, t + 1:]) > 1e-4


def test_transformer_padding_does_not_change_non_pad_logits():
    _, variables, apply = build(Transformer, small_config())
    logits = apply(variables, SOURCE, TARGET)
    more_padding = apply(variables, np.pad(SOURCE, ((0, 0), (0, 3))),
                         np.pad(TARGET, ((0, 0), (0, 2))))
    for row, length in enumerate([5, 2, 4]):
        assert _max_diff(more_padding[row, :length], logits[row, :length]) < 1e-5


def test_transformer_all_padding_source_row_is_finite():
    _, variables, apply = build(Transformer, small_config())
    source = SOURCE.copy()
    source[2] = 0
    assert np.all(np.isfinite(apply(variables, source, TARGET)))


def test_encoder_only_padding_does_not_change_non_pad_outputs():
    _, variables, apply = build(EncoderOnly, small_config())
    logits, pooled = apply(variables, SOURCE)
    padded_logits, padded_pooled = apply(variables, np.pad(SOURCE, ((0, 0), (0, 4))))
    for row, length in enumerate([6, 3, 1]):
        assert _max_diff(padded_logits[row, :length], logits[row, :length]) < 1e-5
    assert _max_diff(padded_pooled, pooled) < 1e-5


def test_batch_equals_examples_one_by_one():
    _, variables, apply = build(Transformer, small_config())
    _, encoder_variables, encoder_apply = build(EncoderOnly, small_config())
    _, decoder_variables, decoder_apply = build(DecoderOnly, small_config())
    logits = apply(variables, SOURCE, TARGET)
    encoder_logits, pooled = encoder_apply(encoder_variables, SOURCE)
    decoder_logits = decoder_apply(decoder_variables, TARGET)
    for row in range(len(SOURCE)):
        one = slice(row, row + 1)
        assert _max_diff(apply(variables, SOURCE[one], TARGET[one])[0], logits[row]) < 1e-5
        alone_logits, alone_pooled = encoder_apply(encoder_variables, SOURCE[one])
        assert _max_diff(alone_logits[0], encoder_logits[row]) < 1e-5
        assert _max_diff(alone_pooled[0], pooled[row]) < 1e-5
        alone = decoder_apply(decoder_variables, TARGET[one])
        assert _max_diff(alone[0], decoder_logits[row]) < 1e-5


def test_transformer_jit_equals_no_jit():
    model, variables, apply = build(Transformer, small_config())
    eager = model.apply(variables, SOURCE, TARGET)
    assert eager.shape == (3, 5, VOCAB) and eager.dtype == jnp.float32
    assert _max_diff(eager, apply(variables, SOURCE, TARGET)) < 1e-5


def _pack(rows):
    """Packs token rows into one row: tokens, segments (1, 2, ...; 0 = pad), positions."""
    tokens = np.concatenate(rows)[None]
    segments = np.concatenate([np.full(len(r), i + 1) for i, r in enumerate(rows)])[None]
    segments[tokens == 0] = 0
    return tokens, segments, np.asarray(positions_from_segments(segments))


def test_transformer_packed_pairs_equal_pairs_run_separately():
    _, variables, apply = build(Transformer, small_config())
    sources = [np.array([5, 6, 7]), np.array([11, 12, 0])]     # a pad inside the row
    targets = [np.array([2, 8, 9, 10]), np.array([2, 13, 14, 0])]
    source, source_segments, source_positions = _pack(sources)
    target, target_segments, target_positions = _pack(targets)
    packed = apply(variables, source, target, source_segments, target_segments,
                   source_positions, target_positions)
    separately = apply(variables, np.stack(sources), np.stack(targets))  # one pair a row
    assert _max_diff(packed[0, :4], separately[0]) < 1e-5
    assert _max_diff(packed[0, 4:7], separately[1, :3]) < 1e-5


def test_decoder_only_packed_sequences_equal_sequences_run_separately():
    _, variables, apply = build(DecoderOnly, small_config())
    rows = [np.array([5, 6, 7, 8]), np.array([9, 10, 11])]
    tokens, segments, positions = _pack(rows)
    packed = apply(variables, tokens, segments, positions)
    alone = np.concatenate([apply(variables, row[None])[0] for row in rows])
    assert _max_diff(packed[0], alone) < 1e-5


# ----------------------------------------------------------------- cached decoding


def _assert_close_at_non_pad(cached, parallel, tokens, name):
    non_pad = tokens != 0
    diff = _max_diff(np.asarray(cached)[non_pad], np.asarray(parallel)[non_pad])
    print(f"cached decoding {name} max |diff| vs parallel decoder: {diff:.3e}")
    assert diff < 1e-5


def _one_position_at_a_time(model, variables, cache, tokens):
    """Feeds tokens [B, T] through extend one position at a time -> logits [B, T, V]."""
    def step(cache, position_tokens):
        logits, cache = model.apply(variables, position_tokens[:, None], cache,
                                    method="extend")
        return cache, logits[:, 0]

    _, logits = jax.lax.scan(step, cache, tokens.T)                     # [T, B, V]
    return logits.transpose(1, 0, 2)


def _two_blocks(model, variables, cache, tokens, split=3):
    """Feeds tokens [B, T] through extend as two blocks (a prefill, then the rest)."""
    first, cache = model.apply(variables, tokens[:, :split], cache, method="extend")
    rest, _ = model.apply(variables, tokens[:, split:], cache, method="extend")
    return jnp.concatenate([first, rest], axis=1)


@pytest.mark.parametrize("norm, share, tie", [("post_ln", True, True), ("pre_ln", False, False)])
def test_transformer_cached_decoding_equals_parallel_decoder(norm, share, tie):
    config = small_config(norm=norm, share_embeddings=share, tie_output=tie)
    model, variables, apply = build(Transformer, config)

    @jax.jit
    def cached_logits(variables):
        encoded = model.apply(variables, SOURCE, method="encode")
        # A cache longer than the target: its unused zero slots must stay masked.
        cache = model.apply(variables, encoded, SOURCE, TARGET.shape[1] + 3,
                            method="init_cache")
        return (_one_position_at_a_time(model, variables, cache, TARGET),
                _two_blocks(model, variables, cache, TARGET))

    parallel = apply(variables, SOURCE, TARGET)
    stepped, blocks = cached_logits(variables)
    name = f"Transformer {norm} share={share} tie={tie}"
    _assert_close_at_non_pad(stepped, parallel, TARGET, name)
    _assert_close_at_non_pad(blocks, parallel, TARGET, f"{name}, two blocks")


@pytest.mark.parametrize("norm, tie", [("post_ln", True), ("pre_ln", False)])
def test_decoder_only_cached_decoding_equals_parallel(norm, tie):
    model, variables, apply = build(DecoderOnly, small_config(norm=norm, tie_output=tie))

    @jax.jit
    def cached_logits(variables):
        cache = model.apply(variables, len(TARGET), TARGET.shape[1] + 2, method="init_cache")
        return (_one_position_at_a_time(model, variables, cache, TARGET),
                _two_blocks(model, variables, cache, TARGET))

    parallel = apply(variables, TARGET)
    stepped, blocks = cached_logits(variables)
    _assert_close_at_non_pad(stepped, parallel, TARGET, f"DecoderOnly {norm} tie={tie}")
    _assert_close_at_non_pad(blocks, parallel, TARGET, f"DecoderOnly {norm} tie={tie}, blocks")


# ----------------------------------------------------------------- parameter counts


def paper_parameter_count(model: ModelConfig) -> int:
    """Counts by hand from the paper's architecture (shared embedding, tied output).

    embedding       V·D                      (one matrix: source, target and output)
    attention       4·D·D                    (W^Q, W^K, W^V, W^O: plain matrices, no bias)
    feed-forward    D·F + F + F·D + D        (W1, b1, W2, b2)
    LayerNorm       2·D                      (scale and bias)
    encoder layer   attention + feed-forward + 2 LayerNorms
    decoder layer   2 attentions + feed-forward + 3 LayerNorms
    total           embedding + N_enc·encoder layer + N_dec·decoder layer

    base (V=37000, D=512, F=2048, N=6):  63,045,632;  big (D=1024, F=4096): 214,171,648.
    """
    d, f, v = model.d_model, model.d_ff, model.vocab_size
    attention = 4 * d * d
    feed_forward = d * f + f + f * d + d
    layer_norm = 2 * d
    encoder_layer = attention + feed_forward + 2 * layer_norm
    decoder_layer = 2 * attention + feed_forward + 3 * layer_norm
    return (v * d + model.num_encoder_layers * encoder_layer
            + model.num_decoder_layers * decoder_layer)


@pytest.mark.parametrize("preset, paper_millions", [("base", 65), ("big", 213)])
def test_parameter_counts_of_paper_presets(preset, paper_millions):
    model_config = dataclasses.replace(presets.PRESETS[preset]().model, vocab_size=37000)
    model_config.validate()
    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    shapes = jax.eval_shape(Transformer(model_config).init, jax.random.key(0), tokens, tokens)
    count = sum(leaf.size for leaf in jax.tree_util.tree_leaves(shapes["params"]))
    expected = paper_parameter_count(model_config)
    print(f"{preset}: {count:,} parameters (formula {expected:,}, paper {paper_millions}M)")
    assert abs(count - expected) <= 0.02 * expected
    assert count == expected                       # no parameter the paper does not have
    assert abs(count - paper_millions * 1e6) <= 0.05 * paper_millions * 1e6


# ----------------------------------------------------------------- gradients and dtypes


def _assert_every_leaf_has_gradient(loss_fn, params):
    grads = jax.jit(jax.grad(loss_fn))(params)
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    assert flat
    for path, grad in flat:
        name = jax.tree_util.keystr(path)
        assert np.all(np.isfinite(grad)), name
        assert np.any(np.asarray(grad) != 0), f"no gradient reaches {name}"


def _weighted(outputs, seed):
    """A loss that depends on every output element through random weights."""
    return jnp.sum(outputs * jax.random.normal(jax.random.key(seed), outputs.shape))


def test_gradients_reach_every_transformer_parameter():
    # Unshared, untied, pre-LN has every parameter the Transformer can have.
    config = small_config(norm="pre_ln", share_embeddings=False, tie_output=False)
    model, variables, _ = build(Transformer, config)
    _assert_every_leaf_has_gradient(
        lambda params: _weighted(model.apply({"params": params}, SOURCE, TARGET), 1),
        variables["params"])


def test_gradients_reach_every_encoder_only_parameter():
    model, variables, _ = build(EncoderOnly, small_config())

    def loss(params):
        logits, pooled = model.apply({"params": params}, SOURCE)
        return _weighted(logits, 1) + _weighted(pooled, 2)

    _assert_every_leaf_has_gradient(loss, variables["params"])


def test_gradients_reach_every_decoder_only_parameter():
    model, variables, _ = build(DecoderOnly, small_config())
    _assert_every_leaf_has_gradient(
        lambda params: _weighted(model.apply({"params": params}, TARGET), 3),
        variables["params"])


def test_bfloat16_compute_keeps_float32_params_and_close_logits():
    _, variables, apply = build(Transformer, small_config())
    bf16_model = Transformer(small_config(dtype="bfloat16", param_dtype="float32"))
    shapes = jax.eval_shape(bf16_model.init, jax.random.key(0), SOURCE, TARGET)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(shapes))
    reference = apply(variables, SOURCE, TARGET)
    logits = jax.jit(bf16_model.apply)(variables, SOURCE, TARGET)
    assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
    diff = _max_diff(logits, reference)
    scale = float(np.max(np.abs(reference)))
    print(f"bf16 vs f32 logits max |diff| {diff:.3e} (logit scale {scale:.2f})")
    assert 0.0 < diff < 0.05 * scale + 0.05                 # > 0: bf16 really computed


@pytest.mark.parametrize("norm", ["post_ln", "pre_ln"])
def test_xla_attention_gives_the_reference_logits_and_gradients(norm):
    """model.attention = "xla" (jax.nn.dot_product_attention) computes the same function,
    padding and causal masks included."""
    reference_model, variables, apply = build(Transformer, small_config(norm=norm))
    fused = Transformer(small_config(norm=norm, attention="xla"))

    def loss(apply_fn, params):
        return jnp.sum(apply_fn({"params": params}, SOURCE, TARGET) ** 2)

    expected = apply(variables, SOURCE, TARGET)
    logits = jax.jit(fused.apply)(variables, SOURCE, TARGET)
    assert _max_diff(logits, expected) < 1e-5 * float(jnp.max(jnp.abs(expected)))
    ours = jax.grad(functools.partial(loss, fused.apply))(variables["params"])
    theirs = jax.grad(functools.partial(loss, reference_model.apply))(variables["params"])
    for leaf, reference_leaf in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert _max_diff(leaf, reference_leaf) <= 1e-5 * float(jnp.max(jnp.abs(reference_leaf)))


# ----------------------------------------------------------------- scanned layers


EXAMPLES = {Transformer: (SOURCE, TARGET), DecoderOnly: (TARGET,), EncoderOnly: (SOURCE,)}


def _scanned_twin(kind, config):
    """(unrolled model, variables, scanned model, the same variables stacked)."""
    model, variables, _ = build(kind, config)
    scanned = kind(dataclasses.replace(config, scan_layers=True))
    return model, variables, scanned, {"params": stack_layers(variables["params"], config)}


@pytest.mark.parametrize("kind", [Transformer, DecoderOnly, EncoderOnly])
def test_stacked_parameters_are_the_scanned_models_tree(kind):
    config = small_config(num_encoder_layers=3, num_decoder_layers=2)
    _, variables, scanned, stacked = _scanned_twin(kind, config)
    shapes = jax.eval_shape(scanned.init, jax.random.key(0), *EXAMPLES[kind])["params"]
    assert jax.tree.structure(shapes) == jax.tree.structure(stacked["params"])
    assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, stacked["params"])
    for stack in ("encoder", "decoder"):
        if stack in shapes:
            assert set(shapes[stack]) - {"LayerNorm_0", "final_norm"} == {"layers"}
    back = unstack_layers(stacked["params"], config)
    assert jax.tree.structure(back) == jax.tree.structure(variables["params"])
    for leaf, original in zip(jax.tree.leaves(back), jax.tree.leaves(variables["params"]),
                              strict=True):
        np.testing.assert_array_equal(leaf, original)


@pytest.mark.parametrize("kind, norm", [(Transformer, "post_ln"), (Transformer, "pre_ln"),
                                        (DecoderOnly, "pre_ln"), (EncoderOnly, "post_ln")])
def test_scanned_layers_give_the_unrolled_outputs_and_gradients(kind, norm):
    """config.scan_layers changes how the layers run, not what they compute."""
    config = small_config(norm=norm, num_encoder_layers=2, num_decoder_layers=3)
    model, variables, scanned, stacked = _scanned_twin(kind, config)

    def loss(module, params):
        outputs = module.apply({"params": params}, *EXAMPLES[kind])
        return sum(jnp.sum(output ** 2) for output in jax.tree.leaves(outputs))

    expected = jax.jit(model.apply)(variables, *EXAMPLES[kind])
    outputs = jax.jit(scanned.apply)(stacked, *EXAMPLES[kind])
    for leaf, reference in zip(jax.tree.leaves(outputs), jax.tree.leaves(expected),
                               strict=True):
        assert _max_diff(leaf, reference) <= 1e-6 * float(jnp.max(jnp.abs(reference)))
    ours = jax.jit(jax.grad(functools.partial(loss, scanned)))(stacked["params"])
    theirs = jax.jit(jax.grad(functools.partial(loss, model)))(variables["params"])
    theirs = stack_layers(theirs, config)
    for leaf, reference in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert _max_diff(leaf, reference) <= 1e-5 * float(jnp.max(jnp.abs(reference)))


def test_scanned_transformer_decodes_with_the_unrolled_cache():
    """Decoding runs the scanned stack layer by layer: same per-layer caches, same logits."""
    config = small_config(num_decoder_layers=3)
    model, variables, scanned, stacked = _scanned_twin(Transformer, config)

    def cached(module, variables):
        encoded = module.apply(variables, SOURCE, method="encode")
        cache = module.apply(variables, encoded, SOURCE, TARGET.shape[1] + 1,
                             method="init_cache")
        return _one_position_at_a_time(module, variables, cache, TARGET), cache

    (logits, cache), (expected, expected_cache) = (jax.jit(cached, static_argnums=0)(*pair)
                                                   for pair in ((scanned, stacked),
                                                                (model, variables)))
    assert jax.tree.structure(cache) == jax.tree.structure(expected_cache)
    assert len(cache["layers"]) == 3
    _assert_close_at_non_pad(logits, expected, TARGET, "scanned Transformer")
    _assert_close_at_non_pad(logits, scanned.apply(stacked, SOURCE, TARGET), TARGET,
                             "scanned Transformer vs its own parallel decoder")


def test_scanned_layers_draw_their_own_dropout():
    """Each scanned layer draws its own dropout masks (split_rngs), as unrolled layers do."""
    config = small_config(num_encoder_layers=2, dropout_rate=0.5)
    _, _, scanned, stacked = _scanned_twin(EncoderOnly, config)

    def record_masks(next_fun, args, kwargs, context):
        outputs = next_fun(*args, **kwargs)
        if isinstance(context.module, Dropout) and context.method_name == "__call__":
            context.module.sow("intermediates", "kept", outputs != 0)
        return outputs

    def kept(key):
        with nn.intercept_methods(record_masks):
            _, state = scanned.apply(stacked, SOURCE, deterministic=False,
                                     rngs={"dropout": key}, mutable=["intermediates"])
        layers = state["intermediates"]["encoder"]["layers"]
        return [residual["dropout"]["kept"][0] for residual in
                (layers["attention_residual"], layers["feed_forward_residual"])]

    masks = kept(jax.random.key(1))           # [N=2, B, S, D] each
    for mask in masks:
        assert mask.shape[0] == 2 and 0.3 < float(jnp.mean(mask)) < 0.7
        assert float(jnp.mean(mask[0] != mask[1])) > 0.3      # layer 1 ≠ layer 0
    again, other = kept(jax.random.key(1)), kept(jax.random.key(2))
    for mask, same, different in zip(masks, again, other, strict=True):
        np.testing.assert_array_equal(mask, same)
        assert float(jnp.mean(mask != different)) > 0.3

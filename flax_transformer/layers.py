"""Flax Linen layers of the Transformer: wiring only, the math lives in attention.py.

Each layer has a full-sequence ``__call__`` and, where decoding needs it, a one-position
``decode_step`` over an explicit cache (plain dicts of arrays, no mutable collections).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_transformer import attention
from flax_transformer.config import ModelConfig
from flax_transformer.positions import sinusoidal_positions

Array = jnp.ndarray


def _dtypes(config: ModelConfig) -> dict:
    return {"dtype": jnp.dtype(config.dtype), "param_dtype": jnp.dtype(config.param_dtype)}


def dense(config: ModelConfig, features: int, name: str | None = None,
          use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.xavier_uniform(), name=name,
                    use_bias=use_bias, **_dtypes(config))


class Dropout(nn.Module):
    """nn.Dropout with 16 random bits per element instead of 32 (half the RNG work).

    An element is kept when its 16 bits are >= round(rate · 2^16) and then scaled by the
    inverse of that exact keep probability, so the output stays unbiased; the rate used
    differs from ``rate`` by less than 2^-17 (0.1 -> 0.099991).
    """

    rate: float

    @nn.compact
    def __call__(self, inputs: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return inputs
        threshold = min(round(self.rate * 2 ** 16), 2 ** 16 - 1)
        words = jax.random.bits(self.make_rng("dropout"), ((inputs.size + 1) // 2,), jnp.uint32)
        halves = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)[: inputs.size]
        keep = (halves >= jnp.uint16(threshold)).reshape(inputs.shape)
        scale = 2 ** 16 / (2 ** 16 - threshold)
        return jnp.where(keep, inputs * jnp.asarray(scale, inputs.dtype),
                         jnp.zeros((), inputs.dtype))


def layer_norm(config: ModelConfig) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_epsilon, **_dtypes(config))


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W^O, head_i = Attention(Q W_i^Q, ...)."""

    config: ModelConfig

    def setup(self):
        # The paper's projections W^Q, W^K, W^V, W^O are plain matrices. A key bias would
        # also be useless: it adds q·b to a whole row of logits, which softmax ignores.
        d_model = self.config.d_model
        self.query = dense(self.config, d_model, use_bias=False)
        self.key = dense(self.config, d_model, use_bias=False)
        self.value = dense(self.config, d_model, use_bias=False)
        self.output = dense(self.config, d_model, use_bias=False)

    def project_query(self, inputs: Array) -> Array:
        """[B, T, D] -> queries [B, T, H, K]."""
        return attention.split_heads(self.query(inputs), self.config.num_heads)

    def project_key_value(self, inputs: Array) -> tuple[Array, Array]:
        """[B, S, D] -> keys and values, each [B, S, H, K]."""
        heads = self.config.num_heads
        return (attention.split_heads(self.key(inputs), heads),
                attention.split_heads(self.value(inputs), heads))

    def attend(self, query: Array, key: Array, value: Array, mask: Array | None) -> Array:
        """Attention of projected heads, merged and projected back: [B, T, D].

        The reference implementation also records the weights [B, H, T, S] (sown as
        "intermediates"/"attention_weights"); the fused ones have none to record.
        """
        if self.config.attention == "reference":
            context, weights = attention.multi_head_attention(query, key, value, mask)
            self.sow("intermediates", "attention_weights", weights)
        else:
            context = attention.fused_attention(query, key, value, mask,
                                                self.config.attention)
        return self.output(attention.merge_heads(context))

    def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Array | None) -> Array:
        """inputs_q [B, T, D] attends to inputs_kv [B, S, D] -> [B, T, D]."""
        key, value = self.project_key_value(inputs_kv)
        return self.attend(self.project_query(inputs_q), key, value, mask)


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W1 + b1) W2 + b2, applied at every position."""

    config: ModelConfig

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        hidden = nn.relu(dense(self.config, self.config.d_ff, "hidden")(inputs))   # [B, T, F]
        return dense(self.config, self.config.d_model, "output")(hidden)           # [B, T, D]


class _Residual(nn.Module):
    """LayerNorm(x + Dropout(sublayer(x))) (post-LN) or x + Dropout(sublayer(LN(x))) (pre-LN)."""

    config: ModelConfig

    def setup(self):
        self.norm = layer_norm(self.config)
        self.dropout = Dropout(self.config.dropout_rate)

    def __call__(self, inputs: Array, sublayer: Callable[[Array], Array],
                 deterministic: bool) -> Array:
        if self.config.norm == "pre_ln":
            return inputs + self.dropout(sublayer(self.norm(inputs)), deterministic)
        return self.norm(inputs + self.dropout(sublayer(inputs), deterministic))


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each inside a residual + LayerNorm."""

    config: ModelConfig

    def setup(self):
        self.self_attention = MultiHeadAttention(self.config)
        self.feed_forward = FeedForward(self.config)
        self.attention_residual = _Residual(self.config)
        self.feed_forward_residual = _Residual(self.config)

    def __call__(self, inputs: Array, mask: Array, deterministic: bool = True) -> Array:
        """inputs [B, S, D], mask broadcastable to [B, H, S, S] -> [B, S, D]."""
        hidden = self.attention_residual(
            inputs, lambda x: self.self_attention(x, x, mask), deterministic)
        return self.feed_forward_residual(hidden, self.feed_forward, deterministic)


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention over the encoder (optional), feed-forward."""

    config: ModelConfig
    cross_attention: bool = True

    def setup(self):
        self.self_attention = MultiHeadAttention(self.config)
        self.self_residual = _Residual(self.config)
        if self.cross_attention:
            self.encoder_attention = MultiHeadAttention(self.config)
            self.cross_residual = _Residual(self.config)
        self.feed_forward = FeedForward(self.config)
        self.feed_forward_residual = _Residual(self.config)

    def __call__(self, inputs: Array, encoded: Array | None, self_mask: Array,
                 cross_mask: Array | None, deterministic: bool = True) -> Array:
        """inputs [B, T, D], encoded [B, S, D] -> [B, T, D]."""
        hidden = self.self_residual(
            inputs, lambda x: self.self_attention(x, x, self_mask), deterministic)
        if self.cross_attention:
            hidden = self.cross_residual(
                hidden, lambda x: self.encoder_attention(x, encoded, cross_mask), deterministic)
        return self.feed_forward_residual(hidden, self.feed_forward, deterministic)

    def cross_key_value(self, encoded: Array) -> tuple[Array, Array]:
        """Cross-attention keys and values [B, S, H, K], computed once per source."""
        return self.encoder_attention.project_key_value(encoded)

    def decode_step(self, inputs: Array, layer_cache: dict, positions: Array,
                    self_mask: Array, cross_mask: Array | None) -> tuple[Array, dict]:
        """One new position per row.

        Args:
          inputs: [B, 1, D], the embedded token at ``positions``.
          layer_cache: {"key", "value": [B, L, H, K]} (+ "cross_key", "cross_value"
            [B, S, H, K] when the layer has cross-attention).
          positions: int [B], cache slot to write.
          self_mask: bool [B, 1, 1, L] over cache slots; cross_mask: [B, 1, 1, S].

        Returns:
          outputs [B, 1, D] and the updated layer cache.
        """
        new_cache = dict(layer_cache)

        def self_attend(x: Array) -> Array:
            key, value = self.self_attention.project_key_value(x)          # [B, 1, H, K]
            new_cache["key"] = _write(layer_cache["key"], key, positions)
            new_cache["value"] = _write(layer_cache["value"], value, positions)
            query = self.self_attention.project_query(x)
            return self.self_attention.attend(query, new_cache["key"], new_cache["value"],
                                              self_mask)

        hidden = self.self_residual(inputs, self_attend, True)
        if self.cross_attention:
            hidden = self.cross_residual(
                hidden,
                lambda x: self.encoder_attention.attend(
                    self.encoder_attention.project_query(x), layer_cache["cross_key"],
                    layer_cache["cross_value"], cross_mask),
                True)
        return self.feed_forward_residual(hidden, self.feed_forward, True), new_cache


def _write(buffer: Array, update: Array, positions: Array) -> Array:
    """Writes update [B, 1, H, K] into buffer [B, L, H, K] at slot positions[b] per row."""
    def write_row(row_buffer, row_update, position):
        return jax.lax.dynamic_update_slice(row_buffer, row_update.astype(row_buffer.dtype),
                                            (position, 0, 0))
    return jax.vmap(write_row)(buffer, update, positions)


class Embedder(nn.Module):
    """Token embedding × √d_model + sinusoidal position, then dropout; also the tied output."""

    config: ModelConfig

    def setup(self):
        config = self.config
        self.embedding = nn.Embed(
            config.vocab_size, config.d_model,
            embedding_init=nn.initializers.normal(stddev=config.d_model ** -0.5),
            **_dtypes(config))
        self.dropout = Dropout(config.dropout_rate)

    def __call__(self, tokens: Array, positions: Array | None = None,
                 deterministic: bool = True) -> Array:
        """tokens int [B, T] (positions int [B, T], default 0..T-1) -> [B, T, D]."""
        config = self.config
        table = sinusoidal_positions(config.max_length, config.d_model)       # [P, D]
        if positions is None:
            position_codes = table[None, : tokens.shape[1]]
        else:
            position_codes = table[positions]
        embedded = self.embedding(tokens) * jnp.sqrt(jnp.float32(config.d_model))
        embedded = embedded + position_codes.astype(embedded.dtype)
        return self.dropout(embedded, deterministic)

    def attend(self, hidden: Array) -> Array:
        """Tied output projection: [B, T, D] -> logits [B, T, V]."""
        return self.embedding.attend(hidden)

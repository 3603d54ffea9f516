"""Flax Linen layers of the Transformer: wiring only, the math lives in attention.py.

Attention and the decoder layer take an optional cache (plain dicts of arrays, no
mutable collections) and return ``(outputs, cache)`` for a block of any length, so that
training, one-token decoding and a whole-prompt prefill run the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_transformer import attention, linear, normalization, random_bits
from flax_transformer.config import ModelConfig
from flax_transformer.positions import sinusoidal_positions

Array = jnp.ndarray


def _dtypes(config: ModelConfig) -> dict:
    return {"dtype": jnp.dtype(config.dtype), "param_dtype": jnp.dtype(config.param_dtype)}


def dense(config: ModelConfig, features: int, name: str | None = None,
          use_bias: bool = True) -> nn.Module:
    """x · W + b, W stored as ``config.kernel_layout`` says (same initial numbers either way)."""
    if config.kernel_layout == "out_in":
        return DenseOutIn(features, use_bias=use_bias, name=name,
                          custom_gradient=config.transposed_weight_gradients,
                          **_dtypes(config))
    dot_general = linear.dense_dot_general if config.transposed_weight_gradients else None
    return nn.Dense(features, kernel_init=nn.initializers.xavier_uniform(), name=name,
                    use_bias=use_bias, dot_general=dot_general, **_dtypes(config))


def _xavier_uniform_out_in(key: jax.Array, shape: tuple[int, int], dtype: Any) -> Array:
    """nn.Dense's xavier_uniform draw of the [I, O] kernel, stored transposed as [O, I]."""
    return nn.initializers.xavier_uniform()(key, shape[::-1], dtype).T


class DenseOutIn(nn.Module):
    """nn.Dense with its kernel stored [O, I] (``torch.nn.Linear``'s layout).

    ``outputs[..., O] = inputs[..., I] · kernel[O, I]ᵀ + bias[O]``. The weight gradient
    ``dY[O, T] · X[T, I]`` comes out in the kernel's own layout, so Adam reads it
    contiguously (linear.project_out_in); with ``custom_gradient`` off, autodiff's.
    """

    features: int
    use_bias: bool = True
    custom_gradient: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        kernel = self.param("kernel", _xavier_uniform_out_in,
                            (self.features, jnp.shape(inputs)[-1]), self.param_dtype)
        bias = (self.param("bias", nn.initializers.zeros_init(), (self.features,),
                           self.param_dtype) if self.use_bias else None)
        inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        product = linear.project_out_in if self.custom_gradient else linear.product_out_in
        outputs = product(inputs, kernel)                                   # [..., O]
        return outputs if bias is None else outputs + bias


class Dropout(nn.Module):
    """nn.Dropout with 16 random bits per element, from a Threefry that XLA fuses.

    An element is kept when its 16 bits are >= round(rate · 2^16) and then scaled by the
    inverse of that exact keep probability, so the output stays unbiased; the rate used
    differs from ``rate`` by less than 2^-17 (0.1 -> 0.099991). The bits are
    ``random_bits.uint16_bits`` of this site's key: JAX's Threefry-2x32, computed inside
    the fusion that applies the mask instead of by a separate generator call.
    """

    rate: float

    @nn.compact
    def __call__(self, inputs: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return inputs
        threshold = min(round(self.rate * 2 ** 16), 2 ** 16 - 1)
        bits = random_bits.uint16_bits(self.make_rng("dropout"), inputs.shape)
        keep = bits >= jnp.uint16(threshold)
        scale = 2 ** 16 / (2 ** 16 - threshold)
        return jnp.where(keep, inputs * jnp.asarray(scale, inputs.dtype),
                         jnp.zeros((), inputs.dtype))


class LayerNorm(nn.Module):
    """nn.LayerNorm's parameters ("scale" ones, "bias" zeros, [D]) around normalization.py.

    The same names and values as ``nn.LayerNorm`` (checkpoints load either way); its
    gradient keeps fewer arrays alive in a training step (normalization.py says which).
    """

    epsilon: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        features = inputs.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        return normalization.layer_norm(inputs.astype(self.dtype), scale, bias, self.epsilon)


def layer_norm(config: ModelConfig) -> LayerNorm:
    return LayerNorm(epsilon=config.layer_norm_epsilon, **_dtypes(config))


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W^O, head_i = Attention(Q W_i^Q, ...).

    One call serves training, one-token decoding and a whole-prompt prefill: without a
    cache the queries attend to ``inputs_kv``; with one, the block's keys and values are
    first written into the cache buffers at ``cache_index`` and the queries attend to
    the whole buffers (``mask`` hides the slots not yet written); with a cache and no
    ``inputs_kv`` (cross-attention while decoding), they attend to the cached keys.
    """

    config: ModelConfig

    def setup(self):
        # The paper's projections W^Q, W^K, W^V, W^O are plain matrices. A key bias would
        # also be useless: it adds q·b to a whole row of logits, which softmax ignores.
        d_model = self.config.d_model
        self.query = dense(self.config, d_model, use_bias=False)
        self.key = dense(self.config, d_model, use_bias=False)
        self.value = dense(self.config, d_model, use_bias=False)
        self.output = dense(self.config, d_model, use_bias=False)

    def key_value_cache(self, inputs_kv: Array) -> dict:
        """[B, S, D] -> {"key", "value": [B, S, H, K]}: a cache of fixed keys (cross-attention)."""
        heads = self.config.num_heads
        return {"key": attention.split_heads(self.key(inputs_kv), heads),
                "value": attention.split_heads(self.value(inputs_kv), heads)}

    def __call__(self, inputs_q: Array, inputs_kv: Array | None, mask: Array | None,
                 cache: dict | None = None,
                 cache_index: Array | None = None) -> tuple[Array, dict | None]:
        """inputs_q [B, T, D] attends to inputs_kv [B, S, D] (or to the cache) -> [B, T, D].

        Args:
          inputs_q: [B, T, D], a block of any length T.
          inputs_kv: [B, S, D]; None = the keys and values are the cache's.
          mask: bool broadcastable to [B, H, T, S] (S = L, the buffer length, with a cache).
          cache: None, or {"key", "value": [B, L, H, K]}.
          cache_index: int [B], the slot of the block's first token in each row; the block
            fills slots cache_index .. cache_index + T - 1.

        Returns:
          outputs [B, T, D] and the cache with this block written (None without a cache).
        """
        query = attention.split_heads(self.query(inputs_q), self.config.num_heads)
        if inputs_kv is None:
            key_value = cache
        else:
            key_value = self.key_value_cache(inputs_kv)                    # [B, S, H, K] each
            if cache is not None:
                key_value = {name: _write(cache[name], block, cache_index)
                             for name, block in key_value.items()}
                cache = key_value
        return self._attend(query, key_value["key"], key_value["value"], mask), cache

    def _attend(self, query: Array, key: Array, value: Array, mask: Array | None) -> Array:
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


def _write(buffer: Array, update: Array, index: Array) -> Array:
    """Writes update [B, T, H, K] into buffer [B, L, H, K] from slot index[b] of each row."""
    def write_row(row_buffer, row_update, start):
        return jax.lax.dynamic_update_slice(row_buffer, row_update.astype(row_buffer.dtype),
                                            (start, 0, 0))
    return jax.vmap(write_row)(buffer, update, index)


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W1 + b1) W2 + b2, applied at every position."""

    config: ModelConfig

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        hidden = nn.relu(dense(self.config, self.config.d_ff, "hidden")(inputs))   # [B, T, F]
        return dense(self.config, self.config.d_model, "output")(hidden)           # [B, T, D]


class _Residual(nn.Module):
    """LayerNorm(x + Dropout(sublayer(x))) (post-LN) or x + Dropout(sublayer(LN(x))) (pre-LN).

    ``sublayer(x) -> (output, aux)``; the residual returns ``(hidden, aux)`` so that an
    attention sublayer can hand its cache back.
    """

    config: ModelConfig

    def setup(self):
        self.norm = layer_norm(self.config)
        self.dropout = Dropout(self.config.dropout_rate)

    def __call__(self, inputs: Array, sublayer: Callable[[Array], tuple[Array, Any]],
                 deterministic: bool) -> tuple[Array, Any]:
        if self.config.norm == "pre_ln":
            output, aux = sublayer(self.norm(inputs))
            return inputs + self.dropout(output, deterministic), aux
        output, aux = sublayer(inputs)
        return self.norm(inputs + self.dropout(output, deterministic)), aux


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
        hidden, _ = self.attention_residual(
            inputs, lambda x: self.self_attention(x, x, mask), deterministic)
        return self.feed_forward_residual(
            hidden, lambda x: (self.feed_forward(x), None), deterministic)[0]


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention over the encoder (optional), feed-forward.

    The layer cache is {"self": {"key", "value": [B, L, H, K]}} (+ "cross": {"key",
    "value": [B, S, H, K]}, the encoder's keys and values, when the layer has
    cross-attention); see ``init_cache``.
    """

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
                 cross_mask: Array | None, deterministic: bool = True,
                 cache: dict | None = None,
                 cache_index: Array | None = None) -> tuple[Array, dict | None]:
        """A block of T positions: inputs [B, T, D], encoded [B, S, D] -> [B, T, D], cache.

        Args:
          encoded: the encoder output; None with a cache (its "cross" entry holds the keys).
          self_mask: bool broadcastable to [B, 1, T, T], or [B, 1, T, L] with a cache.
          cross_mask: bool broadcastable to [B, 1, T, S].
          cache, cache_index: None (training), or the layer cache and the slot int [B] of
            the block's first position (see MultiHeadAttention).

        Returns:
          outputs [B, T, D] and the updated layer cache (None without one).
        """
        cache = cache or {}
        hidden, self_cache = self.self_residual(
            inputs, lambda x: self.self_attention(x, x, self_mask, cache.get("self"),
                                                  cache_index), deterministic)
        new_cache = {"self": self_cache}
        if self.cross_attention:
            hidden, new_cache["cross"] = self.cross_residual(
                hidden, lambda x: self.encoder_attention(x, encoded, cross_mask,
                                                         cache.get("cross")), deterministic)
        outputs, _ = self.feed_forward_residual(
            hidden, lambda x: (self.feed_forward(x), None), deterministic)
        return outputs, (new_cache if self_cache is not None else None)

    def init_cache(self, batch_size: int, cache_length: int, encoded: Array | None) -> dict:
        """Zeroed self-attention buffers [B, L, H, K], plus the keys of ``encoded``."""
        config = self.config
        shape = (batch_size, cache_length, config.num_heads, config.head_dim)
        cache = {"self": {"key": jnp.zeros(shape, config.dtype),
                          "value": jnp.zeros(shape, config.dtype)}}
        if self.cross_attention:
            cache["cross"] = self.encoder_attention.key_value_cache(encoded)
        return cache


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
        if not self.config.transposed_weight_gradients:
            return self.embedding.attend(hidden)
        hidden, table = nn.dtypes.promote_dtype(hidden, self.embedding.embedding,
                                                dtype=self.embedding.dtype)
        return linear.attend(hidden, table)

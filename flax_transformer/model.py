"""The three models built from the same layers: encoder–decoder, encoder-only, decoder-only.

Wiring only: embeddings, stacks of layers, masks from ``masks.py``, the output
projection. Decoding goes through ``init_cache`` + ``decode_step`` with an explicit cache:

    cache = {"positions": int [B],                 # next position to write, per row
             "cross_mask": bool [B, 1, 1, S],      # encoder–decoder only
             "layers": ({"key", "value": [B, L, H, K],
                         "cross_key", "cross_value": [B, S, H, K]}, ...)}

Every leaf has the batch as its leading axis, so beam search can reorder it with one
gather.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from flax_transformer import masks
from flax_transformer.config import ModelConfig
from flax_transformer.layers import DecoderLayer, Embedder, EncoderLayer, dense, layer_norm

Array = jnp.ndarray


class EncoderStack(nn.Module):
    """N encoder layers (+ a final LayerNorm for pre-LN, whose residual stream is raw)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, hidden: Array, mask: Array, deterministic: bool = True) -> Array:
        for index in range(self.config.num_encoder_layers):
            hidden = EncoderLayer(self.config, name=f"layer_{index}")(hidden, mask, deterministic)
        if self.config.norm == "pre_ln":
            hidden = layer_norm(self.config)(hidden)
        return hidden


class DecoderStack(nn.Module):
    """N decoder layers, with or without cross-attention, full-sequence or one step."""

    config: ModelConfig
    cross_attention: bool = True

    def setup(self):
        self.layers = [DecoderLayer(self.config, self.cross_attention, name=f"layer_{index}")
                       for index in range(self.config.num_decoder_layers)]
        if self.config.norm == "pre_ln":
            self.final_norm = layer_norm(self.config)

    def _finish(self, hidden: Array) -> Array:
        return self.final_norm(hidden) if self.config.norm == "pre_ln" else hidden

    def __call__(self, hidden: Array, encoded: Array | None, self_mask: Array,
                 cross_mask: Array | None, deterministic: bool = True) -> Array:
        for layer in self.layers:
            hidden = layer(hidden, encoded, self_mask, cross_mask, deterministic)
        return self._finish(hidden)

    def init_layer_caches(self, batch_size: int, cache_length: int,
                          encoded: Array | None) -> tuple[dict, ...]:
        """Zeroed self-attention buffers, plus cross K/V computed once from ``encoded``."""
        config = self.config
        shape = (batch_size, cache_length, config.num_heads, config.head_dim)
        caches = []
        for layer in self.layers:
            layer_cache = {"key": jnp.zeros(shape, config.dtype),
                           "value": jnp.zeros(shape, config.dtype)}
            if self.cross_attention:
                layer_cache["cross_key"], layer_cache["cross_value"] = (
                    layer.cross_key_value(encoded))
            caches.append(layer_cache)
        return tuple(caches)

    def decode_step(self, hidden: Array, cache: dict) -> tuple[Array, dict]:
        """hidden [B, 1, D] at cache["positions"] -> [B, 1, D] and the advanced cache."""
        positions = cache["positions"]
        cache_length = cache["layers"][0]["key"].shape[1]
        self_mask = masks.cache_mask(positions, cache_length)                # [B, 1, 1, L]
        new_layers = []
        for layer, layer_cache in zip(self.layers, cache["layers"], strict=True):
            hidden, layer_cache = layer.decode_step(
                hidden, layer_cache, positions, self_mask, cache.get("cross_mask"))
            new_layers.append(layer_cache)
        new_cache = dict(cache, layers=tuple(new_layers), positions=positions + 1)
        return self._finish(hidden), new_cache


class _OutputProjection(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, hidden: Array, embedder: Embedder) -> Array:
        if self.config.tie_output:
            logits = embedder.attend(hidden)
        else:
            logits = dense(self.config, self.config.vocab_size, "projection")(hidden)
        return logits.astype(jnp.float32)                                    # [B, T, V]


class Transformer(nn.Module):
    """The encoder–decoder Transformer of "Attention Is All You Need"."""

    config: ModelConfig

    def setup(self):
        self.source_embedder = Embedder(self.config)
        if not self.config.share_embeddings:
            self.target_embedder = Embedder(self.config)
        self.encoder = EncoderStack(self.config)
        self.decoder = DecoderStack(self.config, cross_attention=True)
        self.output_projection = _OutputProjection(self.config)

    def _target(self) -> Embedder:
        return self.source_embedder if self.config.share_embeddings else self.target_embedder

    def encode(self, source_tokens: Array, source_segments: Array | None = None,
               source_positions: Array | None = None, deterministic: bool = True) -> Array:
        """source_tokens int [B, S] -> encoded [B, S, D]."""
        mask = masks.encoder_mask(source_tokens, self.config.pad_id, source_segments)
        hidden = self.source_embedder(source_tokens, source_positions, deterministic)
        return self.encoder(hidden, mask, deterministic)

    def decode(self, encoded: Array, source_tokens: Array, target_tokens: Array,
               source_segments: Array | None = None, target_segments: Array | None = None,
               target_positions: Array | None = None, deterministic: bool = True) -> Array:
        """Teacher-forced decoder: target_tokens int [B, T] (BOS-shifted) -> logits [B, T, V]."""
        pad_id = self.config.pad_id
        self_mask = masks.decoder_mask(target_tokens, pad_id, target_segments)
        cross = masks.cross_mask(target_tokens, source_tokens, pad_id, target_segments,
                                 source_segments)
        hidden = self._target()(target_tokens, target_positions, deterministic)
        hidden = self.decoder(hidden, encoded, self_mask, cross, deterministic)
        return self.output_projection(hidden, self._target())

    def __call__(self, source_tokens: Array, target_tokens: Array,
                 source_segments: Array | None = None, target_segments: Array | None = None,
                 source_positions: Array | None = None, target_positions: Array | None = None,
                 deterministic: bool = True) -> Array:
        """Logits [B, T, V]; logits[:, t] predict the target token after target_tokens[:, t]."""
        encoded = self.encode(source_tokens, source_segments, source_positions, deterministic)
        return self.decode(encoded, source_tokens, target_tokens, source_segments,
                           target_segments, target_positions, deterministic)

    def init_cache(self, encoded: Array, source_tokens: Array, max_length: int) -> dict:
        """A decode cache for outputs of up to ``max_length`` tokens (cross K/V filled)."""
        batch_size = source_tokens.shape[0]
        return {
            "positions": jnp.zeros((batch_size,), jnp.int32),
            "cross_mask": masks.padding_mask(source_tokens, self.config.pad_id),
            "layers": self.decoder.init_layer_caches(batch_size, max_length, encoded),
        }

    def decode_step(self, tokens: Array, cache: dict) -> tuple[Array, dict]:
        """tokens int [B] (the latest output per row) -> next-token logits [B, V], cache."""
        hidden = self._target()(tokens[:, None], cache["positions"][:, None])  # [B, 1, D]
        hidden, cache = self.decoder.decode_step(hidden, cache)
        return self.output_projection(hidden, self._target())[:, 0], cache


class DecoderOnly(nn.Module):
    """A GPT-like causal language model from the same decoder layers (no cross-attention)."""

    config: ModelConfig

    def setup(self):
        self.embedder = Embedder(self.config)
        self.decoder = DecoderStack(self.config, cross_attention=False)
        self.output_projection = _OutputProjection(self.config)

    def __call__(self, tokens: Array, segments: Array | None = None,
                 positions: Array | None = None, deterministic: bool = True) -> Array:
        """tokens int [B, T] -> next-token logits [B, T, V]."""
        self_mask = masks.decoder_mask(tokens, self.config.pad_id, segments)
        hidden = self.embedder(tokens, positions, deterministic)
        hidden = self.decoder(hidden, None, self_mask, None, deterministic)
        return self.output_projection(hidden, self.embedder)

    def init_cache(self, batch_size: int, max_length: int) -> dict:
        """An empty cache for sequences (prompt + continuation) of up to ``max_length``."""
        return {"positions": jnp.zeros((batch_size,), jnp.int32),
                "layers": self.decoder.init_layer_caches(batch_size, max_length, None)}

    def decode_step(self, tokens: Array, cache: dict) -> tuple[Array, dict]:
        """tokens int [B] at cache["positions"] -> next-token logits [B, V], cache."""
        hidden = self.embedder(tokens[:, None], cache["positions"][:, None])
        hidden, cache = self.decoder.decode_step(hidden, cache)
        return self.output_projection(hidden, self.embedder)[:, 0], cache


class EncoderOnly(nn.Module):
    """A BERT-like encoder: masked-token logits and a pooled first-position vector."""

    config: ModelConfig

    def setup(self):
        self.embedder = Embedder(self.config)
        self.encoder = EncoderStack(self.config)
        self.head_transform = dense(self.config, self.config.d_model)
        self.head_norm = layer_norm(self.config)
        self.head_bias = self.param("head_bias", nn.initializers.zeros, (self.config.vocab_size,))
        self.pooler = dense(self.config, self.config.d_model)

    def __call__(self, tokens: Array, segments: Array | None = None,
                 deterministic: bool = True) -> tuple[Array, Array]:
        """tokens int [B, S] -> token logits [B, S, V] and pooled [B, D]."""
        mask = masks.encoder_mask(tokens, self.config.pad_id, segments)
        hidden = self.encoder(self.embedder(tokens, None, deterministic), mask, deterministic)
        transformed = self.head_norm(nn.relu(self.head_transform(hidden)))
        logits = self.embedder.attend(transformed).astype(jnp.float32) + self.head_bias
        pooled = jnp.tanh(self.pooler(hidden[:, 0]))                          # [B, D]
        return logits, pooled

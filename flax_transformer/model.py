"""The three models built from the same layers: encoder–decoder, encoder-only, decoder-only.

Wiring only: embeddings, stacks of layers, masks from ``masks.py``, the output
projection. Training, one-token decoding and a whole-prompt prefill run the same
decoder code; decoding goes through ``init_cache`` + ``extend`` with an explicit cache:

    cache = {"positions": int [B],                 # next position to write, per row
             "cross_mask": bool [B, 1, 1, S],      # encoder–decoder only
             "layers": ({"self": {"key", "value": [B, L, H, K]},
                         "cross": {"key", "value": [B, S, H, K]}}, ...)}

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
    """N decoder layers, with or without cross-attention, over a block of any length."""

    config: ModelConfig
    cross_attention: bool = True

    def setup(self):
        self.layers = [DecoderLayer(self.config, self.cross_attention, name=f"layer_{index}")
                       for index in range(self.config.num_decoder_layers)]
        if self.config.norm == "pre_ln":
            self.final_norm = layer_norm(self.config)

    def __call__(self, hidden: Array, encoded: Array | None, self_mask: Array,
                 cross_mask: Array | None, deterministic: bool = True,
                 caches: tuple[dict, ...] | None = None,
                 cache_index: Array | None = None) -> tuple[Array, tuple[dict, ...] | None]:
        """hidden [B, T, D] -> [B, T, D] and the layer caches (None without them)."""
        new_caches = []
        for index, layer in enumerate(self.layers):
            hidden, layer_cache = layer(hidden, encoded, self_mask, cross_mask, deterministic,
                                        None if caches is None else caches[index], cache_index)
            new_caches.append(layer_cache)
        if self.config.norm == "pre_ln":
            hidden = self.final_norm(hidden)
        return hidden, (None if caches is None else tuple(new_caches))

    def init_caches(self, batch_size: int, cache_length: int,
                    encoded: Array | None) -> tuple[dict, ...]:
        """One cache per layer (see DecoderLayer.init_cache)."""
        return tuple(layer.init_cache(batch_size, cache_length, encoded)
                     for layer in self.layers)


class _OutputProjection(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, hidden: Array, embedder: Embedder) -> Array:
        if self.config.tie_output:
            logits = embedder.attend(hidden)
        else:
            logits = dense(self.config, self.config.vocab_size, "projection")(hidden)
        return logits.astype(jnp.float32)                                    # [B, T, V]


def _extend(decode_block, tokens: Array, cache: dict,
            lengths: Array | None) -> tuple[Array, dict]:
    """The cache bookkeeping of both decoders' ``extend``.

    ``decode_block(tokens [B, T], positions [B, T], self_mask, caches, cache_index)`` ->
    (logits [B, T, V], caches) is the model's own decoder, the one training runs.
    """
    positions = cache["positions"]                                          # [B]
    block = tokens.shape[1]
    cache_length = cache["layers"][0]["self"]["key"].shape[1]
    self_mask = masks.cache_mask(positions, cache_length, block)            # [B, 1, T, L]
    token_positions = positions[:, None] + jnp.arange(block)                # [B, T]
    logits, layers = decode_block(tokens, token_positions, self_mask, cache["layers"],
                                  positions)
    advance = block if lengths is None else lengths
    return logits, dict(cache, layers=layers, positions=positions + advance)


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

    def _decode_block(self, tokens: Array, positions: Array | None, encoded: Array | None,
                      self_mask: Array, cross_mask: Array, deterministic: bool,
                      caches: tuple[dict, ...] | None = None,
                      cache_index: Array | None = None) -> tuple[Array, tuple | None]:
        """The one decoder path: embed, decoder stack, output projection."""
        hidden = self._target()(tokens, positions, deterministic)
        hidden, caches = self.decoder(hidden, encoded, self_mask, cross_mask, deterministic,
                                      caches, cache_index)
        return self.output_projection(hidden, self._target()), caches

    def decode(self, encoded: Array, source_tokens: Array, target_tokens: Array,
               source_segments: Array | None = None, target_segments: Array | None = None,
               target_positions: Array | None = None, deterministic: bool = True) -> Array:
        """Teacher-forced decoder: target_tokens int [B, T] (BOS-shifted) -> logits [B, T, V]."""
        pad_id = self.config.pad_id
        self_mask = masks.decoder_mask(target_tokens, pad_id, target_segments)
        cross = masks.cross_mask(source_tokens, pad_id, target_segments, source_segments)
        return self._decode_block(target_tokens, target_positions, encoded, self_mask, cross,
                                  deterministic)[0]

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
            "cross_mask": masks.cross_mask(source_tokens, self.config.pad_id),
            "layers": self.decoder.init_caches(batch_size, max_length, encoded),
        }

    def extend(self, tokens: Array, cache: dict,
               lengths: Array | None = None) -> tuple[Array, dict]:
        """Decodes a block with the cache: one token per row, or a whole prompt.

        Args:
          tokens: int [B, T], written at positions cache["positions"] ... + T - 1.
          cache: from init_cache or an earlier call.
          lengths: int [B], how far each row's position advances (default T); the slots
            past it are overwritten by the next call.

        Returns:
          logits [B, T, V] and the advanced cache.
        """
        def decode_block(tokens, positions, self_mask, caches, cache_index):
            return self._decode_block(tokens, positions, None, self_mask, cache["cross_mask"],
                                      True, caches, cache_index)
        return _extend(decode_block, tokens, cache, lengths)


class DecoderOnly(nn.Module):
    """A GPT-like causal language model from the same decoder layers (no cross-attention)."""

    config: ModelConfig

    def setup(self):
        self.embedder = Embedder(self.config)
        self.decoder = DecoderStack(self.config, cross_attention=False)
        self.output_projection = _OutputProjection(self.config)

    def _decode_block(self, tokens: Array, positions: Array | None, self_mask: Array,
                      deterministic: bool, caches: tuple[dict, ...] | None = None,
                      cache_index: Array | None = None) -> tuple[Array, tuple | None]:
        hidden = self.embedder(tokens, positions, deterministic)
        hidden, caches = self.decoder(hidden, None, self_mask, None, deterministic, caches,
                                      cache_index)
        return self.output_projection(hidden, self.embedder), caches

    def __call__(self, tokens: Array, segments: Array | None = None,
                 positions: Array | None = None, deterministic: bool = True) -> Array:
        """tokens int [B, T] -> next-token logits [B, T, V]."""
        self_mask = masks.decoder_mask(tokens, self.config.pad_id, segments)
        return self._decode_block(tokens, positions, self_mask, deterministic)[0]

    def init_cache(self, batch_size: int, max_length: int) -> dict:
        """An empty cache for sequences (prompt + continuation) of up to ``max_length``."""
        return {"positions": jnp.zeros((batch_size,), jnp.int32),
                "layers": self.decoder.init_caches(batch_size, max_length, None)}

    def extend(self, tokens: Array, cache: dict,
               lengths: Array | None = None) -> tuple[Array, dict]:
        """tokens int [B, T] at cache["positions"] -> logits [B, T, V], cache (as
        Transformer.extend): one token per row, or a whole prompt in one call."""
        def decode_block(tokens, positions, self_mask, caches, cache_index):
            return self._decode_block(tokens, positions, self_mask, True, caches, cache_index)
        return _extend(decode_block, tokens, cache, lengths)


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

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

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_transformer import masks
from flax_transformer.config import ModelConfig
from flax_transformer.layers import DecoderLayer, Embedder, EncoderLayer, dense, layer_norm

Array = jnp.ndarray


class _ScannedEncoderLayer(EncoderLayer):
    """An EncoderLayer in the (carry, x) -> (carry, y) form of nn.scan."""

    def __call__(self, hidden: Array, mask: Array, deterministic: bool) -> tuple[Array, None]:
        return super().__call__(hidden, mask, deterministic), None


class _ScannedDecoderLayer(DecoderLayer):
    """A DecoderLayer (without cache) in the (carry, x) -> (carry, y) form of nn.scan."""

    def __call__(self, hidden: Array, encoded: Array | None, self_mask: Array,
                 cross_mask: Array | None, deterministic: bool) -> tuple[Array, None]:
        return super().__call__(hidden, encoded, self_mask, cross_mask, deterministic)[0], None


def _scanned(layer: type[nn.Module], num_layers: int, num_inputs: int) -> type[nn.Module]:
    """``layer`` applied num_layers times by one jax.lax.scan: its parameters (and sown
    intermediates) gain a leading layer axis [N, ...], each layer draws its own dropout,
    and every input but the carried hidden state is the same for all layers."""
    return nn.scan(layer, variable_axes={"params": 0, "intermediates": 0},
                   split_rngs={"params": True, "dropout": True},
                   in_axes=(nn.broadcast,) * num_inputs, length=num_layers)


def _layer_params(stacked: Any, index: int) -> Any:
    """Layer ``index`` of a scanned stack's parameters [N, ...] -> that layer's [...]."""
    return jax.tree.map(lambda leaf: leaf[index], stacked)


class EncoderStack(nn.Module):
    """N encoder layers (+ a final LayerNorm for pre-LN, whose residual stream is raw).

    The layers are "layer_0" … "layer_{N-1}", or with ``config.scan_layers`` one scanned
    "layers" whose parameters are stacked [N, ...] (``stack_layers`` converts).
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, hidden: Array, mask: Array, deterministic: bool = True) -> Array:
        config = self.config
        if config.scan_layers:
            layers = _scanned(_ScannedEncoderLayer, config.num_encoder_layers, 2)
            hidden, _ = layers(config, name="layers")(hidden, mask, deterministic)
        else:
            for index in range(config.num_encoder_layers):
                hidden = EncoderLayer(config, name=f"layer_{index}")(hidden, mask, deterministic)
        if config.norm == "pre_ln":
            hidden = layer_norm(config)(hidden)
        return hidden


class DecoderStack(nn.Module):
    """N decoder layers, with or without cross-attention, over a block of any length.

    With ``config.scan_layers`` the layers are one scanned "layers" (parameters [N, ...]);
    training runs the scan, and a call with caches (decoding) runs the layers one by one
    on slices of the stacked parameters, so the caches keep their per-layer layout.
    """

    config: ModelConfig
    cross_attention: bool = True

    def setup(self):
        config = self.config
        if config.scan_layers:
            self.scanned_layers = _scanned(_ScannedDecoderLayer, config.num_decoder_layers, 4)(
                config, self.cross_attention, name="layers")
        else:
            self.layers = [DecoderLayer(config, self.cross_attention, name=f"layer_{index}")
                           for index in range(config.num_decoder_layers)]
        if config.norm == "pre_ln":
            self.final_norm = layer_norm(config)

    def _layer_calls(self) -> list:
        """One callable per layer: ``call(method, *args)`` runs DecoderLayer.method."""
        if not self.config.scan_layers:
            return [functools.partial(_call_bound, layer) for layer in self.layers]
        stacked = self.scanned_layers.variables["params"]
        layer = DecoderLayer(self.config, self.cross_attention, parent=None)   # unbound
        return [functools.partial(_call_unbound, layer, _layer_params(stacked, index))
                for index in range(self.config.num_decoder_layers)]

    def __call__(self, hidden: Array, encoded: Array | None, self_mask: Array,
                 cross_mask: Array | None, deterministic: bool = True,
                 caches: tuple[dict, ...] | None = None,
                 cache_index: Array | None = None) -> tuple[Array, tuple[dict, ...] | None]:
        """hidden [B, T, D] -> [B, T, D] and the layer caches (None without them)."""
        if self.config.scan_layers and caches is None:
            hidden, _ = self.scanned_layers(hidden, encoded, self_mask, cross_mask,
                                            deterministic)
            new_caches = None
        else:
            new_caches = []
            for index, call in enumerate(self._layer_calls()):
                hidden, layer_cache = call(
                    "__call__", hidden, encoded, self_mask, cross_mask, deterministic,
                    None if caches is None else caches[index], cache_index)
                new_caches.append(layer_cache)
            new_caches = None if caches is None else tuple(new_caches)
        if self.config.norm == "pre_ln":
            hidden = self.final_norm(hidden)
        return hidden, new_caches

    def init_caches(self, batch_size: int, cache_length: int,
                    encoded: Array | None) -> tuple[dict, ...]:
        """One cache per layer (see DecoderLayer.init_cache)."""
        return tuple(call("init_cache", batch_size, cache_length, encoded)
                     for call in self._layer_calls())


def _call_bound(layer: nn.Module, method: str, *args):
    return getattr(layer, method)(*args)


def _call_unbound(layer: nn.Module, params: Any, method: str, *args):
    return layer.apply({"params": params}, *args, method=method)


def stack_layers(params: Any, model_config: ModelConfig) -> Any:
    """Parameters with "layer_0" … "layer_{N-1}" per stack -> the scanned layout.

    Each stack's layers become one "layers" entry whose leaves are stacked [N, ...]: the
    parameters of a ``scan_layers`` model with the same numbers. ``unstack_layers`` is the
    inverse. Both leave everything outside the stacks as it is.
    """
    params = dict(params)
    for stack, count in _stacks(params, model_config):
        layers = dict(params[stack])
        per_layer = [layers.pop(f"layer_{index}") for index in range(count)]
        layers["layers"] = jax.tree.map(lambda *leaves: jnp.stack(leaves), *per_layer)
        params[stack] = layers
    return params


def unstack_layers(params: Any, model_config: ModelConfig) -> Any:
    """The scanned layout (see ``stack_layers``) -> "layer_0" … "layer_{N-1}" per stack."""
    params = dict(params)
    for stack, count in _stacks(params, model_config):
        layers = dict(params[stack])
        stacked = layers.pop("layers")
        layers.update({f"layer_{index}": _layer_params(stacked, index)
                       for index in range(count)})
        params[stack] = layers
    return params


def unrolled(model: nn.Module, params: Any) -> tuple[nn.Module, Any]:
    """The same model and parameters in the unrolled layout ("layer_0" … per stack).

    Searches call this first: decoding a scanned stack would slice every layer's
    parameters out of the stacked ones at each output token (measured: 1.36 against
    0.87-1.1 s for 8 greedy base sentences on a 2-core CPU), unstacking once does not.
    """
    if not model.config.scan_layers:
        return model, params
    config = dataclasses.replace(model.config, scan_layers=False)
    return type(model)(config), unstack_layers(params, model.config)


def _stacks(params: Any, model_config: ModelConfig) -> list[tuple[str, int]]:
    counts = {"encoder": model_config.num_encoder_layers,
              "decoder": model_config.num_decoder_layers}
    return [(stack, count) for stack, count in counts.items() if stack in params]


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

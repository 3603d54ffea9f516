"""Models meet the searches: Transformer/DecoderOnly as ``tokens_to_logits``, compiled.

    translate_fn = translate.make_translate_fn(model, decode_config, bos_id=2, eos_id=3)
    found = translate.translate_all(translate_fn, params, sources, buckets=(8, 16, 32),
                                    tokens_per_batch=4096)        # one per input, in order
    found[0].tokens[0], found[0].log_probs[0], found[0].scores[0]  # its best hypothesis

``seq2seq_decoder`` encodes the sources once and fills every layer's cross-attention
keys; each search step is then one ``Transformer.extend`` over one token per row.
``lm_decoder`` does the same for a DecoderOnly, whose prompt is prefilled in one
``extend`` over the whole prompt. ``translate_all`` pads a file of sentences to the
buckets of ``data.batching`` (one compile per bucket) and restores the input order; both
decode.py (``inference.py``) and the validation BLEU (``evaluation.py``) go through it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_transformer import decoding
from flax_transformer.config import DecodeConfig, ModelConfig
from flax_transformer.data import batching
from flax_transformer.model import unrolled

Array = jnp.ndarray


# --------------------------------------------------------------------------- model adapters


def seq2seq_decoder(model: Any, params: Any, source_tokens: Array,
                    max_length: int) -> tuple[decoding.TokensToLogits, Any]:
    """Encodes the sources once and returns the Transformer as ``tokens_to_logits``.

    Args:
      model: a ``Transformer``.
      params: its "params" collection.
      source_tokens: int [B, S], right-padded.
      max_length: outputs of up to this many tokens (≤ model.config.max_length).

    Returns:
      (tokens_to_logits, initial cache): self-attention K/V buffers [B, max_length, H, K]
      and the cross-attention K/V computed once; every cache leaf has B leading.
    """
    model, params = unrolled(model, params)
    variables = {"params": params}
    encoded = model.apply(variables, source_tokens, method="encode")         # [B, S, D]
    cache = model.apply(variables, encoded, source_tokens, max_length, method="init_cache")
    return _one_token_at_a_time(model, variables), cache


def _one_token_at_a_time(model: Any, variables: dict) -> decoding.TokensToLogits:
    """tokens int [B] -> logits [B, V]: ``extend`` over a block of one token per row."""
    def tokens_to_logits(tokens, cache):
        logits, cache = model.apply(variables, tokens[:, None], cache, method="extend")
        return logits[:, 0], cache
    return tokens_to_logits


def lm_decoder(model: Any, params: Any, batch_size: int, max_length: int
               ) -> tuple[decoding.TokensToLogits, decoding.PromptToCache, Any]:
    """A ``DecoderOnly`` over sequences of up to max_length tokens.

    Returns:
      (tokens_to_logits, prompt_to_cache, empty cache); prompt_to_cache is one
      ``extend`` over a whole [B, P] prompt (see decoding.prefill).
    """
    model, params = unrolled(model, params)
    variables = {"params": params}
    cache = model.apply(variables, batch_size, max_length, method="init_cache")

    def prompt_to_cache(tokens, lengths, cache):
        return model.apply(variables, tokens, cache, lengths, method="extend")[1]
    return _one_token_at_a_time(model, variables), prompt_to_cache, cache


# --------------------------------------------------------------------------- translating


def output_length(source_length: int, decode_config: DecodeConfig,
                  model_config: ModelConfig) -> int:
    """Most output tokens for sources padded to source_length: S + max_extra_length, capped
    by the positions the model knows."""
    return min(source_length + decode_config.max_extra_length, model_config.max_length)


def translate(model: Any, params: Any, source_tokens: Array, decode_config: DecodeConfig, *,
              bos_id: int, eos_id: int, pad_id: int = 0, rng: Array | None = None,
              piece_count: int | None = None) -> decoding.Hypotheses:
    """Source sentences -> output tokens with decode_config's search (pure, jit-able).

    Args:
      model: a ``Transformer`` (static under jit).
      params: its "params" collection.
      source_tokens: int [B, S], right-padded with pad_id.
      decode_config: method, beam size, alpha, sampling options, max_extra_length,
        nbest/num_samples and the constraints; min_length is at least 1 here (EOS is
        never the first output token: empty source lines are handled by the callers).
      bos_id, eos_id, pad_id: from the tokenizer.
      rng: sampling key; None = ``jax.random.key(decode_config.seed)``.
      piece_count: ids from here on are never emitted (embedding rows that the
        tokenizer has no piece for: a small corpus may give fewer pieces than
        model.vocab_size, and such ids would decode as " ⁇ "); None = every id.

    Returns:
      decoding.Hypotheses [B, N, ...] (see decoding.search): tokens int [B, N, T],
      T = output_length(S, ...), no BOS, EOS included, pad after it.
    """
    # A sentence never translates to nothing (fairseq's min_len=1): without this, beam
    # search's length normalisation can rank a lone EOS (log P -7.9) above a whole
    # translation (log P -22.3, normalised -8.2), as on 2 of Multi30k's 1,000 test lines.
    decode_config = dataclasses.replace(decode_config,
                                        min_length=max(decode_config.min_length, 1))
    max_length = output_length(source_tokens.shape[1], decode_config, model.config)
    tokens_to_logits, cache = seq2seq_decoder(model, params, source_tokens, max_length)
    if piece_count is not None:
        tokens_to_logits = _pieces_only(tokens_to_logits, piece_count)
    return decoding.search(tokens_to_logits, cache, decode_config, bos_id=bos_id,
                           eos_id=eos_id, max_length=max_length, pad_id=pad_id, rng=rng)


def make_translate_fn(model: Any, decode_config: DecodeConfig, *, bos_id: int, eos_id: int,
                      pad_id: int = 0, piece_count: int | None = None
                      ) -> Callable[..., decoding.Hypotheses]:
    """``translate`` compiled once per source shape: fn(params, source_tokens, rng=None)."""
    def translate_fn(params, source_tokens, rng=None):
        return translate(model, params, source_tokens, decode_config, bos_id=bos_id,
                         eos_id=eos_id, pad_id=pad_id, rng=rng, piece_count=piece_count)
    return jax.jit(translate_fn)


def continue_prompt(model: Any, params: Any, prompt_tokens: Array,
                    decode_config: DecodeConfig, *, eos_id: int, pad_id: int = 0,
                    max_new_tokens: int | None = None, rng: Array | None = None,
                    piece_count: int | None = None) -> decoding.Hypotheses:
    """Continues prompts with a ``DecoderOnly`` model and decode_config's search.

    Args:
      model: a ``DecoderOnly``.
      params: its "params" collection.
      prompt_tokens: int [B, P], right-padded with pad_id; rows may differ in length but
        each needs at least one token (prepend BOS if the model was trained with one).
      decode_config: the search; beam search works too.
      eos_id, pad_id: from the tokenizer.
      max_new_tokens: N; None = decode_config.max_extra_length. Capped so that prompt
        and continuation fit model.config.max_length positions.
      rng: sampling key (None = decode_config.seed).
      piece_count: ids from here on are never emitted (embedding rows that the
        tokenizer has no piece for: a small corpus may give fewer pieces than
        model.vocab_size); None = every id of the model.

    Returns:
      decoding.Hypotheses [B, N, ...] of the continuations only: tokens int [B, N, T]
      (T new tokens at most), left-aligned, EOS included, pad after it.
    """
    prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
    prompt_length = prompt_tokens.shape[1]
    wanted = decode_config.max_extra_length if max_new_tokens is None else max_new_tokens
    new_tokens = min(wanted, model.config.max_length - prompt_length)
    if new_tokens < 1:
        raise ValueError(f"prompts of {prompt_length} tokens leave no room for a continuation "
                         f"within model.max_length={model.config.max_length}.")
    tokens_to_logits, prompt_to_cache, cache = lm_decoder(
        model, params, prompt_tokens.shape[0], prompt_length + new_tokens)
    if piece_count is not None:
        tokens_to_logits = _pieces_only(tokens_to_logits, piece_count)
    lengths = jnp.sum(prompt_tokens != pad_id, axis=1).astype(jnp.int32)
    last, cache = decoding.prefill(prompt_to_cache, cache, prompt_tokens, lengths)
    return decoding.search(tokens_to_logits, cache, decode_config, bos_id=last, eos_id=eos_id,
                           max_length=new_tokens, pad_id=pad_id, rng=rng)


def _pieces_only(tokens_to_logits: decoding.TokensToLogits,
                 piece_count: int) -> decoding.TokensToLogits:
    """tokens_to_logits whose logits [B, V] of ids >= piece_count are -inf."""
    def masked(tokens, cache):
        logits, cache = tokens_to_logits(tokens, cache)
        known = jnp.arange(logits.shape[-1]) < piece_count                      # [V]
        return jnp.where(known, logits, -jnp.inf), cache
    return masked


def make_continue_fn(model: Any, decode_config: DecodeConfig, *, eos_id: int,
                     pad_id: int = 0, max_new_tokens: int | None = None,
                     piece_count: int | None = None) -> Callable[..., decoding.Hypotheses]:
    """``continue_prompt`` compiled once per prompt shape: fn(params, prompt_tokens, rng=None)."""
    def continue_fn(params, prompt_tokens, rng=None):
        return continue_prompt(model, params, prompt_tokens, decode_config, eos_id=eos_id,
                               pad_id=pad_id, max_new_tokens=max_new_tokens, rng=rng,
                               piece_count=piece_count)
    return jax.jit(continue_fn)


# --------------------------------------------------------------------------- files


def encode_sources(tokenizer: Any, lines: Sequence[str],
                   max_length: int) -> tuple[list[list[int]], int]:
    """Token ids + EOS per line (as in training), cut to max_length tokens.

    An empty line (no pieces) stays empty, so that it is echoed as an empty output.

    Returns:
      (sequences, number of lines that were truncated).
    """
    sequences, truncated = [], 0
    for ids in tokenizer.encode_batch(list(lines)) if lines else []:
        if len(ids) + 1 > max_length:
            ids, truncated = ids[:max_length - 1], truncated + 1
        sequences.append([*ids, tokenizer.eos_id] if ids else [])
    return sequences, truncated


def translate_all(translate_fn: Callable[..., decoding.Hypotheses], params: Any,
                  sequences: Sequence[Sequence[int]], *, buckets: Sequence[int],
                  tokens_per_batch: int, pad_id: int = 0, rng: Array | None = None,
                  on_batch: Callable[[int], None] | None = None
                  ) -> list[decoding.Hypotheses]:
    """Decodes a list of token sequences through bucketed batches, in input order.

    Args:
      translate_fn: e.g. make_translate_fn(...) or make_continue_fn(...).
      sequences: token ids per sentence; an empty one gets an empty output.
      buckets, tokens_per_batch: see data.batching.source_batches.
      rng: sampling key, folded with the batch number; None = the config's seed.
      on_batch: called with the number of real sentences after each batch (progress bars).

    Returns:
      per sentence, its decoding.Hypotheses as numpy arrays: tokens int [N, T] as the
      search wrote them (EOS and padding included: ``Tokenizer.decode`` and
      ``Tokenizer.content_ids`` read a row), log_probs and scores float [N]. An empty
      sentence gets N empty hypotheses (T = 0) of log-probability 0.
    """
    outputs: list[decoding.Hypotheses | None] = [None] * len(sequences)
    batches = batching.source_batches(sequences, buckets, tokens_per_batch=tokens_per_batch,
                                      pad_id=pad_id)
    count = 1  # hypotheses per sentence, known after the first batch
    for number, batch in enumerate(batches):
        batch_rng = None if rng is None else jax.random.fold_in(rng, number)
        decoded = jax.tree.map(np.asarray, translate_fn(params, batch.tokens, batch_rng))
        count = decoded.tokens.shape[1]
        for row, index in enumerate(batch.indices):
            if index >= 0:
                outputs[index] = jax.tree.map(lambda leaf, row=row: leaf[row], decoded)
        if on_batch is not None:
            on_batch(int(np.sum(batch.indices >= 0)))
    empty = decoding.Hypotheses(np.zeros((count, 0), np.int32), np.zeros(count, np.float32),
                                np.zeros(count, np.float32))
    return [empty if found is None else found for found in outputs]


# --------------------------------------------------------------------------- attention maps


def attention_weights(model: Any, params: Any, source_tokens: Array, output_tokens: Array,
                      *, bos_id: int) -> dict[str, list[Array]]:
    """Attention weights of a Transformer teacher-forced on its own outputs (for heatmaps).

    Query row t of the decoder is the position whose logits chose output_tokens[:, t].

    Args:
      source_tokens: int [B, S]; output_tokens: int [B, T] as returned by a search.

    Returns:
      {"encoder_self": [B, H, S, S], "decoder_self": [B, H, T, T], "cross": [B, H, T, S]}
      lists with one array per layer, first layer first.
    """
    target_input = jnp.concatenate(
        [jnp.full_like(output_tokens[:, :1], bos_id), output_tokens[:, :-1]], axis=1)
    # Only the reference attention records its weights, the fused ones have none; the
    # unrolled layout records them per layer (a scanned stack would sow them stacked).
    model, params = unrolled(model, params)
    model = type(model)(dataclasses.replace(model.config, attention="reference"))
    _, state = model.apply({"params": params}, source_tokens, target_input,
                           mutable=["intermediates"])
    sown = state["intermediates"]

    def per_layer(stack, layer_count, sublayer):
        return [sown[stack][f"layer_{index}"][sublayer]["attention_weights"][0]
                for index in range(layer_count)]
    config = model.config
    return {"encoder_self": per_layer("encoder", config.num_encoder_layers, "self_attention"),
            "decoder_self": per_layer("decoder", config.num_decoder_layers, "self_attention"),
            "cross": per_layer("decoder", config.num_decoder_layers, "encoder_attention")}

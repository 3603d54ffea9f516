"""Measures a decoder_only run on number_words: continue German prompts, check the result.

A continuation is valid when prompt + continuation (up to EOS) is the German word of some
number in 0 … 999,999 (``data.number_words.german``).

MEASUREMENT ONLY, and uncached on purpose: every new token runs the whole prefix through
``model.apply`` again (O(L²) work per token). It exists to score the built-in LM until
decode.py continues prompts with the cached decoder (greedy, beam, sampling); it is not a
decoding API.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_transformer.config import ModelConfig
from flax_transformer.data import number_words
from flax_transformer.model import DecoderOnly

PROMPTS = ("ein", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn")


@functools.cache
def german_numbers() -> dict[str, int]:
    """German word → number for all of 0 … 999,999 (built once, ~1 s)."""
    return {number_words.german(n): n for n in range(number_words.LARGEST + 1)}


def valid_share(texts: list[str]) -> float:
    """Fraction of ``texts`` that are the German word of a number."""
    numbers = german_numbers()
    return sum(text in numbers for text in texts) / max(len(texts), 1)


@functools.partial(jax.jit, static_argnames=("model_config",))
def _next_tokens(params: Any, tokens: jnp.ndarray, lengths: jnp.ndarray, key: jax.Array,
                 temperature: jnp.ndarray, model_config: ModelConfig) -> jnp.ndarray:
    """tokens int [B, L] with lengths [B] real tokens -> the next token of every row [B]."""
    logits = DecoderOnly(model_config).apply({"params": params}, tokens)          # [B, L, V]
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]  # [B, V]
    sampled = jax.random.categorical(key, last / jnp.maximum(temperature, 1e-6))
    return jnp.where(temperature > 0, sampled, jnp.argmax(last, axis=-1))


def continue_prompts(params: Any, model_config: ModelConfig, tokenizer: Any,
                     prompts: list[str], max_new_tokens: int, temperature: float = 0.0,
                     key: jax.Array | None = None) -> list[str]:
    """prompt + continuation texts: greedy (temperature 0) or sampled; uncached (see top).

    A row that reaches no EOS within ``max_new_tokens`` (or model.max_length) returns what
    it has, which the validity check then counts as invalid only if it is no number.
    """
    encoded = [[tokenizer.bos_id, *tokenizer.encode(prompt)] for prompt in prompts]
    width = min(max(map(len, encoded)) + max_new_tokens, model_config.max_length)
    tokens = np.zeros((len(prompts), width), np.int32)
    for row, ids in enumerate(encoded):
        tokens[row, :len(ids)] = ids
    lengths = np.array([len(ids) for ids in encoded], np.int32)
    done = np.zeros(len(prompts), bool)
    key = jax.random.key(0) if key is None else key
    for step in range(max_new_tokens):
        if done.all() or lengths.max() >= width:
            break
        new = np.asarray(_next_tokens(params, tokens, lengths, jax.random.fold_in(key, step),
                                      jnp.float32(temperature), model_config))
        writing = ~done & (lengths < width)
        tokens[writing, lengths[writing]] = new[writing]
        lengths = lengths + writing
        done |= new == tokenizer.eos_id
    # An unfinished row gets no EOS: decode() keeps all of it.
    return [tokenizer.decode(row[:length].tolist()) for row, length in zip(tokens, lengths,
                                                                          strict=True)]


def number_words_report(params: Any, model_config: ModelConfig, tokenizer: Any,
                        samples: int = 20, max_new_tokens: int = 70) -> dict[str, float]:
    """Greedy and sampled (temperature 1) continuations of ``PROMPTS``, scored.

    Returns:
      greedy_valid, sampled_valid (fractions), sampled_extended (fraction of samples longer
      than their prompt), sampled_distinct (distinct valid numbers), and the greedy texts
      under "greedy:PROMPT".
    """
    greedy = continue_prompts(params, model_config, tokenizer, list(PROMPTS), max_new_tokens)
    prompts = [prompt for prompt in PROMPTS for _ in range(samples)]
    sampled = continue_prompts(params, model_config, tokenizer, prompts, max_new_tokens,
                               temperature=1.0, key=jax.random.key(1))
    numbers = german_numbers()
    return {"greedy_valid": valid_share(greedy), "sampled_valid": valid_share(sampled),
            "sampled_extended": float(np.mean([len(text) > len(prompt) for text, prompt
                                               in zip(sampled, prompts, strict=True)])),
            "sampled_distinct": float(len({numbers[t] for t in sampled if t in numbers})),
            **{f"greedy:{prompt}": text for prompt, text in zip(PROMPTS, greedy, strict=True)}}

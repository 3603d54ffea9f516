"""decode.py for a decoder_only run: continue prompts with the KV cache.

    done = language_model.continue_lines(model, params, tokenizer, ["zwei"], decode_config,
                                         max_length=80)
    done.outputs                                   # ["zweihundertsechsundsechzig"]

Each prompt becomes BOS + its pieces (no EOS: the text goes on), as the run's training
rows begin; ``translate.continue_prompt`` prefills it in one model call and continues it
with the run's search (greedy, beam or sampling) until EOS, ``decode.max_extra_length``
new tokens or ``model.max_length`` positions; ids the tokenizer has no piece for (a small
corpus may give fewer pieces than model.vocab_size) are never emitted. Prompts are padded
to power-of-two buckets and batched by ``translate.translate_all``, the path translations
take. The output of a line is the prompt, as typed, followed by its continuation; an
empty line is continued from BOS alone (a sample of the text the model learned).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax

from flax_transformer import translate
from flax_transformer.config import DecodeConfig
from flax_transformer.data import batching


@dataclasses.dataclass(frozen=True)
class Continued:
    """Outputs of continue_lines, in input order."""

    outputs: list[str]           # prompt + continuation, one per line
    prompts: list[list[int]]     # BOS + prompt pieces, as the model read them
    continuations: list[list[int]]   # new ids without EOS (Tokenizer.content_ids)
    truncated: int               # prompts cut to model.max_length - 1 tokens


@functools.lru_cache(maxsize=8)
def _continue_fn(model: Any, decode_config: DecodeConfig, eos_id: int, pad_id: int,
                 piece_count: int):
    """One compiled continuation per (model, search): repeated calls reuse it."""
    return translate.make_continue_fn(model, decode_config, eos_id=eos_id, pad_id=pad_id,
                                      piece_count=piece_count)


def encode_prompts(tokenizer: Any, lines: Sequence[str],
                   max_length: int) -> tuple[list[list[int]], list[bool]]:
    """BOS + pieces per line, cut to max_length - 1 tokens (one position stays free).

    Returns:
      (prompt token lists, whether each prompt was cut).
    """
    prompts, cut = [], []
    for ids in tokenizer.encode_batch(list(lines)) if lines else []:
        prompt = [tokenizer.bos_id, *ids]
        cut.append(len(prompt) > max_length - 1)
        prompts.append(prompt[:max_length - 1])
    return prompts, cut


def prompt_and_continuation(tokenizer: Any, line: str | None, prompt: Sequence[int],
                            continuation: Sequence[int]) -> str:
    """The line as typed + the text its continuation adds.

    The continuation is decoded together with the prompt (a subword's leading space
    depends on what precedes it); the prompt's own decoding is then replaced by the line,
    so that normalisation or unknown characters never change what the user typed.
    ``line`` None (a prompt that was cut) keeps the decoded text of what the model read.
    """
    whole = tokenizer.decode([*prompt, *continuation])
    prompt_text = tokenizer.decode(prompt)
    if line is None or not whole.startswith(prompt_text):
        return whole
    return line + whole[len(prompt_text):]


def continue_lines(model: Any, params: Any, tokenizer: Any, lines: Sequence[str],
                   decode_config: DecodeConfig, max_length: int,
                   on_batch: Callable[[int], None] | None = None) -> Continued:
    """Continues every line with decode_config's search, in bucketed batches.

    Args:
      model: a ``DecoderOnly``; params: its "params" collection.
      lines: prompts, one a line.
      max_length: model.max_length (prompt + continuation positions).
      on_batch: progress callback (see translate.translate_all).
    """
    prompts, cut = encode_prompts(tokenizer, lines, max_length)
    rows = translate.translate_all(
        _continue_fn(model, decode_config, tokenizer.eos_id, tokenizer.pad_id,
                     tokenizer.vocab_size), params,
        prompts, buckets=batching.bucket_lengths((), max_length - 1),
        tokens_per_batch=decode_config.tokens_per_batch, pad_id=tokenizer.pad_id,
        rng=jax.random.key(decode_config.seed), on_batch=on_batch)
    continuations = [tokenizer.content_ids(found.tokens[0]) for found in rows]  # best
    outputs = [prompt_and_continuation(tokenizer, None if was_cut else line, prompt, new)
               for line, prompt, new, was_cut in zip(lines, prompts, continuations, cut,
                                                     strict=True)]
    return Continued(outputs=outputs, prompts=prompts, continuations=continuations,
                     truncated=sum(cut))

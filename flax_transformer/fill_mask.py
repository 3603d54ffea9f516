"""decode.py for an encoder_only run: fill the positions of the input marked ``<mask>``.

    filled = fill_mask.fill_lines(model, params, tokenizer, ["drei<mask>zwanzig"],
                                  max_length=32, tokens_per_batch=4096, top_k=3)
    filled.outputs                                    # ["dreiundzwanzig"]
    print(fill_mask.format_candidates(filled, tokenizer)[0])

Each line is encoded as in training (pieces + EOS); every ``<mask>`` is one piece of the
vocabulary, so one ``<mask>`` is filled by exactly one piece. One model call reads the
whole line (the encoder sees both sides of every mask); each mask is filled with its
likeliest piece, independently of the other masks (greedy). The candidates are the
pieces the model was trained to predict: padding, unknown, BOS, EOS and ``<mask>``
itself are never proposed, and probabilities are renormalised over the rest.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_transformer import translate
from flax_transformer.data import MASK_ID, MASK_PIECE, batching

Array = jnp.ndarray


def _top_candidates(model: Any, params: Any, tokens: Array, count: int,
                    piece_count: int) -> tuple[Array, Array]:
    """tokens int [B, S] -> the ``count`` likeliest pieces at every position and their
    probabilities, ids int [B, S, k] and probabilities float [B, S, k] (best first).

    Only ids in (MASK_ID, piece_count) compete: not pad, unk, BOS, EOS, <mask>, nor the
    embedding rows beyond the tokenizer's pieces.
    """
    logits, _ = model.apply({"params": params}, tokens)                      # [B, S, V]
    vocabulary = jnp.arange(logits.shape[-1])
    special = (vocabulary <= MASK_ID) | (vocabulary >= piece_count)
    log_probs = jax.nn.log_softmax(jnp.where(special, -jnp.inf, logits), axis=-1)
    top_log_probs, top_ids = jax.lax.top_k(log_probs, count)
    return top_ids, jnp.exp(top_log_probs)


@functools.lru_cache(maxsize=8)
def _fill_fn(model: Any, count: int, piece_count: int) -> Callable[..., tuple[Array, Array]]:
    """``_top_candidates`` compiled once per (model, count) and input shape."""
    return jax.jit(functools.partial(_top_candidates, model, count=count,
                                     piece_count=piece_count))


@dataclasses.dataclass(frozen=True)
class Filled:
    """Outputs of fill_lines, in input order."""

    outputs: list[str]                 # the line with every <mask> filled (unchanged: none)
    sources: list[list[int]]           # encoded lines, EOS included ([] for empty lines)
    candidates: list[list[list[tuple[int, float]]]]  # per line, per mask: (id, probability)
    without_mask: int                  # non-empty lines that hold no <mask>
    truncated: int                     # lines cut to model.max_length tokens


def _filled_text(tokenizer: Any, line: str, source: Sequence[int],
                 candidates: list[list[tuple[int, float]]]) -> str:
    if not candidates:
        return line
    ids, masks = list(source), iter(candidates)
    ids = [next(masks)[0][0] if token == MASK_ID else token for token in ids]
    return tokenizer.decode(ids)


def fill_lines(model: Any, params: Any, tokenizer: Any, lines: Sequence[str], *,
               max_length: int, tokens_per_batch: int, top_k: int = 1,
               on_batch: Callable[[int], None] | None = None) -> Filled:
    """Fills the ``<mask>`` positions of every line, in bucketed batches.

    Args:
      model: an ``EncoderOnly``; params: its "params" collection.
      lines: text with ``<mask>`` where a piece is wanted.
      max_length: model.max_length; longer lines are cut to it (EOS kept).
      tokens_per_batch: padded tokens per batch (decode.tokens_per_batch).
      top_k: candidates kept per mask (at least 1, at most the number of pieces that can
        fill a mask; the first one fills it).
      on_batch: progress callback with the number of lines in each batch.
    """
    sources, truncated = translate.encode_sources(tokenizer, lines, max_length)
    candidates: list[list[list[tuple[int, float]]]] = [[] for _ in lines]
    piece_count = min(tokenizer.vocab_size, model.config.vocab_size)
    fill_fn = _fill_fn(model, min(max(top_k, 1), piece_count - MASK_ID - 1), piece_count)
    for batch in batching.source_batches(sources, batching.bucket_lengths((), max_length),
                                         tokens_per_batch=tokens_per_batch,
                                         pad_id=tokenizer.pad_id):
        ids, probabilities = jax.device_get(fill_fn(params, batch.tokens))   # [B, S, k]
        for row, index in enumerate(batch.indices.tolist()):
            if index < 0:
                continue
            positions = np.flatnonzero(batch.tokens[row] == MASK_ID)
            candidates[index] = [list(zip(ids[row, position].tolist(),
                                          probabilities[row, position].tolist(), strict=True))
                                 for position in positions]
        if on_batch is not None:
            on_batch(int((batch.indices >= 0).sum()))
    outputs = [_filled_text(tokenizer, line, source, found)
               for line, source, found in zip(lines, sources, candidates, strict=True)]
    without_mask = sum(bool(source) and not found
                       for source, found in zip(sources, candidates, strict=True))
    return Filled(outputs=outputs, sources=sources, candidates=candidates,
                  without_mask=without_mask, truncated=truncated)


def format_candidates(filled: Filled, tokenizer: Any) -> list[str]:
    """Each output line followed by one line per mask listing its candidates::

        dreiundzwanzig
          <mask> 1: und 97.3% | hundert 1.1% | tausend 0.6%

    Pieces are shown as SentencePiece writes them ("▁" = a word starts here).
    """
    blocks = []
    for output, per_mask in zip(filled.outputs, filled.candidates, strict=True):
        lines = [output]
        for number, found in enumerate(per_mask, start=1):
            pieces = tokenizer.id_to_piece([token for token, _ in found])
            listed = " | ".join(f"{piece} {100 * probability:.1f}%"
                                for piece, (_, probability) in zip(pieces, found, strict=True))
            lines.append(f"  {MASK_PIECE} {number}: {listed}")
        blocks.append("\n".join(lines))
    return blocks

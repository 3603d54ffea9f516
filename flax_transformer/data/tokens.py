"""Tokenizes a split once into flat arrays, so that epochs only gather, never re-encode.

Layout of one pair with source tokens s1 s2 and target tokens t1 t2 t3:

    source_tokens[source_starts[i] :][: source_lengths[i]]     = s1 s2 EOS
    target_tokens[target_starts[i] :][: target_lengths[i] + 1] = BOS t1 t2 t3 EOS

so that target_input (BOS t1 t2 t3) and target_output (t1 t2 t3 EOS) are two windows of
the same ``target_lengths[i]`` tokens, one place apart.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import grain
import numpy as np
from absl import flags

from flax_transformer.data import chunked
from flax_transformer.data.errors import DataError
from flax_transformer.data.tokenizer import BOS_ID, EOS_ID, Tokenizer

_CHUNK = 512  # pairs per SentencePiece call


@dataclasses.dataclass(frozen=True)
class TokenizedPairs:
    """A split's pairs as flat int32 token arrays (see the module docstring).

    Attributes:
      source_tokens, target_tokens: int32 flat token arrays.
      source_starts, target_starts: int64 [N] where each pair begins.
      source_lengths, target_lengths: int32 [N] tokens per side, EOS included.
      usable: bool [N]; False for overlong pairs when they are dropped.
      counts: {"pairs", "overlong", "dropped_overlong", "truncated_overlong"}.
    """

    source_tokens: np.ndarray
    source_starts: np.ndarray
    source_lengths: np.ndarray
    target_tokens: np.ndarray
    target_starts: np.ndarray
    target_lengths: np.ndarray
    usable: np.ndarray
    counts: dict[str, int]

    @property
    def lengths(self) -> np.ndarray:
        """int32 [N] padded length a pair needs: max(source, target) tokens."""
        return np.maximum(self.source_lengths, self.target_lengths)


class _EncodeChunk(grain.transforms.Map):
    """Chunk number c → (source ids, target ids) of pairs [c * _CHUNK, (c + 1) * _CHUNK)."""

    def __init__(self, pairs: Sequence[dict[str, str]], tokenizer: Tokenizer):
        self._pairs, self._tokenizer = pairs, tokenizer

    def map(self, chunk: int) -> tuple[list[list[int]], list[list[int]]]:
        indices = range(chunk * _CHUNK, min((chunk + 1) * _CHUNK, len(self._pairs)))
        records = chunked.read(self._pairs, indices)   # one read for the chunk (array_record)
        return (self._tokenizer.encode_batch([record["source"] for record in records]),
                self._tokenizer.encode_batch([record["target"] for record in records]))


def _encode(pairs: Sequence[dict[str, str]], tokenizer: Tokenizer, num_workers: int):
    """Source and target id lists of every pair, in order (grain workers if asked)."""
    chunks = grain.MapDataset.range(-(-len(pairs) // _CHUNK)).map(_EncodeChunk(pairs, tokenizer))
    iterable = chunks.to_iter_dataset(grain.ReadOptions(num_threads=0))
    if num_workers:
        if not flags.FLAGS.is_parsed():  # grain <= 0.2.18 reads an absl flag (grain#1355)
            flags.FLAGS.mark_as_parsed()
        iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    encoded = list(iterable)
    return ([ids for chunk in encoded for ids in chunk[0]],
            [ids for chunk in encoded for ids in chunk[1]])


def _flatten(sequences: list[list[int]], prefix: list[int], suffix: list[int]):
    """Concatenates prefix + sequence + suffix for all; returns (tokens, starts)."""
    sizes = np.fromiter((len(ids) for ids in sequences), np.int64, len(sequences))
    sizes += len(prefix) + len(suffix)
    starts = np.cumsum(sizes) - sizes                                 # [N], also for N = 0
    flat = itertools.chain.from_iterable(prefix + ids + suffix for ids in sequences)
    return np.fromiter(flat, np.int32, int(sizes.sum())), starts


def tokenize_pairs(pairs: Sequence[dict[str, str]], tokenizer: Tokenizer, max_length: int,
                   overlong: str, num_workers: int = 0) -> TokenizedPairs:
    """Encodes every pair once, appends EOS, and truncates or marks overlong pairs.

    Args:
      pairs: random-access {"source": str, "target": str} records.
      tokenizer: the shared vocabulary.
      max_length: most tokens per side, EOS included.
      overlong: "drop" (``usable`` False) or "truncate" (cut to max_length, EOS kept).
      num_workers: grain worker processes for encoding (0 = this process).
    """
    if overlong not in ("drop", "truncate"):
        raise DataError(f"overlong={overlong!r} must be 'drop' or 'truncate'.")
    sources, targets = _encode(pairs, tokenizer, num_workers)
    keep = max_length - 1  # room for EOS
    source_lengths = np.array([len(ids) for ids in sources], np.int32) + 1
    target_lengths = np.array([len(ids) for ids in targets], np.int32) + 1
    is_overlong = np.maximum(source_lengths, target_lengths) > max_length
    source_tokens, source_starts = _flatten([ids[:keep] for ids in sources], [], [EOS_ID])
    target_tokens, target_starts = _flatten([ids[:keep] for ids in targets], [BOS_ID], [EOS_ID])
    overlong_count = int(is_overlong.sum())
    return TokenizedPairs(
        source_tokens=source_tokens, source_starts=source_starts,
        source_lengths=np.minimum(source_lengths, max_length),
        target_tokens=target_tokens, target_starts=target_starts,
        target_lengths=np.minimum(target_lengths, max_length),
        usable=~is_overlong if overlong == "drop" else np.ones(len(sources), bool),
        counts={"pairs": len(sources), "overlong": overlong_count,
                "dropped_overlong": overlong_count if overlong == "drop" else 0,
                "truncated_overlong": overlong_count if overlong == "truncate" else 0},
    )

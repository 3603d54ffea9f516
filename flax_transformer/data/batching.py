"""Deterministic batch plans by token count, with length buckets or packing.

A plan says which pair goes to which row and column of which batch; it depends only on
the pair lengths, the config, the seed and the epoch, so that a (epoch, batch) counter
is a complete, exact iterator state. Shapes come from a small fixed set: one
[rows(L), L] per bucket length L, so jit compiles a handful of times. The same buckets
batch the sources that decode.py and the validation BLEU translate (``source_batches``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from flax_transformer.data.errors import DataError

if TYPE_CHECKING:  # annotations only: tokens.py imports grain, which decoding never needs
    from flax_transformer.data.tokens import TokenizedPairs


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """Where the pairs of one global batch go; every array is [P] for its P pairs.

    Attributes:
      length: padded length L of every row (source and target).
      rows: rows B of the global batch (filler rows stay all padding).
      example: index of each pair in the split.
      row: row of each pair.
      source_column, target_column: where each pair starts inside its row.
      segment: 1-based segment id of each pair inside its row (always 1 unpacked).
    """

    length: int
    rows: int
    example: np.ndarray
    row: np.ndarray
    source_column: np.ndarray
    target_column: np.ndarray
    segment: np.ndarray


def bucket_lengths(buckets: tuple[int, ...], max_length: int) -> tuple[int, ...]:
    """The padded lengths in use: ``buckets`` (or powers of 2 from 8) below max_length, then it."""
    if not buckets:
        buckets = tuple(2**power for power in range(3, max_length.bit_length()))
    return tuple(sorted({length for length in buckets if length < max_length} | {max_length}))


def rows_per_batch(length: int, tokens_per_batch: int, multiple: int) -> int:
    """Most rows B, a multiple of ``multiple``, with B * length * 2 <= tokens_per_batch."""
    rows = tokens_per_batch // (2 * length) // multiple * multiple
    if rows == 0:
        raise DataError(
            f"data.tokens_per_batch={tokens_per_batch} cannot hold {multiple} rows of length "
            f"{length} (source + target); raise it to at least {2 * length * multiple}."
        )
    return rows


def unpacked_plan(example: np.ndarray, length: int, rows: int) -> BatchPlan:
    """One pair a row, in rows 0, 1, …; rows beyond len(example) are filler."""
    count = len(example)
    zeros = np.zeros(count, np.int32)
    return BatchPlan(length, rows, example, np.arange(count, dtype=np.int32), zeros, zeros,
                     np.ones(count, np.int32))


def group_by_bucket(order: np.ndarray, lengths: np.ndarray,
                    buckets: Sequence[int]) -> list[tuple[int, np.ndarray]]:
    """(bucket length, the examples of ``order`` it holds, in order) for every bucket.

    An example goes to the smallest bucket that holds its ``lengths[example]`` tokens.
    """
    bucket_of = np.searchsorted(np.asarray(buckets), lengths[order])
    if np.any(bucket_of == len(buckets)):
        raise DataError(f"a sequence of {int(lengths[order].max())} tokens is longer than the "
                        f"largest bucket {buckets[-1]}; truncate it or add a larger bucket.")
    return [(length, order[bucket_of == index]) for index, length in enumerate(buckets)]


def bucketed_plans(order: np.ndarray, lengths: np.ndarray, buckets: tuple[int, ...],
                   tokens_per_batch: int, multiple: int) -> list[BatchPlan]:
    """One pair a row: pairs in ``order`` go to the smallest bucket that holds them.

    Args:
      order: example indices in the order to use them (already shuffled).
      lengths: int [N] padded length each example needs.
      buckets: ascending padded lengths; the last one holds every example.
      tokens_per_batch: the global budget of source + target tokens, padding included.
      multiple: rows per batch must be a multiple of this.

    Returns:
      plans, bucket by bucket; a bucket's last batch may have filler rows.
    """
    plans = []
    for length, members in group_by_bucket(order, lengths, buckets):
        rows = rows_per_batch(length, tokens_per_batch, multiple)
        plans += [unpacked_plan(members[start:start + rows], length, rows)
                  for start in range(0, len(members), rows)]
    return plans


def packed_plans(order: np.ndarray, pairs: TokenizedPairs, length: int,
                 tokens_per_batch: int, multiple: int) -> list[BatchPlan]:
    """Several pairs a row: first fit, in ``order``, into rows of ``length`` tokens a side.

    A pair goes to the first row of the open batch where both its sides still fit; when
    none has room, the batch is closed and a new one opened.
    """
    rows = rows_per_batch(length, tokens_per_batch, multiple)
    source_lengths = pairs.source_lengths[order].tolist()
    target_lengths = pairs.target_lengths[order].tolist()
    plans, placed = [], []
    source_free, target_free = np.full(rows, length), np.full(rows, length)
    segments = [0] * rows
    for example, source_length, target_length in zip(
            order.tolist(), source_lengths, target_lengths, strict=True):
        fits = (source_free >= source_length) & (target_free >= target_length)
        row = int(fits.argmax())
        if not fits[row]:  # no room left in this batch: close it, open an empty one
            plans.append(_packed_plan(placed, length, rows))
            placed, segments, row = [], [0] * rows, 0
            source_free[:], target_free[:] = length, length
        segments[row] += 1
        placed.append((example, row, length - source_free[row], length - target_free[row],
                       segments[row]))
        source_free[row] -= source_length
        target_free[row] -= target_length
    if placed:
        plans.append(_packed_plan(placed, length, rows))
    return plans


def _packed_plan(placed: list[tuple[int, ...]], length: int, rows: int) -> BatchPlan:
    columns = np.asarray(placed, np.int64).reshape(-1, 5).T
    example, row, source_column, target_column, segment = columns
    return BatchPlan(length, rows, example, row.astype(np.int32),
                     source_column.astype(np.int32), target_column.astype(np.int32),
                     segment.astype(np.int32))


def epoch_plans(pairs: TokenizedPairs, buckets: tuple[int, ...], tokens_per_batch: int,
                multiple: int, packing: bool, seed: int, epoch: int) -> list[BatchPlan]:
    """Every usable pair exactly once, in a seeded order of (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(np.flatnonzero(pairs.usable))
    if packing:
        plans = packed_plans(order, pairs, buckets[-1], tokens_per_batch, multiple)
    else:
        plans = bucketed_plans(order, pairs.lengths, buckets, tokens_per_batch, multiple)
    return [plans[index] for index in rng.permutation(len(plans))]


def _scatter(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray, rows: np.ndarray,
             columns: np.ndarray, shape: tuple[int, int]):
    """Copies pair p's tokens[starts[p]:][:lengths[p]] to row rows[p] from columns[p] on.

    Returns:
      values: int32 [B, L], the copied tokens and 0 elsewhere.
      flat_index: int64 [P_tokens], where each copied token went in ``values.flat``.
      offset: int64 [P_tokens], each copied token's position inside its pair.
    """
    pair_of_token = np.repeat(np.arange(len(lengths)), lengths)                 # [P_tokens]
    first_token = np.cumsum(lengths) - lengths                                  # [P]
    offset = np.arange(len(pair_of_token)) - first_token[pair_of_token]         # [P_tokens]
    flat_index = rows[pair_of_token] * shape[1] + columns[pair_of_token] + offset
    values = np.zeros(shape, np.int32)
    values.flat[flat_index] = tokens[starts[pair_of_token] + offset]
    return values, flat_index, offset


def assemble(plan: BatchPlan, pairs: TokenizedPairs, row_start: int, row_stop: int,
             packing: bool) -> dict[str, np.ndarray]:
    """The rows [row_start, row_stop) of a planned batch as int32 arrays.

    Returns:
      "source", "target_input", "target_output": int32 [B, L], 0 = padding; with
      ``packing`` also "source_segments", "target_segments" (1, 2, … per pair in a row,
      0 = padding) and "source_positions", "target_positions" (0, 1, … restarting at
      every pair) [B, L].
    """
    mine = (plan.row >= row_start) & (plan.row < row_stop)
    example, row = plan.example[mine], plan.row[mine] - row_start
    shape = (row_stop - row_start, plan.length)
    batch = {}
    for side, tokens, starts, lengths, column, shift in (
        ("source", pairs.source_tokens, pairs.source_starts, pairs.source_lengths,
         plan.source_column, 0),
        ("target_input", pairs.target_tokens, pairs.target_starts, pairs.target_lengths,
         plan.target_column, 0),
        ("target_output", pairs.target_tokens, pairs.target_starts, pairs.target_lengths,
         plan.target_column, 1),  # the same window one token later: t1 … EOS
    ):
        batch[side], flat_index, offset = _scatter(
            tokens, starts[example] + shift, lengths[example], row, column[mine], shape)
        if packing and side != "target_output":
            name = side.removesuffix("_input")
            batch[f"{name}_segments"] = np.zeros(shape, np.int32)
            batch[f"{name}_segments"].flat[flat_index] = np.repeat(plan.segment[mine],
                                                                   lengths[example])
            batch[f"{name}_positions"] = np.zeros(shape, np.int32)
            batch[f"{name}_positions"].flat[flat_index] = offset
    return batch


@dataclasses.dataclass(frozen=True)
class SourceBatch:
    """Sources to decode, padded to one bucket shape.

    Attributes:
      indices: int [B], position of each row in the input list; -1 for a filler row.
      tokens: int32 [B, S], right-padded with pad_id (filler rows are all pad).
    """

    indices: np.ndarray
    tokens: np.ndarray


def source_batches(sequences: Sequence[Sequence[int]], buckets: Sequence[int], *,
                   tokens_per_batch: int, pad_id: int = 0) -> Iterator[SourceBatch]:
    """Sources grouped by bucket into batches of one fixed shape per bucket (for decoding).

    Every batch of a bucket has the same [rows, bucket] shape (filler rows pad the last
    one), so decoding a whole file compiles at most len(buckets) times. Rows are
    tokens_per_batch // bucket (source tokens only: decoding has no target batch), or
    fewer (a power of two) when the bucket holds fewer sequences. Empty sequences are
    left out (nothing to decode).
    """
    lengths = np.asarray([len(sequence) for sequence in sequences], np.int64)
    for bucket, members in group_by_bucket(np.flatnonzero(lengths > 0), lengths, buckets):
        budget = max(1, tokens_per_batch // bucket)
        rows = min(budget, 1 << max(0, len(members) - 1).bit_length())
        for start in range(0, len(members), rows):
            chunk = members[start:start + rows]
            indices = np.full((rows,), -1, np.int64)
            indices[:len(chunk)] = chunk
            tokens = np.full((rows, bucket), pad_id, np.int32)
            for row, index in enumerate(chunk.tolist()):
                tokens[row, :lengths[index]] = sequences[index]
            yield SourceBatch(indices=indices, tokens=tokens)

"""Training and evaluation batches: what the training loop calls.

Training: an endless, checkpointable iterator; each epoch is a seeded plan of global
batches (see batching.py) served through a grain MapDataset, this process's rows only.
Evaluation: a list of batches with every example once, in example order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from flax_transformer.config import DataConfig
from flax_transformer.data import batching, chunked
from flax_transformer.data.errors import DataError
from flax_transformer.data.tokenizer import Tokenizer
from flax_transformer.data.tokens import TokenizedPairs, tokenize_pairs

# One thread assembles the next few batches while the caller trains on this one.
_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)


class TrainBatches:
    """Endless training batches; ``get_state``/``set_state`` resume exactly.

    Attributes:
      stats: counts of pairs seen, skipped when preparing, dropped or truncated.
    """

    def __init__(self, pairs: TokenizedPairs, config: DataConfig, multiple: int,
                 process_index: int, process_count: int, skipped: dict[str, int]):
        self._pairs, self._config, self._multiple = pairs, config, multiple
        self._process_index, self._process_count = process_index, process_count
        self._buckets = batching.bucket_lengths(config.bucket_lengths, config.max_length)
        self.stats = {**pairs.counts, **{f"skipped_{key}": n for key, n in skipped.items()}}
        if not pairs.usable.any():
            raise DataError(f"no training pair is at most data.max_length={config.max_length} "
                             f"tokens long; raise it or set data.overlong='truncate'.")
        self._epoch, self._batch_in_epoch = 0, 0
        self._plans, self._plans_epoch, self._iterator = [], None, None

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            batches = self._epoch_dataset()[self._batch_in_epoch:]
            self._iterator = iter(batches.to_iter_dataset(_READ_OPTIONS))
        batch = next(self._iterator)
        self._batch_in_epoch += 1
        # Roll over at once, so that get_state() always names the batch that comes next.
        if self._batch_in_epoch == len(self._plans):
            self._epoch, self._batch_in_epoch, self._iterator = self._epoch + 1, 0, None
        return batch

    def _epoch_dataset(self) -> grain.MapDataset:
        """This epoch's batches as a grain MapDataset (random access by batch index)."""
        if self._plans_epoch != self._epoch:
            config = self._config
            self._plans = batching.epoch_plans(
                self._pairs, self._buckets, config.tokens_per_batch,
                self._multiple * self._process_count, config.packing, config.shuffle_seed,
                self._epoch)
            self._plans_epoch = self._epoch
        return grain.MapDataset.source(self._plans).map(self._assemble)

    def _assemble(self, plan: batching.BatchPlan) -> dict[str, np.ndarray]:
        rows = plan.rows // self._process_count
        start = self._process_index * rows
        return batching.assemble(plan, self._pairs, start, start + rows, self._config.packing)

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position: the next batch is batch_in_epoch of epoch."""
        return {"epoch": self._epoch, "batch_in_epoch": self._batch_in_epoch,
                "shuffle_seed": self._config.shuffle_seed, "pairs": len(self._pairs.usable)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from ``get_state()`` output, as if never interrupted."""
        expected = (self._config.shuffle_seed, len(self._pairs.usable))
        if (state["shuffle_seed"], state["pairs"]) != expected:
            raise DataError(f"the saved data state (seed, pairs) = "
                             f"{(state['shuffle_seed'], state['pairs'])} does not match this "
                             f"run's {expected}; resume with the same data and config.")
        self._epoch, self._batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self._iterator = None

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def batches_in_epoch(self) -> int:
        """How many global batches the current epoch has."""
        return len(self._epoch_dataset())


def train_batches(train_pairs: Sequence[dict[str, str]], tokenizer: Tokenizer,
                  config: DataConfig, batch_multiple: int, process_index: int = 0,
                  process_count: int = 1) -> TrainBatches:
    """Endless token-budget batches of ``train_pairs``, this process's rows only.

    The global batch has B rows of length L with B * L * 2 <= config.tokens_per_batch and
    B a multiple of batch_multiple * process_count; process p gets rows
    [p * B / process_count, (p + 1) * B / process_count).

    Returns:
      an iterator of dicts of int32 [B / process_count, L] arrays (see batching.assemble).
    """
    pairs = tokenize_pairs(train_pairs, tokenizer, config.max_length, config.overlong,
                           config.num_workers)
    return TrainBatches(pairs, config, batch_multiple, process_index, process_count,
                        getattr(train_pairs, "skipped", {}))


def _consecutive_plans(lengths: np.ndarray, buckets: tuple[int, ...], tokens_per_batch: int,
                       multiple: int) -> list[batching.BatchPlan]:
    """Examples 0, 1, 2, … in order; a batch grows while its bucket's row count allows."""
    bucket_of = np.searchsorted(np.asarray(buckets), lengths)
    rows = [batching.rows_per_batch(length, tokens_per_batch, multiple) for length in buckets]
    plans, start, widest = [], 0, 0
    for index, bucket in enumerate([*bucket_of.tolist(), None]):
        if bucket is not None and index - start < rows[max(widest, bucket)]:
            widest = max(widest, bucket)
            continue
        if index > start:
            plans.append(batching.unpacked_plan(np.arange(start, index), buckets[widest],
                                                rows[widest]))
        start, widest = index, bucket or 0
    return plans


def eval_batches(pairs: Sequence[dict[str, str]], tokenizer: Tokenizer, config: DataConfig,
                 batch_multiple: int, max_examples: int = 0) -> list[dict[str, np.ndarray]]:
    """Every example (the first ``max_examples`` if > 0) once, in order, unpacked.

    Overlong pairs are always truncated here, never dropped, so that BLEU sees them all.

    Returns:
      batch dicts as in training plus "index": int32 [B], the example index of each row
      (-1 for filler rows).
    """
    if max_examples:
        pairs = list(chunked.iterate(pairs, max_examples))
    tokenized = tokenize_pairs(pairs, tokenizer, config.max_length, "truncate",
                               config.num_workers)
    buckets = batching.bucket_lengths(config.bucket_lengths, config.max_length)
    batches = []
    for plan in _consecutive_plans(tokenized.lengths, buckets, config.tokens_per_batch,
                                   batch_multiple):
        batch = batching.assemble(plan, tokenized, 0, plan.rows, packing=False)
        batch["index"] = np.full(plan.rows, -1, np.int32)
        batch["index"][plan.row] = plan.example
        batches.append(batch)
    return batches

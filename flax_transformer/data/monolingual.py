"""One text instead of pairs, for decoder_only and encoder_only runs.

Any dataset the project reads gives its target side (``data.target_language``): the German
of number_words, PREFIX.LANG of local files (``data.dataset='text'``: one sentence a line,
plain or gzip'd, no second language needed), or one field of a TFDS dataset. Each record
becomes ``{"source": "", "target": text}``, so tokenizing, bucketing, packing and exact
resume are the pair pipeline's own; the target side gives a language model BOS t1 … tn
(input) and t1 … tn EOS (output), and a masked-token model t1 … tn EOS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

from flax_transformer.config import DataConfig
from flax_transformer.data import chunked, sources


class TargetText(Sequence):
    """A split of pairs seen as ``{"source": "", "target": text}`` records."""

    def __init__(self, pairs: Sequence[dict[str, str]]):
        self._pairs = pairs
        self.skipped = dict(getattr(pairs, "skipped", {}) or {})

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> dict[str, str]:
        return {"source": "", "target": self._pairs[index]["target"]}

    def __iter__(self) -> Iterator[dict[str, str]]:
        return chunked.iterate(self)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, str]]:
        return [{"source": "", "target": record["target"]}
                for record in chunked.read(self._pairs, indices)]


def _source_config(config: DataConfig) -> DataConfig:
    """The pair dataset that holds the text: both sides read ``target_language``, so a
    TFDS dataset with a single text field and single local files both work."""
    dataset = "parallel_text" if config.dataset == "text" else config.dataset
    return dataclasses.replace(config, dataset=dataset, source_language=config.target_language)


def load_text_splits(config: DataConfig, workdir: str) -> dict[str, Sequence[dict[str, str]]]:
    """Like ``sources.load_splits``, with the target side's text only (see module doc)."""
    splits = sources.load_splits(_source_config(config), workdir)
    return {name: TargetText(split) if len(split) else [] for name, split in splits.items()}


def batch_config(config: DataConfig) -> DataConfig:
    """The batching view of ``config`` for one-sided rows.

    The pair pipeline charges a row of length L twice (source and target); a text row has
    one side, so the budget ``data.tokens_per_batch`` buys rows of L text tokens.
    """
    return dataclasses.replace(config, tokens_per_batch=2 * config.tokens_per_batch)


def describe_text(config: DataConfig) -> str:
    """One line about the text for logs."""
    if config.dataset == "text":
        return (f"text ({config.target_language}): train {config.train_files}, validation "
                f"{config.validation_files}, test {config.test_files or '(none)'}")
    return f"the {config.target_language!r} side of {sources.describe(config)}"

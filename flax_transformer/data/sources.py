"""Which dataset a config names, prepared once with TFDS and read through ``as_data_source``.

Every split comes back as a random-access sequence of ``{"source": str, "target": str}``
records; nothing downstream knows whether it was built in, local files or a TFDS
catalogue dataset such as ``wmt14_translate/de-en``.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import tensorflow_datasets as tfds

from flax_transformer.config import DataConfig
from flax_transformer.data import chunked
from flax_transformer.data.errors import DataError
from flax_transformer.data.number_words import NumberWords
from flax_transformer.data.parallel_text import SPLITS, ParallelText, ParallelTextConfig


class TextPairs(Sequence):
    """A TFDS split seen as ``{"source": str, "target": str}`` records.

    Attributes:
      skipped: counts of pairs left out when the split was prepared (e.g. empty lines).
    """

    def __init__(self, records: Sequence, source_key: str, target_key: str,
                 skipped: dict[str, int] | None = None):
        self._records, self._keys = records, (source_key, target_key)
        self.skipped = dict(skipped or {})
        self._batched = True

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, str]:
        return self._convert(self._records[index])

    def __iter__(self) -> Iterator[dict[str, str]]:
        return chunked.iterate(self)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, str]]:
        """Many records at once (array_record reads them in one call)."""
        if self._batched and hasattr(self._records, "__getitems__"):
            try:
                records = self._records.__getitems__(list(indices))
            except TypeError:
                # tfds.testing.mock_data's sources take no batched reads (their
                # __getitems__ is an unbound function); read them one by one instead.
                self._batched = False
            else:
                return [self._convert(record) for record in records]
        return [self[index] for index in indices]

    def _convert(self, record: dict[str, Any]) -> dict[str, str]:
        source_key, target_key = self._keys
        return {"source": _text(record[source_key]), "target": _text(record[target_key])}


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def data_dir(config: DataConfig, workdir: str) -> str:
    """Where prepared datasets live: ``config.data_dir`` or ``WORKDIR/data``."""
    return os.path.expanduser(config.data_dir or os.path.join(workdir, "data"))


def _builder(config: DataConfig, directory: str) -> tfds.core.DatasetBuilder:
    if config.dataset == "number_words":
        return NumberWords(data_dir=directory, file_format="array_record")
    if config.dataset == "parallel_text":
        prefixes = dict(zip(SPLITS, (config.train_files, config.validation_files,
                                     config.test_files), strict=True))
        if not prefixes["validation"]:
            raise DataError("data.validation_files is empty; give the prefix of the "
                             "validation files.")
        builder_config = ParallelTextConfig(source_language=config.source_language,
                                            target_language=config.target_language,
                                            prefixes=prefixes)
        return ParallelText(config=builder_config, data_dir=directory,
                            file_format="array_record")
    import tensorflow_datasets.translate  # noqa: F401  (registers the WMT builders)

    try:
        return tfds.builder(config.dataset, data_dir=directory, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError as error:
        raise DataError(f"data.dataset={config.dataset!r} is neither 'number_words', "
                         f"'parallel_text' nor a TFDS dataset name.") from error


def _language_keys(config: DataConfig, builder: tfds.core.DatasetBuilder) -> tuple[str, str]:
    """Record keys of the source and target sides."""
    if isinstance(builder, ParallelText):
        return "source", "target"  # the files were chosen by language already
    keys = {"en": "source", "de": "target"} if isinstance(builder, NumberWords) else {
        language: language for language in builder.info.features}
    for language in (config.source_language, config.target_language):
        if language not in keys:
            raise DataError(f"{config.dataset} has the languages {sorted(keys)}, not "
                             f"{language!r}; set data.source_language/data.target_language.")
    return keys[config.source_language], keys[config.target_language]


def load_splits(config: DataConfig, workdir: str) -> dict[str, Sequence[dict[str, str]]]:
    """Prepares the dataset once (reused afterwards) and opens its three splits.

    Args:
      config: the data section of the run's config.
      workdir: the run directory; data goes to ``config.data_dir`` or ``WORKDIR/data``.

    Returns:
      {"train", "validation", "test"} → random-access ``{"source", "target"}`` records;
      a split the dataset lacks (e.g. no ``data.test_files``) is an empty list.
    """
    builder = _builder(config, data_dir(config, workdir))
    if not isinstance(builder, (NumberWords, ParallelText)):
        _check_download_possible(config, builder)
    try:
        builder.download_and_prepare()
    except ImportError as error:  # catalogue builders may download and parse with TensorFlow
        raise ImportError(
            f"preparing {config.dataset} needs the module {error.name!r}: install it (e.g. "
            f"pip install tensorflow), or set data.data_dir to a copy prepared elsewhere "
            f"with file_format='array_record'.") from error
    keys = _language_keys(config, builder)
    skipped = dict(builder.info.metadata or {}).get("skipped", {})
    known = builder.info.splits or SPLITS  # (mocked builders list no splits: try all)
    return {
        split: TextPairs(builder.as_data_source(split=split), *keys, skipped.get(split))
        if split in known else []
        for split in SPLITS
    }


_REAL_DOWNLOAD = tfds.core.DatasetBuilder.download_and_prepare.__qualname__
# Where the downloads come from: statmt.org for the WMT builders, else Google's storage.
_PROBE_HOSTS = {"wmt": ("www.statmt.org", 80), "": ("storage.googleapis.com", 443)}


def _check_download_possible(config: DataConfig, builder: tfds.core.DatasetBuilder,
                             seconds: float = 5.0) -> None:
    """Fails within seconds, saying what to do, when a catalogue dataset must be downloaded
    but the network is unreachable (TFDS would retry for minutes)."""
    download = getattr(type(builder).download_and_prepare, "__qualname__", "")
    if builder.is_prepared() or download != _REAL_DOWNLOAD:
        return  # prepared already, or tfds.testing.mock_data stands in for the download
    host = next(host for prefix, host in _PROBE_HOSTS.items()
                if config.dataset.startswith(prefix))
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            socket.create_connection(host, timeout=seconds).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(error)
    thread = threading.Thread(target=probe, daemon=True)  # bounds a hanging DNS lookup too
    thread.start()
    thread.join(seconds)
    if not outcome or outcome[0] is not None:
        cause = outcome[0] if outcome else f"no answer in {seconds:.0f} s"
        raise DataError(
            f"data.dataset={config.dataset!r} must be downloaded first, but the network is "
            f"unreachable ({host[0]}: {cause}); run once with network access (the "
            f"prepared data is kept in {builder.data_dir}), or set data.data_dir to a copy "
            "prepared elsewhere.")


def describe(config: DataConfig) -> str:
    """One line about the dataset for logs."""
    direction = f"{config.source_language}→{config.target_language}"
    if config.dataset == "number_words":
        return "number_words (built in): English number words → German, 0 … 999,999"
    if config.dataset == "parallel_text":
        return (f"parallel_text {direction}: train {config.train_files}, validation "
                f"{config.validation_files}, test {config.test_files or '(none)'}")
    return f"TFDS {config.dataset} {direction}"

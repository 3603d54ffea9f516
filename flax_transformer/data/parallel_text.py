"""Local aligned text files as a TFDS dataset: line i of PREFIX.src ↔ line i of PREFIX.tgt.

For a prefix ``data/train`` and languages ``en``/``de`` the files are ``data/train.en``
and ``data/train.de``, each plain or gzip'd (``data/train.de.gz``). Files whose line
counts differ are refused; pairs with an empty side or bytes that are not UTF-8 are
skipped and counted (``info.metadata["skipped"]``); an empty file is an error.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from flax_transformer.data.builder_info import LocalDatasetInfo
from flax_transformer.data.errors import GZIP_ERRORS, DataError

SPLITS = ("train", "validation", "test")


def resolve_file(prefix: str, language: str) -> Path:
    """PREFIX.LANGUAGE, or PREFIX.LANGUAGE.gz where only the gzip'd file exists."""
    plain = Path(f"{prefix}.{language}").expanduser()
    for path in (plain, plain.with_name(plain.name + ".gz")):
        if path.is_file():
            return path.resolve()
    raise FileNotFoundError(
        f"found neither {plain} nor {plain}.gz; check the data.*_files prefix and "
        f"data.source_language/data.target_language."
    )


def read_lines(path: Path) -> Iterator[bytes]:
    """The raw lines of a plain or gzip'd file, without their line endings."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            for line in handle:
                yield line.rstrip(b"\r\n")
    except GZIP_ERRORS as error:
        raise DataError(f"{path} is named .gz but is not complete gzip data ({error}); "
                        "rename it without .gz if it is plain text, or re-download it.") from error


def check_aligned(source_path: Path, target_path: Path) -> int:
    """Returns the common line count, or raises ValueError for an empty or misaligned pair."""
    counts = [sum(1 for _ in read_lines(path)) for path in (source_path, target_path)]
    for path, count in zip((source_path, target_path), counts, strict=True):
        if count == 0:
            raise DataError(f"{path} is empty; parallel text needs one sentence a line.")
    if counts[0] != counts[1]:
        raise DataError(
            f"{source_path} has {counts[0]} lines but {target_path} has {counts[1]}; "
            f"line i of one must be the translation of line i of the other."
        )
    return counts[0]


def read_pairs(source_path: Path, target_path: Path, skipped: dict[str, int]):
    """Yields (line_number, source, target) for usable lines; counts the rest in ``skipped``.

    ``skipped`` gets the keys "empty" (a side is blank) and "non_utf8" (a side is not
    valid UTF-8); line numbers start at 1.
    """
    skipped.setdefault("empty", 0)
    skipped.setdefault("non_utf8", 0)
    lines = zip(read_lines(source_path), read_lines(target_path), strict=True)
    for line_number, raw_pair in enumerate(lines, start=1):
        try:
            source, target = (raw.decode("utf-8").strip() for raw in raw_pair)
        except UnicodeDecodeError:
            skipped["non_utf8"] += 1
            continue
        if not source or not target:
            skipped["empty"] += 1
            continue
        yield line_number, source, target


class ParallelTextConfig(tfds.core.BuilderConfig):
    """Which files form each split; the name hashes their paths, sizes and times."""

    def __init__(self, *, source_language: str, target_language: str,
                 prefixes: dict[str, str]):
        self.source_language, self.target_language = source_language, target_language
        self.files = {
            split: (resolve_file(prefix, source_language), resolve_file(prefix, target_language))
            for split, prefix in prefixes.items() if prefix
        }
        if "train" not in self.files:
            raise DataError("data.train_files is empty; give the prefix of the training files.")
        fingerprint = hashlib.sha256()
        for split, paths in sorted(self.files.items()):
            for path in paths:
                stat = path.stat()
                fingerprint.update(f"{split}:{path}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        languages = re.sub(r"[^\w]", "_", f"{source_language}-{target_language}")
        super().__init__(name=f"{languages}-{fingerprint.hexdigest()[:16]}",
                         description=f"{source_language}→{target_language} from "
                                     + ", ".join(f"{split} {prefix}" for split, prefix
                                                 in prefixes.items() if prefix))


class ParallelText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Aligned local text files; needs a ParallelTextConfig (``config=``)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return LocalDatasetInfo(
            builder=self, description=__doc__, disable_shuffling=True,
            features=tfds.features.FeaturesDict({"source": text, "target": text,
                                                 "line": np.int64}),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # local files only
        self.info.metadata["skipped"] = {}
        for paths in self.builder_config.files.values():
            check_aligned(*paths)
        return {split: self._generate_examples(split, *paths)
                for split, paths in self.builder_config.files.items()}

    def _generate_examples(self, split: str, source_path: Path, target_path: Path):
        skipped = self.info.metadata["skipped"].setdefault(split, {})
        usable = 0
        for line_number, source, target in read_pairs(source_path, target_path, skipped):
            usable += 1
            yield line_number, {"source": source, "target": target, "line": line_number}
        if not usable:
            raise DataError(f"{source_path} and {target_path} hold no usable sentence pair.")

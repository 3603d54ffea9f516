"""parallel_text: local aligned files round-trip through TFDS; bad files fail clearly."""

import dataclasses
import gzip

import pytest

from flax_transformer import data
from flax_transformer.config import DataConfig

TRAIN = [("A dog runs.", "Ein Hund rennt."), ("Two cats sleep.", "Zwei Katzen schlafen."),
         ("Fußball im Schnee", "Football in the snow"), ("Über alles", "Above all")]
VALIDATION = [("A red car.", "Ein rotes Auto."), ("Hello", "Hallo")]


def write(path, lines, compress=False):
    """Writes lines (str or raw bytes) one a line, gzip'd when asked."""
    raw = b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n"
                   for line in lines)
    if compress:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def corpus(tmp_path, train=TRAIN, validation=VALIDATION, test=None) -> DataConfig:
    """Writes PREFIX.en (plain) and PREFIX.de.gz per split; returns a config naming them."""
    prefixes = {}
    for split, pairs in (("train", train), ("val", validation), ("test", test)):
        if pairs is None:
            continue
        write(tmp_path / f"{split}.en", [source for source, _ in pairs])
        write(tmp_path / f"{split}.de", [target for _, target in pairs], compress=True)
        prefixes[split] = str(tmp_path / split)
    return DataConfig(dataset="parallel_text", source_language="en", target_language="de",
                      train_files=prefixes["train"], validation_files=prefixes["val"],
                      test_files=prefixes.get("test", ""), data_dir=str(tmp_path / "prepared"))


def as_tuples(records):
    return [(record["source"], record["target"]) for record in records]


def test_round_trip_keeps_order_and_text(tmp_path):
    config = corpus(tmp_path, test=TRAIN[:1])
    splits = data.load_splits(config, str(tmp_path / "work"))
    assert as_tuples(splits["train"]) == TRAIN
    assert as_tuples(splits["validation"]) == VALIDATION
    assert as_tuples(splits["test"]) == TRAIN[:1]
    assert splits["train"].skipped == {"empty": 0, "non_utf8": 0}
    reversed_splits = data.load_splits(
        dataclasses.replace(config, source_language="de", target_language="en"), str(tmp_path))
    assert as_tuples(reversed_splits["train"]) == [(de, en) for en, de in TRAIN]
    assert "parallel_text en→de" in data.describe(config)


def test_prepared_data_is_reused_until_a_file_changes(tmp_path):
    config = corpus(tmp_path)
    data.load_splits(config, str(tmp_path))
    prepared = sorted((tmp_path / "prepared").rglob("*train.array_record*"))
    stamp = prepared[0].stat().st_mtime_ns
    data.load_splits(config, str(tmp_path))
    assert sorted((tmp_path / "prepared").rglob("*train.array_record*")) == prepared
    assert prepared[0].stat().st_mtime_ns == stamp
    changed = corpus(tmp_path, train=TRAIN[:2])
    assert as_tuples(data.load_splits(changed, str(tmp_path))["train"]) == TRAIN[:2]


def test_missing_test_split_is_empty(tmp_path):
    assert data.load_splits(corpus(tmp_path), str(tmp_path))["test"] == []


def test_mismatched_line_counts_name_both_files_and_counts(tmp_path):
    config = corpus(tmp_path)
    write(tmp_path / "train.en", [source for source, _ in TRAIN] + ["one more line"])
    with pytest.raises(ValueError) as error:
        data.load_splits(config, str(tmp_path))
    message = str(error.value)
    assert "train.en has 5 lines" in message and "train.de.gz has 4" in message


def test_empty_lines_and_bad_bytes_are_skipped_and_counted(tmp_path, tokenizer):
    config = corpus(tmp_path)
    write(tmp_path / "train.en", [TRAIN[0][0], "", b"caf\xe9 latin-1", TRAIN[1][0], "  "])
    write(tmp_path / "train.de", [TRAIN[0][1], "x", "Kaffee", TRAIN[1][1], "y"], compress=True)
    splits = data.load_splits(config, str(tmp_path))
    assert as_tuples(splits["train"]) == TRAIN[:2]
    assert splits["train"].skipped == {"empty": 2, "non_utf8": 1}
    stats = data.train_batches(splits["train"], tokenizer, dataclasses.replace(
        config, max_length=64, tokens_per_batch=512), 1).stats
    assert (stats["skipped_empty"], stats["skipped_non_utf8"], stats["pairs"]) == (2, 1, 2)


def test_empty_file_is_an_error(tmp_path):
    config = corpus(tmp_path)
    write(tmp_path / "val.en", [])
    write(tmp_path / "val.de", [], compress=True)
    with pytest.raises(ValueError, match=r"val\.en is empty"):
        data.load_splits(config, str(tmp_path))


def test_missing_file_names_both_candidates(tmp_path):
    config = dataclasses.replace(corpus(tmp_path), validation_files=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"nope\.en nor .*nope\.en\.gz"):
        data.load_splits(config, str(tmp_path))

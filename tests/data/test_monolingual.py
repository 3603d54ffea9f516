"""monolingual.py: the target side of any dataset as text; the <mask> piece of tokenizers."""

import dataclasses

import pytest

from flax_transformer import data
from flax_transformer.config import DataConfig
from flax_transformer.data import number_words
from flax_transformer.data.number_words import NumberWords, NumberWordsConfig


def test_number_words_gives_its_german_side(tmp_path, monkeypatch):
    small = NumberWordsConfig(name="default", train_size=150, eval_size=10)
    monkeypatch.setattr(NumberWords, "BUILDER_CONFIGS", [small])
    splits = data.load_text_splits(DataConfig(data_dir=str(tmp_path)), "unused")
    numbers = number_words.split_numbers(150, 10)["validation"].tolist()
    assert list(splits["validation"]) == [{"source": "", "target": number_words.german(n)}
                                          for n in numbers]
    assert splits["train"].__getitems__([0, 1]) == [splits["train"][0], splits["train"][1]]


def test_local_text_needs_one_file_per_split(tmp_path):
    for split, lines in (("train", ["eins", "", "zwei drei"]), ("valid", ["vier"])):
        (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = DataConfig(dataset="text", target_language="txt", data_dir=str(tmp_path / "d"),
                        train_files=str(tmp_path / "train"),
                        validation_files=str(tmp_path / "valid"))
    splits = data.load_text_splits(config, "unused")
    assert [record["target"] for record in splits["train"]] == ["eins", "zwei drei"]
    assert splits["train"].skipped == {"empty": 1, "non_utf8": 0}
    assert splits["test"] == []
    assert "text (txt)" in data.describe_text(config)
    missing = dataclasses.replace(config, train_files=str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match=r"nothing\.txt"):
        data.load_text_splits(missing, "unused")


def test_batch_config_buys_rows_of_one_side():
    config = DataConfig(tokens_per_batch=4096)
    assert data.batch_config(config).tokens_per_batch == 8192
    assert data.batch_config(config).max_length == config.max_length


def test_mask_piece_only_where_asked(tmp_path, number_pairs):
    sentences = [pair["target"] for pair in number_pairs]
    plain = data.Tokenizer.train(sentences, str(tmp_path / "plain.model"), 80)
    masked = data.Tokenizer.train(sentences, str(tmp_path / "mask.model"), 80,
                                  symbols=(data.MASK_PIECE,))
    assert plain.mask_id is None and masked.mask_id == data.MASK_ID
    ids = masked.encode("drei<mask>zwanzig")
    assert ids.count(data.MASK_ID) == 1 and data.MASK_ID not in plain.encode("drei<mask>")
    assert (plain.pad_id, plain.unk_id, plain.bos_id, plain.eos_id) == (0, 1, 2, 3)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "tokenizer.model").write_bytes((tmp_path / "plain.model").read_bytes())
    with pytest.raises(data.DataError, match="no <mask> piece"):
        data.get_tokenizer(DataConfig(vocab_size=80), str(workdir), [],
                           symbols=(data.MASK_PIECE,))

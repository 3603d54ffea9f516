"""load_splits for the built-in dataset and for a TFDS catalogue dataset (mocked WMT)."""

import dataclasses

import pytest
import tensorflow_datasets as tfds

from flax_transformer import data
from flax_transformer.config import DataConfig
from flax_transformer.data import number_words
from flax_transformer.data.number_words import NumberWords, NumberWordsConfig


def test_number_words_splits_in_both_directions(tmp_path, monkeypatch):
    small = NumberWordsConfig(name="default", train_size=150, eval_size=10)
    monkeypatch.setattr(NumberWords, "BUILDER_CONFIGS", [small])
    config = DataConfig(data_dir=str(tmp_path))
    splits = data.load_splits(config, workdir="unused")
    assert {name: len(split) for name, split in splits.items()} == {
        "train": 150, "validation": 10, "test": 10}
    numbers = number_words.split_numbers(150, 10)["validation"].tolist()
    assert list(splits["validation"]) == [
        {"source": number_words.english(n), "target": number_words.german(n)} for n in numbers]
    german_first = dataclasses.replace(config, source_language="de", target_language="en")
    assert data.load_splits(german_first, "unused")["test"][3] == {
        "source": splits["test"][3]["target"], "target": splits["test"][3]["source"]}
    with pytest.raises(ValueError, match="not 'fr'"):
        data.load_splits(dataclasses.replace(config, target_language="fr"), "unused")


def test_default_data_dir_is_inside_the_workdir(tmp_path, monkeypatch):
    monkeypatch.setattr(NumberWords, "BUILDER_CONFIGS",
                        [NumberWordsConfig(name="default", train_size=30, eval_size=3)])
    data.load_splits(DataConfig(), workdir=str(tmp_path))
    assert list((tmp_path / "data" / "number_words" / "default").iterdir())


def test_tfds_translation_dataset_by_name_maps_languages(tmp_path):
    config = DataConfig(dataset="wmt14_translate/de-en", source_language="en",
                        target_language="de", data_dir=str(tmp_path))
    with tfds.testing.mock_data(num_examples=6):
        splits = data.load_splits(config, workdir=str(tmp_path))
        raw = tfds.builder("wmt14_translate/de-en", data_dir=str(tmp_path)).as_data_source(
            split="validation")
        assert {name: len(split) for name, split in splits.items()} == {
            "train": 6, "validation": 6, "test": 6}
        for index in range(6):
            assert splits["validation"][index] == {"source": raw[index]["en"],
                                                   "target": raw[index]["de"]}
            assert isinstance(splits["validation"][index]["source"], str)
        with pytest.raises(ValueError, match="not 'fr'"):
            data.load_splits(dataclasses.replace(config, source_language="fr"), str(tmp_path))
    assert data.describe(config) == "TFDS wmt14_translate/de-en en→de"


def test_unknown_dataset_name_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="neither 'number_words', 'parallel_text' nor"):
        data.load_splits(DataConfig(dataset="no_such_dataset_xyz"), str(tmp_path))

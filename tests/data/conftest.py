"""Shared fixtures: a few hundred number-word pairs and a small tokenizer trained on them."""

import pytest
import tensorflow_datasets as tfds

from flax_transformer.data import number_words
from flax_transformer.data.tokenizer import Tokenizer

tfds.display_progress_bar(False)


@pytest.fixture(scope="session")
def number_pairs() -> list[dict[str, str]]:
    """600 distinct numbers of every magnitude as {"source": English, "target": German}."""
    numbers = number_words.split_numbers(560, 20, seed=1)
    return [{"source": number_words.english(n), "target": number_words.german(n)}
            for split in ("train", "validation", "test") for n in numbers[split].tolist()]


@pytest.fixture(scope="session")
def tokenizer(number_pairs, tmp_path_factory) -> Tokenizer:
    sentences = [text for pair in number_pairs for text in pair.values()]
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    return Tokenizer.train(sentences, str(path), vocab_size=120, model_type="unigram")

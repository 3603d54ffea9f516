"""Shared fixtures: a few hundred number-word pairs and a small tokenizer trained on them."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from flax_transformer.data import number_words
from flax_transformer.data.tokenizer import Tokenizer

tfds.display_progress_bar(False)


@pytest.fixture(scope="session")
def number_pairs() -> list[dict[str, str]]:
    """600 distinct numbers of every magnitude as {"source": English, "target": German}:
    all of 0 … 99 and 125 each of 3 … 6 digits, shuffled."""
    rng = np.random.default_rng(1)
    numbers = [np.arange(100)] + [
        rng.choice(number_words.digit_range(digits), 125, replace=False) for digits in (3, 4,
                                                                                        5, 6)]
    return [{"source": number_words.english(n), "target": number_words.german(n)}
            for n in rng.permutation(np.concatenate(numbers)).tolist()]


@pytest.fixture(scope="session")
def tokenizer(number_pairs, tmp_path_factory) -> Tokenizer:
    sentences = [text for pair in number_pairs for text in pair.values()]
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    return Tokenizer.train(sentences, str(path), vocab_size=120, model_type="unigram")

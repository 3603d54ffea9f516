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
    all of 0 … 99 and 125 each of 3 … 6 digits (their lengths run from 3 to 27 tokens)."""
    rng = np.random.default_rng(1)
    chosen = []
    for digits, size in enumerate((10, 90, 125, 125, 125, 125)):
        low = 0 if digits == 0 else 10**digits
        chosen.append(low + rng.choice(10 ** (digits + 1) - low, size, replace=False))
    numbers = np.concatenate(chosen)
    small, large = numbers[numbers < 1000], rng.permutation(numbers[numbers >= 1000])
    ordered = [*rng.permutation(np.concatenate([small, large[40:]])), *large[:40]]
    return [{"source": number_words.english(int(n)), "target": number_words.german(int(n))}
            for n in ordered]


@pytest.fixture(scope="session")
def tokenizer(number_pairs, tmp_path_factory) -> Tokenizer:
    sentences = [text for pair in number_pairs for text in pair.values()]
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    return Tokenizer.train(sentences, str(path), vocab_size=120, model_type="unigram")

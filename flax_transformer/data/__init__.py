"""Everything that turns text into batches; the only package that knows TFDS, grain and
SentencePiece.

    splits = data.load_splits(config.data, workdir)          # {"train", "validation", "test"}
    tokenizer = data.get_tokenizer(config.data, workdir, splits["train"])
    batches = data.train_batches(splits["train"], tokenizer, config.data, batch_multiple)
    eval_batches = data.eval_batches(splits["validation"], tokenizer, config.data, multiple)

Files, bottom to top: chunked.py (reading many records of a split per call),
number_text.py (the built-in task's words, no TFDS), number_words.py and parallel_text.py
(our TFDS builders), sources.py (which dataset,
prepared once), tokenizer.py (SentencePiece), tokens.py (the tokenization cache),
batching.py (token-budget plans, buckets, packing), pipeline.py; monolingual.py views
one side as text for decoder_only/encoder_only runs.
"""

import importlib
from typing import Any

from flax_transformer.data.errors import GZIP_ERRORS, DataError
from flax_transformer.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    MASK_ID,
    MASK_PIECE,
    PAD_ID,
    UNK_ID,
    Tokenizer,
    get_tokenizer,
)

# Imported on first use (PEP 562): TFDS and grain take seconds to import, and translating
# with a trained run (decode.py) needs neither, only the tokenizer.
_LAZY = {
    "batch_config": "monolingual", "describe_text": "monolingual",
    "load_text_splits": "monolingual",
    "TrainBatches": "pipeline", "eval_batches": "pipeline", "train_batches": "pipeline",
    "TextPairs": "sources", "describe": "sources", "load_splits": "sources",
}


_SUBMODULES = ("batching", "monolingual", "number_text", "number_words", "parallel_text",
               "pipeline", "sources", "tokens")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:  # data.sources etc. (importing it binds the attribute)
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


__all__ = [
    "BOS_ID",
    "EOS_ID",
    "GZIP_ERRORS",
    "MASK_ID",
    "MASK_PIECE",
    "PAD_ID",
    "UNK_ID",
    "DataError",
    "TextPairs",
    "Tokenizer",
    "TrainBatches",
    "batch_config",
    "describe",
    "describe_text",
    "eval_batches",
    "get_tokenizer",
    "load_splits",
    "load_text_splits",
    "train_batches",
]

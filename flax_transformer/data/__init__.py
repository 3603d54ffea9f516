"""Everything that turns text into batches; the only package that knows TFDS, grain and
SentencePiece.

    splits = data.load_splits(config.data, workdir)          # {"train", "validation", "test"}
    tokenizer = data.get_tokenizer(config.data, workdir, splits["train"])
    batches = data.train_batches(splits["train"], tokenizer, config.data, batch_multiple)
    eval_batches = data.eval_batches(splits["validation"], tokenizer, config.data, multiple)

Files, bottom to top: number_words.py and parallel_text.py (our TFDS builders),
sources.py (which dataset, prepared once), tokenizer.py (SentencePiece), tokens.py (the
tokenization cache), batching.py (token-budget plans, buckets, packing), pipeline.py;
monolingual.py views one side as text for decoder_only/encoder_only runs.
"""

from flax_transformer.data.errors import DataError
from flax_transformer.data.monolingual import batch_config, describe_text, load_text_splits
from flax_transformer.data.pipeline import TrainBatches, eval_batches, train_batches
from flax_transformer.data.sources import TextPairs, describe, load_splits
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

__all__ = [
    "BOS_ID",
    "EOS_ID",
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

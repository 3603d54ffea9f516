"""One SentencePiece vocabulary shared by source and target, as in the paper (section 5.1).

Ids: 0 padding, 1 unknown, 2 BOS, 3 EOS; a tokenizer trained with ``symbols=(MASK_PIECE,)``
(encoder_only runs) has ``<mask>`` at 4, so translation vocabularies are unchanged. The
model is trained in memory from the training split and saved as ``WORKDIR/tokenizer.model``
so that resume and decode.py reuse exactly the same vocabulary.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from flax_transformer.config import DataConfig
from flax_transformer.data import chunked
from flax_transformer.data.errors import DataError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MASK_PIECE, MASK_ID = "<mask>", 4  # the first user-defined symbol follows the four above
FILE_NAME = "tokenizer.model"


class Tokenizer:
    """Text ↔ ids with one SentencePiece model; ``encode`` adds neither BOS nor EOS."""

    def __init__(self, model_proto: bytes):
        self._model_proto = model_proto
        self._processor = spm.SentencePieceProcessor(model_proto=model_proto)
        special = (self._processor.pad_id(), self._processor.unk_id(),
                   self._processor.bos_id(), self._processor.eos_id())
        if special != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise DataError(f"the SentencePiece model has pad/unk/bos/eos ids {special}, "
                             f"not {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}; train a new one.")

    @classmethod
    def load(cls, path: str) -> Tokenizer:
        with open(path, "rb") as handle:
            proto = handle.read()
        try:
            return cls(proto)
        except (RuntimeError, OSError) as error:  # SentencePiece: garbage or empty file
            raise DataError(
                f"{path} is not a readable SentencePiece model ({len(proto)} bytes: "
                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}); "
                "restore it from a copy of the run (the checkpoints need this exact "
                "vocabulary).") from error

    @classmethod
    def train(cls, sentences: Iterable[str], path: str, vocab_size: int,
              model_type: str = "unigram", symbols: Sequence[str] = ()) -> Tokenizer:
        """Trains on ``sentences`` (in memory) and writes the model to ``path``.

        ``vocab_size`` is an upper bound: a corpus too small for it gets fewer pieces.
        Every character of the corpus gets a piece (character_coverage=1.0, right for
        alphabetic scripts; a rare letter must not become <unk> in a translation).
        ``symbols`` (e.g. ``(MASK_PIECE,)``) become pieces of their own from id 4 on, also
        when they appear inside input text.
        """
        model = io.BytesIO()
        # One thread: multi-threaded unigram training was seen to give different models
        # for the same sentences, and runs must be repeatable.
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
            model_type=model_type, hard_vocab_limit=False, character_coverage=1.0,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            num_threads=1, minloglevel=2, **({"user_defined_symbols": list(symbols)}
                                             if symbols else {}),
        )
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        temporary = f"{path}.tmp"
        with open(temporary, "wb") as handle:
            handle.write(model.getvalue())
        os.replace(temporary, path)  # never a half-written model for resume to find
        return cls(model.getvalue())

    pad_id = property(lambda self: PAD_ID)
    unk_id = property(lambda self: UNK_ID)
    bos_id = property(lambda self: BOS_ID)
    eos_id = property(lambda self: EOS_ID)

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    @property
    def fingerprint(self) -> str:
        """sha256 of the serialized model: equal fingerprints, equal vocabularies."""
        return hashlib.sha256(self._model_proto).hexdigest()

    def encode(self, text: str) -> list[int]:
        return self._processor.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many texts at once (SentencePiece spreads them over threads)."""
        return self._processor.encode(texts)

    @staticmethod
    def content_ids(ids: Sequence[int]) -> list[int]:
        """``ids`` up to the first EOS, without padding and BOS: what ``decode`` reads."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if EOS_ID in ids:
            ids = ids[: ids.index(EOS_ID)]
        return [i for i in ids if i not in (PAD_ID, BOS_ID)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` up to the first EOS; padding and BOS are skipped."""
        return self._processor.decode([self._known(i) for i in self.content_ids(ids)])

    @property
    def mask_id(self) -> int | None:
        """Id of the ``<mask>`` piece, or None when this vocabulary has none."""
        return MASK_ID if self._processor.piece_to_id(MASK_PIECE) == MASK_ID else None

    def id_to_piece(self, ids: Sequence[int]) -> list[str]:
        return [self._processor.id_to_piece(self._known(int(i)))
                for i in np.asarray(ids).reshape(-1)]

    def _known(self, token: int) -> int:
        """``token``, or <unk> for ids past a vocabulary smaller than the model's (a small
        corpus gives fewer pieces than data.vocab_size; the model may still predict them)."""
        return token if 0 <= token < self.vocab_size else UNK_ID

    def __getstate__(self) -> bytes:  # worker processes get the model, not a C++ handle
        return self._model_proto

    def __setstate__(self, model_proto: bytes) -> None:
        self.__init__(model_proto)


def training_sentences(pairs: Sequence[dict[str, str]], limit: int, seed: int = 0):
    """Source and target sentences of a seeded sample of ``pairs``, ``limit`` sentences at most."""
    order = np.random.default_rng(seed).permutation(len(pairs))[: max(1, limit // 2)]
    for pair in chunked.read_in_chunks(pairs, order.tolist()):
        yield pair["source"]
        yield pair["target"]


def get_tokenizer(config: DataConfig, workdir: str, train_pairs: Sequence[dict[str, str]],
                  symbols: Sequence[str] = ()) -> Tokenizer:
    """Loads ``WORKDIR/tokenizer.model``, or trains it on ``train_pairs`` if it is absent.

    ``symbols``: extra pieces the run needs (``(MASK_PIECE,)`` for encoder_only).
    """
    path = os.path.join(workdir, FILE_NAME)
    if os.path.exists(path):
        tokenizer = Tokenizer.load(path)
    else:
        sentences = training_sentences(train_pairs, config.tokenizer_sentences,
                                       config.shuffle_seed)
        tokenizer = Tokenizer.train(sentences, path, config.vocab_size, config.tokenizer_type,
                                    symbols)
    if MASK_PIECE in symbols and tokenizer.mask_id is None:
        raise DataError(f"{path} has no {MASK_PIECE} piece, which an encoder_only run needs; "
                         "use a fresh --workdir.")
    if tokenizer.vocab_size > config.vocab_size:
        raise DataError(f"{path} has {tokenizer.vocab_size} pieces but data.vocab_size is "
                         f"{config.vocab_size}; use a matching workdir or delete the file.")
    return tokenizer

"""The shared SentencePiece vocabulary: special ids, round trips, save/load, workdir reuse."""

import pickle

import pytest

from flax_transformer import data
from flax_transformer.config import DataConfig
from flax_transformer.data.tokenizer import Tokenizer


def test_special_ids_are_pad_unk_bos_eos(tokenizer):
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (
        0, 1, 2, 3) == (data.PAD_ID, data.UNK_ID, data.BOS_ID, data.EOS_ID)
    assert tokenizer.id_to_piece([0, 1, 2, 3]) == ["<pad>", "<unk>", "<s>", "</s>"]
    assert tokenizer.vocab_size == 120


def test_encode_decode_round_trip_without_special_tokens(tokenizer, number_pairs):
    for pair in number_pairs[:200]:
        for text in pair.values():
            ids = tokenizer.encode(text)
            assert min(ids) > 3  # no pad/unk/BOS/EOS inside known text
            assert tokenizer.decode(ids) == text
            assert "".join(tokenizer.id_to_piece(ids)).replace("▁", " ").strip() == text


def test_decode_skips_pad_and_bos_and_stops_at_eos(tokenizer):
    ids = tokenizer.encode("dreihundertzweiundvierzig")
    other = tokenizer.encode("sieben")
    assert tokenizer.decode([2, *ids, 3, *other, 0, 0]) == "dreihundertzweiundvierzig"
    assert tokenizer.decode([0, 2, *ids[:1], 0, *ids[1:]]) == "dreihundertzweiundvierzig"
    assert tokenizer.decode([3, *ids]) == ""


def test_unknown_characters_become_unk(tokenizer):
    assert tokenizer.unk_id in tokenizer.encode("zwei 東京")


def test_save_load_and_pickle_keep_the_same_vocabulary(tokenizer, tmp_path, number_pairs):
    path = tmp_path / "copy.model"
    trained = Tokenizer.train([t for p in number_pairs for t in p.values()], str(path),
                              vocab_size=120)
    loaded = Tokenizer.load(str(path))
    assert loaded.fingerprint == trained.fingerprint == tokenizer.fingerprint  # deterministic
    restored = pickle.loads(pickle.dumps(loaded))
    text = number_pairs[7]["target"]
    assert restored.encode(text) == loaded.encode(text) == tokenizer.encode(text)


def test_get_tokenizer_trains_once_then_reuses_the_workdir_file(tmp_path, number_pairs):
    config = DataConfig(vocab_size=100, tokenizer_sentences=400)
    first = data.get_tokenizer(config, str(tmp_path), number_pairs)
    assert (tmp_path / "tokenizer.model").exists()
    second = data.get_tokenizer(config, str(tmp_path), [])  # no data: must load, not train
    assert second.fingerprint == first.fingerprint
    assert first.vocab_size <= 100
    with pytest.raises(ValueError, match=r"data\.vocab_size is 50"):
        data.get_tokenizer(DataConfig(vocab_size=50), str(tmp_path), [])


def test_bpe_model_type(tmp_path, number_pairs):
    config = DataConfig(vocab_size=80, tokenizer_type="bpe", tokenizer_sentences=400)
    tokenizer = data.get_tokenizer(config, str(tmp_path), number_pairs)
    assert tokenizer.decode(tokenizer.encode("neunzehn")) == "neunzehn"
    assert tokenizer.fingerprint != data.get_tokenizer(
        DataConfig(vocab_size=80, tokenizer_sentences=400), str(tmp_path / "u"),
        number_pairs).fingerprint

"""Small configs and batches shared by the training tests."""

import dataclasses

import numpy as np
import pytest

from flax_transformer import config as config_lib
from flax_transformer import presets


def micro_config(**train_overrides) -> config_lib.Config:
    """A very small model (fast to compile) with dropout off unless overridden."""
    base = presets.get_config("tiny")
    model = dataclasses.replace(base.model, vocab_size=64, d_model=32, num_heads=2, d_ff=64,
                                num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0,
                                max_length=32)
    data = dataclasses.replace(base.data, vocab_size=64, max_length=16, tokens_per_batch=512,
                               bucket_lengths=(16,), packing=False, eval_examples=8)
    train = dataclasses.replace(base.train, warmup_steps=10, **train_overrides)
    return dataclasses.replace(base, model=model, data=data, train=train).validate()


def random_batch(rng: np.random.Generator, rows: int = 8, length: int = 12,
                 vocab: int = 64) -> dict[str, np.ndarray]:
    """A translation batch with ragged padding: source, BOS-shifted input, EOS-ended output."""
    source = rng.integers(4, vocab, (rows, length)).astype(np.int32)
    target = rng.integers(4, vocab, (rows, length)).astype(np.int32)
    target_input = np.zeros_like(target)
    target_output = np.zeros_like(target)
    for row in range(rows):
        source[row, rng.integers(3, length):] = 0
        size = int(rng.integers(2, length))
        target_input[row, 0] = 2
        target_input[row, 1:size] = target[row, : size - 1]
        target_output[row, : size - 1] = target[row, : size - 1]
        target_output[row, size - 1] = 3
    return {"source": source, "target_input": target_input, "target_output": target_output}


def kind_config(kind: str, **train_overrides) -> config_lib.Config:
    """micro_config() as a decoder_only or encoder_only model (or unchanged for translation)."""
    config = micro_config(**train_overrides)
    if kind == "encoder_decoder":
        return config
    layers = {"num_encoder_layers": 0} if kind == "decoder_only" else {"num_decoder_layers": 0}
    model = dataclasses.replace(config.model, kind=kind, **layers)
    train = dataclasses.replace(config.train, best_metric="accuracy")
    return dataclasses.replace(config, model=model, train=train).validate()


def train_kind_run(tmp_path_factory, kind: str, steps: int = 2) -> str:
    """A few steps of kind_config(kind) on a fresh _write_corpus corpus, trained in this
    process; returns the workdir (config.json, tokenizer.model, checkpoints/)."""
    from flax_transformer import loop  # a heavy import only for the tests that train
    from tests.test_loop import _write_corpus

    corpus = _write_corpus(str(tmp_path_factory.mktemp(f"{kind}_corpus")))
    workdir = str(tmp_path_factory.mktemp(f"{kind}_run"))

    config = kind_config(kind, num_steps=steps, checkpoint_every=steps, eval_every=steps,
                         log_every=1)
    data = dataclasses.replace(
        config.data, dataset="parallel_text", train_files=f"{corpus}/train",
        validation_files=f"{corpus}/valid", test_files=f"{corpus}/test",
        tokenizer_sentences=1000, tokens_per_batch=640, max_length=16, bucket_lengths=(16,))
    loop.train_and_evaluate(dataclasses.replace(config, data=data).validate(), workdir)
    return workdir


def kind_run_fixtures(kind: str):
    """Module fixtures ``run_dir`` (train_kind_run of ``kind``) and ``restored`` (its
    ``inference.restore``); a test file assigns both: ``run_dir, restored = ...``."""
    @pytest.fixture(scope="module")
    def run_dir(tmp_path_factory):
        return train_kind_run(tmp_path_factory, kind)

    @pytest.fixture(scope="module")
    def restored(run_dir):
        from flax_transformer import inference

        return inference.restore(run_dir)
    return run_dir, restored


def run_decode(capsys, *argv):
    """(exit status, stdout lines, stderr) of decode.main(argv)."""
    import decode  # the script at the repository root

    status = decode.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out.split("\n")[:-1], captured.err


def decode_fails(capsys, *argv) -> str:
    """decode.main(argv) must exit with status 2; returns its stderr."""
    import pytest

    import decode

    with pytest.raises(SystemExit) as exited:
        decode.main(list(argv))
    assert exited.value.code == 2
    return capsys.readouterr().err

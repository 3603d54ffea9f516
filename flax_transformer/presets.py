"""Named presets: ``get_config("tiny")``; ``train.py --config NAME`` starts from one.

``tiny``, ``default`` (tiny on number_words, 1,000 steps), ``base`` and ``big`` (the
paper's models), ``multi30k`` (a small EN→DE model), ``lm`` (decoder-only) and ``mlm``
(encoder-only).
"""

from __future__ import annotations

import dataclasses

from flax_transformer.config import (
    Config,
    ConfigError,
    DataConfig,
    DecodeConfig,
    EvalConfig,
    ModelConfig,
    TrainConfig,
)


def _base() -> Config:
    return Config(name="base")


def _big() -> Config:
    model = ModelConfig(d_model=1024, num_heads=16, d_ff=4096, dropout_rate=0.3)
    return Config(name="big", model=model)


def _tiny() -> Config:
    """A model for tests and CPU runs on number_words (0.96 M parameters)."""
    model = ModelConfig(
        vocab_size=256, d_model=128, num_heads=4, d_ff=512,
        num_encoder_layers=2, num_decoder_layers=2, max_length=64, dropout_rate=0.1,
    )
    # Packed rows: a number is 2-12 pieces, so a padded row would be mostly padding.
    data = DataConfig(vocab_size=256, max_length=40, tokens_per_batch=4096,
                      bucket_lengths=(16, 24, 32, 40), packing=True, eval_examples=500,
                      tokenizer_sentences=20_000)
    train = TrainConfig(
        num_steps=500, learning_rate_scale=0.5, warmup_steps=100, log_every=50,
        eval_every=250, checkpoint_every=250, keep_checkpoints=3, best_metric="exact_match",
    )
    decode = DecodeConfig(tokens_per_batch=2048)
    return Config(name="tiny", model=model, data=data, train=train, decode=decode)


def _default() -> Config:
    """What ``python train.py`` runs: tiny on the built-in number_words task, 1,000 steps.

    500 steps (tiny's) leave the 6-digit class at 96–99 % exact match; 1,000 reach at least
    99.7 % in every digit class in about 2 min 10 s on two quiet CPU cores (README).
    """
    tiny = _tiny()
    train = dataclasses.replace(tiny.train, num_steps=1000, eval_every=500,
                                checkpoint_every=500)
    return dataclasses.replace(tiny, name="default", train=train)


def _multi30k() -> Config:
    """A small Transformer for Multi30k EN→DE, sized for one hour on a 2-core CPU.

    Set data.{train,validation,test}_files. The recipe: packed 4,000-token batches, dropout
    0.2, the paper's schedule with a 2,000-step linear cool-down to 0, checkpoints every 100
    steps and the average of the last 5, scored on validation (README: command and result).
    5,500 steps (about 22 epochs) took 37.9 min and scored 39.22, 39.99 and 39.25 sacreBLEU
    on test_2016_flickr (three seeds, beam 4), where dropout 0.1 with 3,500 steps had scored
    38.32-39.49 (mean 38.90 over five seeds): more epochs overfit at 0.1, and 0.3 with
    5,000 steps learned too slowly (37.59).
    """
    model = ModelConfig(
        vocab_size=8000, d_model=256, num_heads=4, d_ff=1024,
        num_encoder_layers=3, num_decoder_layers=3, max_length=128, dropout_rate=0.2,
    )
    data = DataConfig(
        dataset="parallel_text", vocab_size=8000, max_length=64, tokens_per_batch=4000,
        bucket_lengths=(16, 24, 32, 48, 64), packing=True, eval_examples=300,
    )
    train = TrainConfig(num_steps=5500, learning_rate_scale=1.0, warmup_steps=800,
                        cooldown_steps=2000, eval_every=700, checkpoint_every=100,
                        average_last=5)
    return Config(name="multi30k", model=model, data=data, train=train)


def _lm() -> Config:
    """A GPT-like decoder-only language model on the German side of number_words.

    Characters as tokens (tokenizer_type='char'): a prompt such as "drei" is then cut into
    tokens exactly as the same letters are inside "dreihundert…", so the model can continue
    any prefix (a subword vocabulary would cut "drei" differently on its own). Packed rows,
    no label smoothing; validation loss and perplexity. Measured (README): validation
    perplexity 1.41 per character after 400 steps (157 s of CPU time); decode.py's greedy
    continuations of ten prompts ("ein" … "zehn") all valid German numbers, 77 % of 200
    samples at temperature 1 (``continuations`` scores them).
    """
    model = ModelConfig(
        kind="decoder_only", vocab_size=64, d_model=128, num_heads=4, d_ff=512,
        num_encoder_layers=0, num_decoder_layers=3, max_length=80, dropout_rate=0.0,
    )
    data = DataConfig(vocab_size=64, tokenizer_type="char", max_length=72,
                      tokens_per_batch=4608, packing=True, tokenizer_sentences=20_000)
    train = TrainConfig(
        num_steps=400, learning_rate_scale=0.7, warmup_steps=100, label_smoothing=0.0,
        log_every=50, eval_every=200, checkpoint_every=200, keep_checkpoints=3,
        best_metric="perplexity",
    )
    evaluation = EvalConfig(max_batches=20)
    # A continuation may fill every position the model knows (a prompt "drei" may become
    # a 60-letter number); greedy by default, as language models are usually decoded.
    decode = DecodeConfig(method="greedy", max_extra_length=80)
    return Config(name="lm", model=model, data=data, train=train, eval=evaluation,
                  decode=decode)


def _mlm() -> Config:
    """A BERT-like encoder-only masked-token model on the German side of number_words.

    15 % of the tokens are chosen (80 % become <mask>, 10 % a random piece, 10 % stay);
    metrics: masked-token loss and accuracy, and the accuracy of always answering the
    most frequent token on the same positions. The numbers are drawn at random, so most
    masked pieces (a digit's word) cannot be known from their context: the model can learn
    the grammar around them, not the digits, and its accuracy stays far below 100 %.
    Measured (README): 12.6 % validation masked accuracy against 7.8 % for the commonest
    token (600 steps, 144 s of CPU time).
    """
    model = ModelConfig(
        kind="encoder_only", vocab_size=256, d_model=128, num_heads=4, d_ff=512,
        num_encoder_layers=3, num_decoder_layers=0, max_length=32, dropout_rate=0.1,
    )
    data = DataConfig(vocab_size=256, max_length=24, tokens_per_batch=2048,
                      bucket_lengths=(8, 16, 24), tokenizer_sentences=20_000)
    train = TrainConfig(
        num_steps=600, learning_rate_scale=0.5, warmup_steps=100, label_smoothing=0.0,
        log_every=50, eval_every=300, checkpoint_every=300, keep_checkpoints=3,
        best_metric="accuracy",
    )
    evaluation = EvalConfig(max_batches=20)
    return Config(name="mlm", model=model, data=data, train=train, eval=evaluation)


PRESETS = {
    "tiny": _tiny, "base": _base, "big": _big, "default": _default, "multi30k": _multi30k,
    "lm": _lm, "mlm": _mlm,
}


def get_config(name: str = "default") -> Config:
    """Returns the preset called ``name`` (one of PRESETS)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    return PRESETS[name]().validate()

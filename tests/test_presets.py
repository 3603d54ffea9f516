"""presets.py: each preset is what its docstring says — base and big the paper's numbers
(Vaswani et al. 2017, Table 3 and section 5), the small ones their documented recipes — and
get_config returns a fresh, valid, frozen config named after its preset."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from flax_transformer import config_fields, presets
from flax_transformer.config import ConfigError
from flax_transformer.model import Transformer
from flax_transformer.presets import get_config

SECTIONS = ("model", "data", "train", "decode", "eval")


def _leaves(config) -> dict:
    return {dotted: value for dotted, _, value, _ in config_fields.iter_fields(config)}


def _differences(first, second) -> dict:
    """{dotted: (first's value, second's value)} of the fields that differ."""
    one, two = _leaves(first), _leaves(second)
    return {dotted: (one[dotted], two[dotted]) for dotted in one if one[dotted] != two[dotted]}


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_is_a_fresh_valid_frozen_config_named_after_itself(name):
    config = get_config(name)
    assert config.name == name
    assert config.validate() is config
    assert get_config(name) == config and get_config(name) is not config
    for section in SECTIONS:
        part = getattr(config, section)
        for field in dataclasses.fields(part):
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(part, field.name, getattr(part, field.name))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "other"


def test_get_config_defaults_to_the_default_preset_and_lists_the_choices_on_a_typo():
    assert get_config() == get_config("default")
    with pytest.raises(ConfigError) as error:
        get_config("Base")
    assert str(error.value) == (
        "unknown preset 'Base'; choose one of ['base', 'big', 'default', 'lm', 'mlm', "
        "'multi30k', 'tiny'].")
    assert sorted(presets.PRESETS) == ["base", "big", "default", "lm", "mlm", "multi30k", "tiny"]


def test_base_is_the_papers_base_model_and_recipe():
    config = get_config("base")
    model, train, decode = config.model, config.train, config.decode
    # Table 3, "base": N=6, d_model=512, d_ff=2048, h=8, d_k=d_v=64, P_drop=0.1,
    # eps_ls=0.1, 100K steps.
    assert (model.num_encoder_layers, model.num_decoder_layers) == (6, 6)
    assert (model.d_model, model.d_ff, model.num_heads, model.head_dim) == (512, 2048, 8, 64)
    assert model.dropout_rate == 0.1 and train.label_smoothing == 0.1
    assert train.num_steps == 100_000
    # Section 5.3: Adam(beta1 0.9, beta2 0.98, eps 1e-9), warmup_steps 4000, the formula
    # unscaled and to the end.
    assert (train.adam_beta1, train.adam_beta2, train.adam_epsilon) == (0.9, 0.98, 1e-9)
    assert (train.warmup_steps, train.learning_rate_scale, train.cooldown_steps) == (
        4000, 1.0, 0)
    assert (train.weight_decay, train.gradient_clip_norm, train.ema_decay) == (0.0, 0.0, 0.0)
    # Sections 3.4 and 5.1: one shared ~37,000-piece vocabulary, embeddings shared and tied
    # to the output projection; post-LN residual blocks (section 3.1).
    assert model.vocab_size == config.data.vocab_size == 37_000
    assert model.share_embeddings and model.tie_output and model.norm == "post_ln"
    assert model.kind == "encoder_decoder"
    # Section 6.1: beam 4, length penalty 0.6, outputs up to input length + 50.
    assert (decode.method, decode.beam_size, decode.length_penalty,
            decode.max_extra_length) == ("beam", 4, 0.6, 50)


def test_big_differs_from_base_only_in_the_papers_big_column():
    # Table 3, "big": d_model=1024, d_ff=4096, h=16, P_drop=0.3 (EN-DE); all else as base.
    assert _differences(get_config("base"), get_config("big")) == {
        "model.d_model": (512, 1024),
        "model.d_ff": (2048, 4096),
        "model.num_heads": (8, 16),
        "model.dropout_rate": (0.1, 0.3),
    }
    big = get_config("big").model
    assert big.head_dim == 64                  # d_k = d_v = 64 in both models
    assert (big.num_encoder_layers, big.num_decoder_layers) == (6, 6)


def test_default_is_tiny_trained_twice_as_long():
    assert _differences(get_config("tiny"), get_config("default")) == {
        "train.num_steps": (500, 1000),
        "train.eval_every": (250, 500),
        "train.checkpoint_every": (250, 500),
    }


def _parameter_count(model_config) -> int:
    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    shapes = jax.eval_shape(Transformer(model_config).init, jax.random.key(0), tokens, tokens)
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(shapes["params"]))


def test_tiny_has_the_documented_096_million_parameters():
    model = get_config("tiny").model
    d, f, v = 128, 512, 256
    attention = 4 * d * d                       # W^Q, W^K, W^V, W^O without biases
    feed_forward = d * f + f + f * d + d
    encoder_layer = attention + feed_forward + 2 * 2 * d
    decoder_layer = 2 * attention + feed_forward + 3 * 2 * d
    expected = v * d + 2 * encoder_layer + 2 * decoder_layer   # one shared, tied embedding
    assert expected == 955_392
    assert _parameter_count(model) == expected
    assert round(expected / 1e6, 2) == 0.96


def test_tiny_reads_number_words_in_packed_rows_and_keeps_the_best_exact_match():
    tiny = get_config("tiny")
    assert tiny.data.dataset == "number_words" and tiny.data.packing
    assert tiny.model.kind == "encoder_decoder" and tiny.train.best_metric == "exact_match"
    # Every bucket fits the data, and the largest is the longest sequence.
    assert list(tiny.data.bucket_lengths) == sorted(tiny.data.bucket_lengths)
    assert tiny.data.bucket_lengths[-1] == tiny.data.max_length


def test_multi30k_is_its_documented_recipe():
    config = get_config("multi30k")
    model, data, train = config.model, config.data, config.train
    # "packed 4,000-token batches, dropout 0.2, the paper's schedule with a 2,000-step
    # linear cool-down to 0, checkpoints every 100 steps and the average of the last 5",
    # 5,500 steps; set data.{train,validation,test}_files.
    assert data.dataset == "parallel_text" and data.packing and data.tokens_per_batch == 4000
    assert model.dropout_rate == 0.2
    assert (train.num_steps, train.cooldown_steps) == (5500, 2000)
    assert (train.learning_rate_scale, train.adam_beta2, train.adam_epsilon) == (1.0, 0.98, 1e-9)
    assert (train.checkpoint_every, train.average_last) == (100, 5)
    assert (data.train_files, data.validation_files, data.test_files) == ("", "", "")
    assert model.kind == "encoder_decoder" and train.best_metric == "bleu"
    assert data.bucket_lengths[-1] == data.max_length


def test_lm_is_a_character_level_decoder_only_model_decoded_greedily():
    config = get_config("lm")
    model, data, train = config.model, config.data, config.train
    assert model.kind == "decoder_only" and model.num_encoder_layers == 0
    assert model.num_decoder_layers > 0 and model.monolingual
    assert data.tokenizer_type == "char" and data.packing
    assert train.label_smoothing == 0.0 and train.best_metric == "perplexity"
    assert config.decode.method == "greedy"
    # A continuation may fill every position the model knows.
    assert config.decode.max_extra_length >= model.max_length


def test_mlm_is_an_unpacked_encoder_only_model_scored_by_accuracy():
    config = get_config("mlm")
    model, data, train = config.model, config.data, config.train
    assert model.kind == "encoder_only" and model.num_decoder_layers == 0
    assert model.num_encoder_layers > 0 and model.monolingual
    assert not data.packing                     # packing is refused for encoder_only
    assert train.label_smoothing == 0.0 and train.best_metric == "accuracy"
    assert data.bucket_lengths[-1] == data.max_length


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_only_lm_and_mlm_cap_validation_batches(name):
    # EvalConfig's docstring: lm and mlm read 20 loss batches, the others the whole split.
    evaluation = get_config(name).eval
    assert evaluation.max_batches == (20 if name in ("lm", "mlm") else 0)
    assert (evaluation.max_examples, evaluation.test_report) == (0, "full")


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_warms_up_logs_evaluates_and_averages_within_its_run(name):
    train = get_config(name).train
    assert train.warmup_steps < train.num_steps          # the schedule reaches its peak
    for every in (train.log_every, train.eval_every, train.checkpoint_every):
        assert 0 < every <= train.num_steps
    # Averaging the last N checkpoints needs N of them still on disk.
    assert train.average_last <= train.keep_checkpoints
    assert train.average_last * train.checkpoint_every <= train.num_steps

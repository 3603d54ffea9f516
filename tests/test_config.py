"""Presets, dotted overrides, validation errors and the JSON round trip (config.py,
presets.py, config_fields.py)."""

import dataclasses

import pytest

from flax_transformer import config as config_lib
from flax_transformer import config_fields, presets
from flax_transformer.config import ConfigError
from flax_transformer.config_fields import override
from flax_transformer.presets import get_config


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_presets_validate(name):
    config = get_config(name)
    assert config.validate() is config
    assert config.model.d_model % config.model.num_heads == 0


def test_paper_presets_have_paper_shapes():
    base, big = presets.PRESETS["base"]().model, presets.PRESETS["big"]().model
    assert (base.d_model, base.num_heads, base.d_ff, base.dropout_rate) == (512, 8, 2048, 0.1)
    assert (base.num_encoder_layers, base.num_decoder_layers) == (6, 6)
    assert (big.d_model, big.num_heads, big.d_ff, big.dropout_rate) == (1024, 16, 4096, 0.3)
    assert base.share_embeddings and base.tie_output and base.norm == "post_ln"


def test_unknown_preset_is_refused():
    with pytest.raises(ConfigError, match="unknown preset"):
        get_config("huge")


def test_override_parses_each_type():
    config = override(get_config("tiny"), {
        "train.num_steps": "300",
        "model.dropout_rate": "0.25",
        "model.share_embeddings": "false",
        "model.tie_output": "False",
        "data.packing": "yes",
        "data.bucket_lengths": "(8, 16,32)",
        "model.norm": "pre_ln",
    })
    assert config.train.num_steps == 300 and isinstance(config.train.num_steps, int)
    assert config.model.dropout_rate == 0.25
    assert config.model.share_embeddings is False and config.model.tie_output is False
    assert config.data.packing is True
    assert config.data.bucket_lengths == (8, 16, 32)
    assert config.model.norm == "pre_ln"
    # The other fields are untouched.
    assert config.model.d_model == get_config("tiny").model.d_model


@pytest.mark.parametrize("assignments, field_name", [
    ({"model.not_a_field": "1"}, "model.not_a_field"),
    ({"nonsense": "1"}, "nonsense"),
    ({"train.num_steps": "three"}, "train.num_steps"),
    ({"model.dropout_rate": "high"}, "model.dropout_rate"),
    ({"model.tie_output": "maybe"}, "model.tie_output"),
    ({"data.bucket_lengths": "8,x"}, "data.bucket_lengths"),
    ({"model.num_heads": "5"}, "model.num_heads"),
    ({"model.d_model": "-8"}, "model.d_model"),
    ({"model.d_ff": "0"}, "model.d_ff"),
    ({"model.num_encoder_layers": "-1"}, "model.num_encoder_layers"),
    ({"train.warmup_steps": "0"}, "train.warmup_steps"),
    ({"model.norm": "mid_ln"}, "model.norm"),
    ({"model.dropout_rate": "1.5"}, "model.dropout_rate"),
])
def test_override_refuses_bad_values_naming_the_field(assignments, field_name):
    with pytest.raises(ConfigError) as error:
        override(get_config("tiny"), assignments)
    assert field_name in str(error.value)


def test_direct_construction_is_validated():
    model = dataclasses.replace(get_config("tiny").model, d_model=130)
    with pytest.raises(ConfigError, match="d_model"):
        model.validate()
    with pytest.raises(ConfigError, match="vocab_size"):
        dataclasses.replace(get_config("tiny").model, vocab_size=-3).validate()


def test_mismatched_vocab_sizes_are_refused():
    with pytest.raises(ConfigError, match="vocab_size"):
        override(get_config("tiny"), {"model.vocab_size": "512"})


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_config("tiny").model.d_model = 3


@pytest.mark.parametrize("name", ["tiny", "default", "multi30k"])
def test_json_round_trip(name):
    config = override(get_config(name), {"train.num_steps": "7", "train.cooldown_steps": "3",
                                          "model.norm": "pre_ln"})
    restored = config_fields.from_json(config_fields.to_json(config))
    assert restored == config
    assert isinstance(restored.data.bucket_lengths, tuple)


def test_from_json_refuses_unknown_keys():
    text = config_fields.to_json(get_config("tiny")).replace('"d_model"', '"d_modle"')
    with pytest.raises(ConfigError, match="d_modle"):
        config_fields.from_json(text)


def test_every_field_has_help():
    for dotted, _, _, help_text in config_fields.iter_fields(get_config("tiny")):
        assert help_text, dotted


def test_a_config_json_from_before_model_kinds_loads_as_translation():
    values = config_fields.to_dict(get_config("tiny"))
    del values["model"]["kind"]
    del values["eval"]
    old = config_fields.from_dict(values)
    assert old.model.kind == "encoder_decoder" and old.eval == config_lib.EvalConfig()
    assert old == get_config("tiny")


def test_kind_presets_read_one_side_and_score_without_bleu():
    lm, mlm = get_config("lm"), get_config("mlm")
    assert (lm.model.kind, lm.data.packing, lm.train.best_metric) == (
        "decoder_only", True, "perplexity")
    assert (mlm.model.kind, mlm.data.packing, mlm.train.best_metric) == (
        "encoder_only", False, "accuracy")
    assert lm.model.monolingual and not get_config("tiny").model.monolingual
    assert config_lib.EvalConfig(test_report="25").test_examples == 25
    assert config_lib.EvalConfig().test_examples == 0


def test_config_json_written_before_the_decoding_controls_still_loads():
    values = config_fields.to_dict(get_config("tiny"))
    for name in ("nbest", "num_samples", "min_length", "no_repeat_ngram_size"):
        del values["decode"][name]
    decode = config_fields.from_dict(values).decode
    assert (decode.nbest, decode.num_samples, decode.min_length,
            decode.no_repeat_ngram_size) == (1, 1, 0, 0)


@pytest.mark.parametrize(("assignments", "message"), [
    ({"decode.method": "sample", "decode.nbest": "2"}, "decode.nbest=2 needs method 'beam'"),
    ({"decode.beam_size": "3", "decode.nbest": "4"}, "decode.nbest=4 exceeds decode.beam_size=3"),
    ({"decode.method": "greedy", "decode.num_samples": "2"},
     "decode.num_samples=2 needs method 'sample'"),
    ({"decode.no_repeat_ngram_size": "-2"}, "decode.no_repeat_ngram_size=-2"),
    ({"decode.nbest": "0"}, "decode.nbest=0 must be positive"),
])
def test_decoding_controls_that_do_not_fit_the_method_are_refused(assignments, message):
    with pytest.raises(ConfigError, match=message):
        override(get_config("tiny"), assignments)
    fitting = override(get_config("tiny"), {"decode.method": "beam", "decode.nbest": "4",
                                            "decode.beam_size": "4"})
    assert fitting.decode.nbest == 4

"""config_fields.py: the field list, dotted overrides parsed from text, strict JSON, and what a
changed config means for a saved run (config_differences, train_changes).

tests/test_config.py covers the common cases (each type parsed once, bad values named, the
round trip of three presets); these tests cover every field, every preset and the edges.
"""

import dataclasses
import json
import re
import typing

import pytest

from flax_transformer import config as config_lib
from flax_transformer import config_fields, presets
from flax_transformer.config import ConfigError
from flax_transformer.config_fields import override
from flax_transformer.presets import get_config

SECTIONS = ("model", "data", "train", "decode", "eval")


def _as_flag_text(value) -> str:
    """How a user writes ``value`` on the command line (--config.X.Y=TEXT)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _leaves(config) -> dict:
    return {dotted: value for dotted, _, value, _ in config_fields.iter_fields(config)}


def _changed(before, after) -> set[str]:
    old, new = _leaves(before), _leaves(after)
    return {dotted for dotted in old if old[dotted] != new[dotted]}


# ----------------------------------------------------------------------------- iter_fields


def test_iter_fields_yields_every_leaf_field_once_with_its_type_and_value():
    config = get_config("multi30k")
    rows = list(config_fields.iter_fields(config))
    expected = [f"{section}.{f.name}" for section in SECTIONS
                for f in dataclasses.fields(getattr(config, section))]
    assert [dotted for dotted, _, _, _ in rows] == expected
    assert len(set(expected)) == len(expected)
    for dotted, kind, value, _ in rows:
        section, name = dotted.split(".")
        assert value == getattr(getattr(config, section), name), dotted
        hint = typing.get_type_hints(type(getattr(config, section)))[name]
        assert kind == hint, dotted
    kinds = {dotted: kind for dotted, kind, _, _ in rows}
    assert kinds["model.d_model"] is int and kinds["model.dropout_rate"] is float
    assert kinds["model.scan_layers"] is bool and kinds["data.dataset"] is str
    assert kinds["data.bucket_lengths"] == tuple[int, ...]
    assert "name" not in kinds   # the preset's name is not a field a flag sets


# -------------------------------------------------------------------------------- override


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_field_written_back_as_flag_text_leaves_the_config_unchanged(name):
    config = get_config(name)
    for dotted, _, value, _ in config_fields.iter_fields(config):
        again = override(config, {dotted: _as_flag_text(value)})
        assert again == config, dotted
        assert type(_leaves(again)[dotted]) is type(value), dotted


@pytest.mark.parametrize(("dotted", "text", "expected"), [
    ("train.seed", "7", 7),
    ("train.num_steps", " 300 ", 300),
    ("train.adam_epsilon", "1e-8", 1e-8),
    ("decode.temperature", "0.5", 0.5),
    ("model.layer_norm_epsilon", "2", 2.0),
    ("data.source_language", "fr", "fr"),
    ("model.scan_layers", "1", True),
    ("data.bucket_lengths", "40", (40,)),
    ("data.bucket_lengths", "(8, 16,,40)", (8, 16, 40)),
    ("data.bucket_lengths", "()", ()),
    ("eval.test_report", "12", "12"),
])
def test_override_changes_exactly_the_named_field(dotted, text, expected):
    tiny = get_config("tiny")
    changed = override(tiny, {dotted: text})
    section, name = dotted.split(".")
    value = getattr(getattr(changed, section), name)
    assert value == expected and type(value) is type(expected)
    assert _changed(tiny, changed) == {dotted}
    assert changed.name == "tiny"


@pytest.mark.parametrize(("text", "expected"), [
    ("true", True), ("TRUE", True), (" Yes ", True), ("1", True),
    ("false", False), ("False", False), ("no", False), ("0", False),
])
def test_boolean_flags_accept_the_documented_spellings(text, expected):
    assert override(get_config("tiny"), {"data.packing": text}).data.packing is expected


@pytest.mark.parametrize(("dotted", "text", "kind"), [
    ("data.packing", "on", "bool"),
    ("data.packing", "2", "bool"),
    ("data.packing", "", "bool"),
    ("train.num_steps", "3.0", "int"),
    ("train.num_steps", "1e3", "int"),
    ("train.num_steps", "", "int"),
    ("model.dropout_rate", "0,1", "float"),
    ("data.bucket_lengths", "8;16", "list of ints"),
    ("data.bucket_lengths", "[8, 16.5]", "list of ints"),
])
def test_a_value_that_does_not_parse_names_the_flag_its_text_and_the_type(dotted, text, kind):
    with pytest.raises(ConfigError) as error:
        override(get_config("tiny"), {dotted: text})
    prefix = f"--config.{dotted}={text!r} is not a valid {kind}; give "
    message = str(error.value)
    assert message.startswith(prefix) and message.endswith(".")
    # What the message says to give is accepted.
    example = message[len(prefix):-1].split("e.g. ")[-1].split(" or ")[0]
    override(get_config("tiny"), {dotted: example})


@pytest.mark.parametrize("text", ["8,16,40", "(8, 16, 40)", "[8,16,40]", " 8, 16 ,40 "])
def test_a_list_of_ints_may_be_written_bare_in_parentheses_or_in_brackets(text):
    assert override(get_config("tiny"), {"data.bucket_lengths": text}).data.bucket_lengths == (
        8, 16, 40)


def test_an_unknown_key_is_refused_and_points_to_the_list_of_fields():
    for dotted in ("train.num_step", "train", "name", "model.d_model.x"):
        with pytest.raises(ConfigError) as error:
            override(get_config("tiny"), {dotted: "1"})
        assert str(error.value) == (f"unknown config key {dotted!r}; see --help for the list "
                                    "of fields.")


@pytest.mark.parametrize(("dotted", "text", "message"), [
    ("train.gradient_clip_norm", "inf", "train.gradient_clip_norm=inf must be a finite number"),
    ("train.learning_rate_scale", "nan", "train.learning_rate_scale=nan must be a finite"),
    ("data.bucket_lengths", "8,-16", "data.bucket_lengths must all be positive"),
    ("eval.test_report", "0", "eval.test_report='0' must be 'full', 'off' or a positive"),
    ("train.cooldown_steps", "501", "train.cooldown_steps=501 exceeds train.num_steps=500"),
])
def test_values_that_parse_but_are_impossible_are_refused_by_validation(dotted, text,
                                                                        message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        override(get_config("tiny"), {dotted: text})


def test_overrides_are_validated_together_not_one_by_one():
    tiny = get_config("tiny")                 # model.max_length 64, data.max_length 40
    assignments = {"data.max_length": "100", "model.max_length": "128"}
    # Alone, the first is impossible (100 + EOS > 64); with the second it fits.
    with pytest.raises(ConfigError, match=re.escape("raise model.max_length")):
        override(tiny, {"data.max_length": "100"})
    both = override(tiny, assignments)
    assert (both.data.max_length, both.model.max_length) == (100, 128)
    assert _changed(tiny, both) == set(assignments)
    assert override(tiny, {}) == tiny


# ------------------------------------------------------------------------------------ JSON


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_survives_json_with_its_types(name):
    config = get_config(name)
    text = config_fields.to_json(config)
    assert config_fields.from_json(text) == config
    # JSON holds the tuple as a list; everything else as it is in the dataclasses.
    expected = {"name": name}
    for dotted, _, value, _ in config_fields.iter_fields(config):
        section, key = dotted.split(".")
        expected.setdefault(section, {})[key] = list(value) if isinstance(value, tuple) else value
    assert json.loads(text) == expected
    assert config_fields.to_json(config_fields.from_json(text)) == text


def test_to_json_is_sorted_and_stable():
    text = config_fields.to_json(get_config("lm"))
    values = json.loads(text)
    assert list(values) == sorted(values)
    for section in SECTIONS:
        assert list(values[section]) == sorted(values[section])
    assert text == config_fields.to_json(get_config("lm"))


@pytest.mark.parametrize(("section", "key", "value", "kind"), [
    ("model", "d_model", "512", "int"),
    ("model", "d_model", 512.0, "int"),
    ("train", "num_steps", True, "int"),
    ("model", "share_embeddings", 1, "bool"),
    ("model", "norm", 3, "str"),
    ("model", "dropout_rate", "0.1", "float"),
    ("model", "dropout_rate", False, "float"),
    ("data", "bucket_lengths", [8, "16"], "list of ints"),
    ("data", "bucket_lengths", [8, True], "list of ints"),
    ("data", "bucket_lengths", 8, "list of ints"),
])
def test_json_values_of_the_wrong_type_are_refused_naming_the_field(section, key, value, kind):
    values = config_fields.to_dict(get_config("tiny"))
    values[section][key] = value
    with pytest.raises(ConfigError) as error:
        config_fields.from_dict(values)
    prefix = f"{section}.{key}={json.dumps(value)} is not a valid {kind}; write "
    message = str(error.value)
    assert message.startswith(prefix) and message.endswith(".")
    # What the message says to write is accepted (a string: any JSON string).
    hint = message[len(prefix):-1]
    example = (json.dumps(getattr(getattr(get_config("tiny"), section), key)) if kind == "str"
               else hint.split("e.g. ")[-1].split(" or ")[0])
    values[section][key] = json.loads(example)
    config_fields.from_dict(values)


def test_json_integers_are_accepted_for_floats_and_lists_for_tuples():
    values = config_fields.to_dict(get_config("tiny"))
    values["model"]["dropout_rate"] = 0
    values["train"]["learning_rate_scale"] = 2
    values["data"]["bucket_lengths"] = [8, 40]
    config = config_fields.from_dict(values)
    assert config.model.dropout_rate == 0.0 and type(config.model.dropout_rate) is float
    assert type(config.train.learning_rate_scale) is float
    assert config.data.bucket_lengths == (8, 40)
    assert _changed(get_config("tiny"), config) == {
        "model.dropout_rate", "train.learning_rate_scale", "data.bucket_lengths"}


def test_json_with_a_misspelt_section_or_a_name_that_is_no_string_is_refused():
    values = config_fields.to_dict(get_config("tiny"))
    values["modle"] = values.pop("model")
    with pytest.raises(ConfigError) as error:
        config_fields.from_dict(values)
    assert str(error.value) == ("unknown config sections ['modle']; a config has ['name', "
                                "'model', 'data', 'train', 'decode', 'eval'].")
    values = {**config_fields.to_dict(get_config("tiny")), "name": 7}
    with pytest.raises(ConfigError, match="name=7 is not a string"):
        config_fields.from_dict(values)


def test_json_that_is_not_an_object_of_sections_is_refused():
    with pytest.raises(ConfigError) as error:
        config_fields.from_json("[1, 2]")
    assert str(error.value) == "a config is a JSON object of sections, not list."
    with pytest.raises(ConfigError) as error:
        config_fields.from_dict({"model": [512]})
    assert str(error.value) == ("config section 'model' is [512], not an object of fields.")


def test_json_values_are_validated_like_flags():
    values = config_fields.to_dict(get_config("tiny"))
    values["model"]["num_heads"] = 3                      # 128 is not divisible by 3
    message = "model.d_model=128 is not divisible by model.num_heads=3"
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_fields.from_dict(values)


def test_an_empty_json_object_is_the_default_config_with_the_legacy_kernel_layout():
    config = config_fields.from_dict({})
    assert config.name == "custom"
    # A config.json without model.kernel_layout was written when kernels were [I, O].
    assert config == config_lib.Config(
        name="custom", model=config_lib.ModelConfig(kernel_layout="in_out"))


@pytest.mark.parametrize("layout", ["out_in", "in_out"])
def test_a_saved_kernel_layout_is_kept(layout):
    values = config_fields.to_dict(get_config("tiny"))
    values["model"]["kernel_layout"] = layout
    assert config_fields.from_dict(values).model.kernel_layout == layout


# ------------------------------------------------------------------- config_differences


def test_config_differences_lists_model_and_data_changes_in_order():
    saved = get_config("tiny")
    new = override(saved, {
        "model.norm": "pre_ln", "model.d_ff": "256", "data.bucket_lengths": "8",
        "data.max_length": "32", "train.num_steps": "900", "decode.beam_size": "2",
        "eval.max_batches": "3"})
    assert config_fields.config_differences(saved, new) == [
        "model.d_ff: 512 -> 256",
        "model.norm: 'post_ln' -> 'pre_ln'",
        "data.bucket_lengths: (16, 24, 32, 40) -> (8,)",
        "data.max_length: 40 -> 32",
    ]
    assert config_fields.config_differences(saved, saved) == []


def test_config_differences_ignore_layouts_and_reading_options():
    saved = get_config("tiny")
    new = override(saved, {"model.scan_layers": "true", "model.kernel_layout": "in_out",
                           "model.transposed_weight_gradients": "false",
                           "data.num_workers": "2", "data.eval_examples": "10"})
    assert _changed(saved, new) == {"model.scan_layers", "model.kernel_layout",
                                    "model.transposed_weight_gradients", "data.num_workers",
                                    "data.eval_examples"}
    assert config_fields.config_differences(saved, new) == []


# -------------------------------------------------------------------------- train_changes


def test_no_train_change_is_neither_accepted_nor_refused():
    tiny = get_config("tiny")
    assert config_fields.train_changes(tiny, tiny) == ([], [])
    other = override(tiny, {"model.d_ff": "256", "decode.beam_size": "2"})
    assert config_fields.train_changes(tiny, other) == ([], [])


def test_schedule_changes_are_accepted_in_field_order():
    saved = get_config("tiny")
    new = override(saved, {"train.warmup_steps": "50", "train.num_steps": "900",
                           "train.learning_rate_scale": "0.25"})
    accepted, refused = config_fields.train_changes(saved, new)
    assert accepted == ["train.learning_rate_scale: 0.5 -> 0.25",
                        "train.num_steps: 500 -> 900",
                        "train.warmup_steps: 100 -> 50"]
    assert refused == []


@pytest.mark.parametrize(("field_name", "off", "on", "more"), [
    ("weight_decay", "0", "0.1", "0.2"),
    ("gradient_clip_norm", "0", "1.5", "3"),
    ("gradient_accumulation", "1", "2", "4"),
])
def test_switching_a_structural_option_on_or_off_is_refused_but_retuning_it_is_not(
        field_name, off, on, more):
    dotted = f"train.{field_name}"
    tiny = get_config("tiny")
    without, with_it, with_more = (override(tiny, {dotted: text}) for text in (off, on, more))
    value = {text: _leaves(config)[dotted]
             for text, config in ((off, without), (on, with_it), (more, with_more))}
    switched_on = f"{dotted}: {value[off]!r} -> {value[on]!r}"
    switched_off = f"{dotted}: {value[on]!r} -> {value[off]!r}"
    assert config_fields.train_changes(without, with_it) == ([], [switched_on])
    assert config_fields.train_changes(with_it, without) == ([], [switched_off])
    assert config_fields.train_changes(with_it, with_more) == (
        [f"{dotted}: {value[on]!r} -> {value[more]!r}"], [])


def test_switching_ema_is_accepted_and_says_what_happens_to_it():
    tiny = get_config("tiny")
    with_ema = override(tiny, {"train.ema_decay": "0.99"})
    slower = override(tiny, {"train.ema_decay": "0.999"})
    assert config_fields.train_changes(tiny, with_ema) == (
        ["train.ema_decay: 0.0 -> 0.99 (EMA starts from the current parameters)"], [])
    assert config_fields.train_changes(with_ema, tiny) == (
        ["train.ema_decay: 0.99 -> 0.0 (the saved EMA is dropped)"], [])
    assert config_fields.train_changes(with_ema, slower) == (
        ["train.ema_decay: 0.99 -> 0.999"], [])


def test_accepted_and_refused_changes_are_reported_together():
    saved = get_config("tiny")
    new = override(saved, {"train.num_steps": "800", "train.weight_decay": "0.01",
                           "train.ema_decay": "0.9"})
    accepted, refused = config_fields.train_changes(saved, new)
    assert accepted == ["train.ema_decay: 0.0 -> 0.9 (EMA starts from the current parameters)",
                        "train.num_steps: 500 -> 800"]
    assert refused == ["train.weight_decay: 0.0 -> 0.01"]

"""Shared command-line parsing: one flag per config field with the preset's default, presets
plus dotted overrides, the compilation-cache flag, fail() and exit_within()."""

import argparse
import dataclasses
import os
import subprocess
import sys
import typing

import pytest

from flax_transformer import cli, config_fields, presets
from flax_transformer import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parser(default_preset: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prog")
    cli.add_config_arguments(parser, default_preset)
    return parser


def _changed(old: config_lib.Config, new: config_lib.Config) -> dict[str, tuple]:
    """{"section.field": (old, new)} of every field that differs."""
    return {dotted: (before, after) for (dotted, _, before, _), (_, _, after, _)
            in zip(config_fields.iter_fields(old), config_fields.iter_fields(new), strict=True)
            if before != after}


def test_every_field_gets_one_flag_showing_the_default_presets_value():
    preset = presets.get_config("lm")
    actions = {action.dest: action for action in _parser("lm")._actions}
    fields = list(config_fields.iter_fields(preset))
    assert {dest for dest in actions if dest.startswith("override:")} == {
        f"override:{dotted}" for dotted, _, _, _ in fields}
    for dotted, _, default, doc in fields:
        action = actions[f"override:{dotted}"]
        assert action.option_strings == [f"--config.{dotted}"]
        assert action.default is None  # unset flags must not override the preset
        assert action.help.replace("%%", "%") == f"{doc} (default: {default!r})"
    # The lm preset's own values, not the base Config's.
    assert actions["override:model.kind"].help.endswith("(default: 'decoder_only')")
    assert actions["override:train.num_steps"].metavar == "INT"


def test_help_prints_percent_signs_of_the_field_docs_as_written():
    text = " ".join(_parser("tiny").format_help().split())
    assert "steps ~10% slower on CPU" in text
    assert "(defaults shown are the 'tiny' preset's)" in text


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_no_flags_give_the_named_preset_unchanged(name):
    parser = _parser("tiny")
    assert cli.config_from_args(parser.parse_args(["--config", name])) == presets.get_config(
        name)
    if name == "tiny":
        assert cli.config_from_args(parser.parse_args([])) == presets.get_config("tiny")


def test_overrides_change_exactly_the_named_fields_of_the_chosen_preset():
    args = _parser("tiny").parse_args([
        "--config", "multi30k", "--config.train.num_steps=6000", "--config.decode.beam_size=2",
        "--config.data.bucket_lengths=(16, 64)", "--config.data.packing=false"])
    config = cli.config_from_args(args)
    assert config.name == "multi30k"
    assert _changed(presets.get_config("multi30k"), config) == {
        "train.num_steps": (5500, 6000), "decode.beam_size": (4, 2),
        "data.bucket_lengths": ((16, 24, 32, 48, 64), (16, 64)),
        "data.packing": (True, False)}


def test_an_empty_value_is_parsed_not_ignored():
    args = _parser("tiny").parse_args(["--config.train.num_steps="])
    with pytest.raises(config_lib.ConfigError,
                       match=r"--config\.train\.num_steps='' is not a valid int"):
        cli.config_from_args(args)


def test_unknown_preset_is_refused_by_the_parser_with_the_choices(capsys):
    with pytest.raises(SystemExit) as stop:
        _parser("tiny").parse_args(["--config", "huge"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'huge'" in err
    assert all(repr(name) in err for name in presets.PRESETS)


@pytest.mark.parametrize("section, section_type", [
    ("model", config_lib.ModelConfig), ("data", config_lib.DataConfig),
    ("train", config_lib.TrainConfig), ("decode", config_lib.DecodeConfig),
    ("eval", config_lib.EvalConfig)])
def test_section_fields_are_the_sections_dataclass_fields(section, section_type):
    hints = typing.get_type_hints(section_type)
    expected = {field.name: (hints[field.name], field.metadata["help"])
                for field in dataclasses.fields(section_type)}
    fields = cli.section_fields(section)
    assert list(fields) == list(expected)  # in declaration order, as --help lists them
    assert fields == expected
    assert all(doc for _, doc in fields.values())


def test_section_fields_of_an_unknown_section_is_empty():
    assert cli.section_fields("nonexistent") == {}
    assert cli.section_fields("name") == {}  # a top-level field, not a section


@pytest.mark.parametrize("argv, enabled", [([], True), (["--no_compilation_cache"], False)])
def test_compilation_cache_flag_turns_the_cache_off(argv, enabled, monkeypatch):
    from flax_transformer import parallel

    calls = []
    monkeypatch.setattr(parallel, "use_compilation_cache",
                        lambda enabled=True: calls.append(enabled))
    parser = argparse.ArgumentParser()
    cli.add_compilation_cache_flag(parser)
    args = parser.parse_args(argv)
    assert args.no_compilation_cache is not enabled
    cli.use_compilation_cache(args)
    assert calls == [enabled]


def test_fail_prints_one_error_line_and_exits_with_status_2(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.fail("give either --input or --input_file, not both.")
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == "error: give either --input or --input_file, not both.\n"
    assert captured.out == ""


def _run_python(code: str) -> subprocess.CompletedProcess:
    """Runs ``code`` after importing cli, with buffered output (PYTHONUNBUFFERED unset)."""
    prelude = f"import sys, threading; sys.path.insert(0, {ROOT!r})\n" \
              "from flax_transformer import cli\n"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True,
                          text=True, timeout=60, env=env)


def test_exit_within_flushes_buffered_output_before_ending_a_hung_process():
    # stdout is a pipe, so block-buffered (stderr line-buffered): text without a newline is
    # only seen if end() flushes it before os._exit.
    result = _run_python("print('written before the hang', end='')\n"
                         "sys.stderr.write('on stderr')\n"
                         "cli.exit_within(0.2)\n"
                         "threading.Event().wait()  # the main thread hangs\n")
    assert result.returncode == 2
    assert result.stdout == "written before the hang"
    assert result.stderr == "on stderr"


def test_exit_within_does_not_hold_or_change_a_process_that_ends_first():
    # A non-daemon timer would keep the process alive for 30 s and then exit with 2.
    result = _run_python("cli.exit_within(30)\nprint('done')\nsys.exit(5)\n")
    assert (result.returncode, result.stdout) == (5, "done\n")

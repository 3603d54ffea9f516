"""decode.py's checks before the model load: search flags against the run's saved config,
output folders, device inputs; and the count of lines with nothing to translate."""

import dataclasses
import os

import pytest

from flax_transformer import checkpoint, preflight, presets
from flax_transformer import config as config_lib


def _run_dir(tmp_path, **decode_fields) -> str:
    """A workdir holding only config.json: the tiny preset with these decode fields."""
    config = presets.get_config("tiny")
    decode = dataclasses.replace(config.decode, **decode_fields)
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    checkpoint.save_config(workdir, dataclasses.replace(config, decode=decode).validate())
    return workdir


def _check(workdir, overrides=None, input_file=None, output_file=None, attention_plot=None):
    preflight.check_request(workdir, overrides or {}, input_file, output_file, attention_plot)


def test_overrides_are_checked_against_the_runs_saved_decode_section(tmp_path):
    workdir = _run_dir(tmp_path, beam_size=2)  # not the default 4
    with pytest.raises(config_lib.ConfigError, match=r"nbest=3 exceeds decode\.beam_size=2"):
        _check(workdir, {"nbest": 3})
    _check(workdir, {"nbest": 2})
    _check(workdir, {"nbest": 3, "beam_size": 3})  # the flags together fit
    # Non-string values (as argparse gives them) are checked as their text.
    _check(workdir, {"method": "sample", "num_samples": 5, "temperature": 0.5})
    with pytest.raises(config_lib.ConfigError, match=r"decode\.temperature=0\.0 must be"):
        _check(workdir, {"method": "sample", "temperature": 0.0})


def test_flags_left_unset_keep_the_saved_values(tmp_path):
    workdir = _run_dir(tmp_path, method="greedy")
    # None = flag not given: it must not be applied (beam_size=None would not parse).
    _check(workdir, {"beam_size": None, "nbest": None, "seed": None})
    with pytest.raises(config_lib.ConfigError, match=r"nbest=2 needs method 'beam'"):
        _check(workdir, {"nbest": 2, "method": None})


def test_unknown_search_flag_names_the_key(tmp_path):
    with pytest.raises(config_lib.ConfigError, match=r"unknown config key 'decode\.beams'"):
        _check(_run_dir(tmp_path), {"beams": 2})


def test_without_config_json_only_the_files_are_checked(tmp_path):
    missing_run = str(tmp_path / "not_a_run")  # the restore will say what is wrong
    _check(missing_run, {"beam_size": 0, "no_such_field": 1})
    with pytest.raises(preflight.PreflightError, match="does not exist"):
        _check(missing_run, output_file=str(tmp_path / "missing" / "out.txt"))


@pytest.mark.parametrize("flag", ["output_file", "attention_plot"])
def test_output_in_a_missing_folder_names_the_folder_and_what_to_do(tmp_path, flag):
    path = str(tmp_path / "missing" / "deeper" / "out.png")
    with pytest.raises(preflight.PreflightError) as raised:
        _check(str(tmp_path), **{flag: path})
    message = str(raised.value)
    assert message.startswith(f"--{flag} {path}: ")
    assert f"the folder {tmp_path / 'missing' / 'deeper'} does not exist" in message
    assert "create it or choose another path" in message


@pytest.mark.parametrize("flag", ["output_file", "attention_plot"])
def test_output_that_is_a_folder_is_refused(tmp_path, flag):
    folder = tmp_path / "plots"
    folder.mkdir()
    with pytest.raises(preflight.PreflightError, match=r"is a folder; give a file name\."):
        _check(str(tmp_path), **{flag: str(folder)})
    with pytest.raises(preflight.PreflightError, match=r"is a folder; give a file name\."):
        _check(str(tmp_path), **{flag: str(folder) + os.sep})
    # A name that ends in a separator is a folder even before it exists: without the check
    # the write failed after the model was loaded and every line decoded.
    with pytest.raises(preflight.PreflightError, match=r"is a folder; give a file name\."):
        _check(str(tmp_path), **{flag: str(tmp_path / "new") + os.sep})
    with pytest.raises(preflight.PreflightError, match=r"'' is empty; give a file name\."):
        _check(str(tmp_path), **{flag: ""})


def test_output_in_an_unwritable_folder_is_refused(tmp_path, monkeypatch):
    # os.access, not chmod: a test run as root may write anywhere.
    locked = str(tmp_path / "locked")
    os.mkdir(locked)
    real_access = os.access
    monkeypatch.setattr(preflight.os, "access",
                        lambda path, mode: False if path == locked else real_access(path, mode))
    with pytest.raises(preflight.PreflightError,
                       match=r"folder .*locked is not writable; choose another path\."):
        _check(str(tmp_path), output_file=os.path.join(locked, "out.txt"))
    _check(str(tmp_path), output_file=str(tmp_path / "out.txt"))


def test_relative_output_and_existing_output_files_are_accepted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    existing = tmp_path / "old.txt"
    existing.write_text("overwritten\n")
    _check(str(tmp_path), output_file="out.txt", attention_plot=str(existing))
    assert existing.read_text() == "overwritten\n"  # checked, not touched
    assert not (tmp_path / "out.txt").exists()


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_device_as_input_file_says_to_give_a_file_or_stdin(tmp_path, device):
    with pytest.raises(preflight.PreflightError) as raised:
        _check(str(tmp_path), input_file=device)
    assert str(raised.value) == (
        f"--input_file {device} is a device, not a file of sentences; give a file, or '-' "
        "(or no flag) to read stdin.")


def test_stdin_plain_and_missing_input_files_pass(tmp_path):
    sentences = tmp_path / "in.txt"
    sentences.write_text("one\n")
    for input_file in ("-", None, str(sentences), str(tmp_path / "missing.txt")):
        _check(str(tmp_path), input_file=input_file)  # a missing file: the read says so


@pytest.mark.parametrize("line, meaningless", [
    ("", False),               # empty: nothing to warn about
    (" \t ", False),           # blank
    ("\u3000", False),         # ideographic space only: blank too
    ("hello", False),
    ("  5  ", False),          # a digit alone is something to translate
    ("日本語", False),          # letters of any script
    ("٣", False),              # Arabic-Indic digit three
    ("Ⅻ", False),              # roman numeral (a number, category Nl)
    ("½", False),              # vulgar fraction (a number, category No)
    ("e\u0301", False),        # e + combining accent: the e is a letter
    ("\u0301\u0301", True),    # combining accents without a base letter
    ("🙂 🙂", True),
    ("!?…", True),
    ("\x00", True),
    ("\u200b", True),          # zero-width space: not stripped, not a letter
    ("€ $ %", True),
])
def test_meaningless_line_has_no_letter_or_digit(line, meaningless):
    assert preflight.meaningless_lines([line]) == int(meaningless)


def test_meaningless_lines_counts_every_such_line():
    assert preflight.meaningless_lines([]) == 0
    assert preflight.meaningless_lines(["🙂"] * 3 + ["", "a", "🙂 a"]) == 3

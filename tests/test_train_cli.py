"""train.py's command line: --help, presets, dotted overrides and clear refusals."""

import os
import subprocess
import sys

import pytest

import train
from flax_transformer import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_help_lists_every_field_with_its_doc():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for flag in ("--config.train.num_steps", "--config.model.norm", "--config.data.packing",
                 "--config.decode.length_penalty", "--workdir", "--fresh"):
        assert flag in result.stdout
    assert "label smoothing" in result.stdout


def test_overrides_apply_to_the_named_preset():
    args = train.parse_args(["--config", "tiny", "--config.train.num_steps=7",
                             "--config.model.norm=pre_ln", "--config.data.packing=true"])
    config = cli.config_from_args(args)
    assert (config.name, config.train.num_steps, config.model.norm, config.data.packing) == (
        "tiny", 7, "pre_ln", True)


@pytest.mark.parametrize("flag, message", [
    ("--config.model.num_heads=3", "not divisible by model.num_heads"),
    ("--config.train.warmup_steps=0", "train.warmup_steps=0 must be positive"),
    ("--config.train.num_steps=many", "is not a valid int"),
    ("--config.model.norm=mid_ln", "model.norm='mid_ln' must be one of"),
])
def test_bad_values_exit_2_with_the_field_name(flag, message, capsys):
    with pytest.raises(SystemExit) as stop:
        train.main([flag, "--workdir", "/nonexistent/never/written"])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_key_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as stop:
        train.main(["--config.train.num_stepz=3"])
    assert stop.value.code == 2
    assert "num_stepz" in capsys.readouterr().err


def test_unwritable_workdir_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as stop:
        train.main(["--workdir", str(blocker / "run")])
    assert stop.value.code == 2
    assert "cannot write to workdir" in capsys.readouterr().err

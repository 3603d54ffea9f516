"""train.py's command line: --help, presets, dotted overrides and clear refusals; every
model kind trained, resumed bitwise and evaluated within its limits."""

import contextlib
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import train
from flax_transformer import checkpoint, cli, training
from tests.test_loop import _write_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_help_lists_every_field_with_its_doc():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for flag in ("--config.train.num_steps", "--config.model.norm", "--config.data.packing",
                 "--config.decode.length_penalty", "--workdir", "--fresh"):
        assert flag in result.stdout
    assert "label smoothing" in result.stdout
    # A '%' in a field's doc is printed as written (argparse %-formats help texts).
    assert "steps ~10% slower on CPU" in " ".join(result.stdout.split())
    assert "option_strings" not in result.stdout


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


# --------------------------------------------------------------------------- model kinds

KIND_FIELDS = {
    "encoder_decoder": {"data.dataset": "parallel_text"},
    # Local monolingual files: PREFIX.de only.
    "decoder_only": {"model.kind": "decoder_only", "model.num_encoder_layers": 0,
                     "data.dataset": "text", "data.packing": "true",
                     "train.best_metric": "perplexity"},
    # The target side of aligned files; unpacked (tiny packs, which encoder_only refuses).
    "encoder_only": {"model.kind": "encoder_only", "model.num_decoder_layers": 0,
                     "data.dataset": "parallel_text", "data.packing": "false",
                     "train.best_metric": "accuracy"},
}


def _kind_args(kind, corpus, workdir, steps, **fields):
    values = {
        "model.vocab_size": 64, "data.vocab_size": 64, "model.d_model": 32,
        "model.num_heads": 2, "model.d_ff": 64, "model.num_encoder_layers": 1,
        "model.num_decoder_layers": 1, "model.dropout_rate": 0.1, "model.max_length": 32,
        "data.train_files": f"{corpus}/train", "data.validation_files": f"{corpus}/valid",
        "data.test_files": f"{corpus}/test", "data.max_length": 16,
        "data.tokens_per_batch": 640, "data.bucket_lengths": "16", "data.eval_examples": 8,
        "train.num_steps": steps, "train.log_every": 1, "train.eval_every": 3,
        "train.checkpoint_every": 3, "train.warmup_steps": 10, "eval.max_batches": 1,
        "eval.test_report": "off", **KIND_FIELDS[kind], **fields,
    }
    return [sys.executable, os.path.join(ROOT, "train.py"), "--config", "tiny",
            "--workdir", workdir, *[f"--config.{key}={value}" for key, value in values.items()]]


def _run(args, timeout=600):
    """Runs train.py in its own process group; kills the group on any outcome."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, output[-3000:]
    return output


def _records(workdir, split):
    with open(os.path.join(workdir, "metrics.jsonl")) as handle:
        return [record for record in map(json.loads, handle) if record["split"] == split]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _write_corpus(str(tmp_path_factory.mktemp("corpus")))


@pytest.mark.parametrize("kind", list(KIND_FIELDS))
def test_every_kind_trains_from_the_command_line_and_resumes_bitwise(kind, corpus, tmp_path):
    straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
    _run(_kind_args(kind, corpus, straight, 6))
    _run(_kind_args(kind, corpus, interrupted, 3))
    assert "resuming at step 3" in _run(_kind_args(kind, corpus, interrupted, 6))
    config = checkpoint.load_config(straight)
    assert config.model.kind == kind
    target = jax.device_get(training.create_train_state(config, jax.random.key(0)))
    for got, want in zip(
            jax.tree.leaves(checkpoint.restore_params(interrupted, target, "latest")[0]),
            jax.tree.leaves(checkpoint.restore_params(straight, target, "latest")[0]),
            strict=True):
        np.testing.assert_array_equal(got, want)
    assert [r["loss"] for r in _records(interrupted, "train")] == [
        r["loss"] for r in _records(straight, "train")]
    validation = _records(straight, "validation")
    assert [r["step"] for r in validation] == [3, 6]
    assert all(r["loss_batches"] == 1 for r in validation)  # eval.max_batches=1
    expected = {"encoder_decoder": "bleu", "decoder_only": "perplexity",
                "encoder_only": "baseline_accuracy"}[kind]
    assert all(expected in r for r in validation)
    with open(os.path.join(straight, "results.json")) as handle:
        assert not [key for key in json.load(handle) if key.startswith("test_")]


@pytest.mark.parametrize("kind, parallelism", [("decoder_only", "mesh"),
                                               ("encoder_only", "pmap")])
def test_test_report_reads_the_first_n_test_examples(corpus, tmp_path, kind, parallelism):
    # The report restores into shapes only and evaluates a parameters-only state.
    workdir = str(tmp_path / kind)
    output = _run(_kind_args(kind, corpus, workdir, 2, **{
        "eval.test_report": "5", "train.parallelism": parallelism}))
    assert "test split (5 sentences, checkpoints/2)" in output
    with open(os.path.join(workdir, "results.json")) as handle:
        results = json.load(handle)
    assert results["test_loss_batches"] == 1
    if kind == "decoder_only":
        assert results["test_perplexity"] > 1
    else:
        assert 0 <= results["test_accuracy"] <= 1 and "test_baseline_accuracy" in results


@pytest.mark.parametrize("flags, message", [
    (["--config.model.kind=gpt"], "model.kind='gpt' must be one of"),
    (["--config", "lm", "--config.train.best_metric=bleu"], "needs translations"),
    (["--config", "mlm", "--config.data.packing=true"], "not available for model.kind"),
    (["--config.data.dataset=text"], "data.dataset='text' is monolingual"),
    (["--config", "lm", "--config.model.num_decoder_layers=0"],
     "model.num_decoder_layers=0 must be positive"),
    (["--config.eval.test_report=some"], "eval.test_report='some' must be"),
])
def test_kind_mistakes_exit_2_with_one_sentence(flags, message, capsys):
    with pytest.raises(SystemExit) as stop:
        train.main([*flags, "--workdir", "/nonexistent/never/written"])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err

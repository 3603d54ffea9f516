"""Fault injection: run directories survive failed saves, damaged checkpoints, concurrent
jobs, config changes on resume, stop requests and catalogue datasets (issue 16).

Subprocesses go through the ``start_child`` fixture (conftest.py): their process groups are
killed when the test ends, and the tests wait on events in their output, never on sleeps.
"""

import glob
import gzip
import hashlib
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from flax_transformer import checkpoint, config_fields, loop, presets, report, stopping, training
from flax_transformer import config as config_lib
from tests.test_distributed import _args, _env
from tests.test_loop import _config, _write_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _write_corpus(str(tmp_path_factory.mktemp("corpus")))


def _checksums(workdir):
    """sha256 of every file in a run directory (the lock file's holder line left out)."""
    sums = {}
    for path in sorted(glob.glob(os.path.join(workdir, "**"), recursive=True)):
        if os.path.isfile(path) and os.path.basename(path) != ".lock":
            with open(path, "rb") as handle:
                sums[os.path.relpath(path, workdir)] = hashlib.sha256(handle.read()).hexdigest()
    return sums


def _corrupt(directory):
    """Overwrites every data file of a checkpoint step with garbage (a truncated write)."""
    for path in glob.glob(os.path.join(directory, "state", "**"), recursive=True):
        if os.path.isfile(path) and not path.endswith("_METADATA"):
            with open(path, "wb") as handle:
                handle.write(b"garbage")


def _target(config):
    return jax.device_get(training.create_train_state(config, jax.random.key(0)))


# --------------------------------------------------------------------- 1. failed saves


_FAIL_TMP_DIRS = """
import os, sys
real_mkdir = os.mkdir
def mkdir(path, *args, **kwargs):  # a read-only checkpoints/ (works even for root)
    if "orbax-checkpoint-tmp" in os.fspath(path):
        raise OSError(30, "Read-only file system", os.fspath(path))
    return real_mkdir(path, *args, **kwargs)
os.mkdir = mkdir
sys.argv = ["train.py"] + sys.argv[1:]
sys.path.insert(0, {root!r})
import train
sys.exit(train.main())
"""


def test_failed_save_exits_within_seconds_with_one_line(corpus, tmp_path, start_child):
    workdir = str(tmp_path / "readonly")
    args = _args(corpus, workdir, steps=6)
    child = start_child([sys.executable, "-c", _FAIL_TMP_DIRS.format(root=ROOT), *args[2:]],
                        tmp_path / "readonly.log", env=_env(1))
    child.wait_for("error: saving a checkpoint")
    started = time.monotonic()
    assert child.wait(timeout=120) == 2
    assert time.monotonic() - started < 60  # used to wait forever on Orbax's threads
    last_line = child.output().strip().splitlines()[-1]
    assert last_line.startswith("error: saving a checkpoint") and "Read-only" in last_line


def test_full_disk_is_reported_before_orbax_writes(tmp_path, monkeypatch):
    config = _config_micro()
    checkpoints = checkpoint.Checkpoints(str(tmp_path))
    state = _target(config)
    usage = os.statvfs(str(tmp_path))
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda _: type(
        "Usage", (), {"free": 1000, "total": usage.f_blocks, "used": 0})())
    with pytest.raises(checkpoint.CheckpointError, match=r"1000 bytes free.*free disk space"):
        checkpoints.save(1, state)
    checkpoints.close()
    assert checkpoint.Checkpoints(str(tmp_path)).steps() == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 200 KiB tmpfs (where this user may mount one), unmounted afterwards."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here; the patched writer test covers this path")
    yield str(mount)
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_exits_within_seconds_with_one_line(corpus, tmp_path, tiny_disk,
                                                      start_child):
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    os.symlink(tiny_disk, os.path.join(workdir, "checkpoints"))
    child = start_child(_args(corpus, workdir, steps=6), tmp_path / "run.log", env=_env(1))
    assert child.wait(timeout=900) == 2
    last_line = child.output().strip().splitlines()[-1]
    assert last_line.startswith("error: saving a checkpoint") and "free disk space" in last_line


def _config_micro():
    from tests.helpers import micro_config
    return micro_config()


# --------------------------------------------------------------------- 2. damaged checkpoints


def test_corrupt_newest_is_moved_aside_and_training_continues(corpus, tmp_path, capsys):
    workdir = str(tmp_path / "run")
    config = _config(corpus, num_steps=6, checkpoint_every=3)
    loop.train_and_evaluate(config, workdir)
    _corrupt(os.path.join(workdir, "checkpoints", "6"))
    longer = config_fields.override(config, {"train.num_steps": "9"})
    capsys.readouterr()
    loop.train_and_evaluate(longer, workdir)  # used to end in StepAlreadyExistsError
    err = capsys.readouterr().err
    assert "unreadable; using checkpoint 3" in err and "checkpoints.damaged" in err
    assert os.path.isdir(os.path.join(workdir, "checkpoints.damaged", "6", "state"))
    assert checkpoint.Checkpoints(workdir).steps()[-2:] == [6, 9]
    loop.train_and_evaluate(longer, workdir)  # and every rerun works


def test_decode_best_falls_back_and_errors_mention_the_flag(corpus, tmp_path, capsys):
    workdir = str(tmp_path / "run")
    config = _config(corpus, num_steps=4, checkpoint_every=2, eval_every=2)
    loop.train_and_evaluate(config, workdir)
    checkpoints = checkpoint.Checkpoints(workdir)
    best = checkpoints.best_step()
    _corrupt(os.path.join(workdir, "checkpoints", str(best)))
    before = _checksums(workdir)
    _, step, what = checkpoint.restore_params(workdir, _target(config), "best")
    assert step != best and what == f"checkpoints/{step}"
    assert f"using checkpoint {step}" in capsys.readouterr().err
    assert _checksums(workdir) == before  # decoding moves nothing
    with pytest.raises(checkpoint.CheckpointError, match="--checkpoint"):
        checkpoint.restore_params(workdir, _target(config), str(best))
    with pytest.raises(checkpoint.CheckpointError, match="--checkpoint"):
        checkpoint.restore_params(workdir, _target(config), "77")


def test_garbage_metrics_file_is_ignored(corpus, tmp_path):
    workdir = str(tmp_path / "run")
    config = _config(corpus, num_steps=4, checkpoint_every=2, eval_every=2)
    loop.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "checkpoints", "4", "metrics", "metrics"), "wb") as handle:
        handle.write(os.urandom(16))
    assert checkpoint.Checkpoints(workdir).best_step() == 2
    assert checkpoint.restore_params(workdir, _target(config), "best")[1] == 2
    loop.train_and_evaluate(config_fields.override(config, {"train.num_steps": "6"}), workdir)


# --------------------------------------------------------------------- 3. one job per workdir


_HOLD_LOCK = """
import sys
sys.path.insert(0, {root!r})
from flax_transformer import checkpoint
checkpoint.lock_workdir({workdir!r})
print("locked", flush=True)
sys.stdin.read()
"""


def test_second_job_on_a_workdir_is_refused_naming_the_holder(corpus, tmp_path, start_child):
    workdir = str(tmp_path / "run")
    config = _config(corpus, num_steps=2, checkpoint_every=2)
    loop.train_and_evaluate(config, workdir)
    holder = start_child([sys.executable, "-c", _HOLD_LOCK.format(root=ROOT, workdir=workdir)],
                         tmp_path / "holder.log")
    holder.wait_for("locked")
    before = _checksums(workdir)
    with pytest.raises(checkpoint.CheckpointError,
                       match=rf"in use by process {holder.process.pid} on "):
        loop.train_and_evaluate(config_fields.override(config, {"train.num_steps": "4"}), workdir)
    assert _checksums(workdir) == before
    # kill -9 releases the lock (the kernel drops a dead process's flock): never stale.
    holder.signal(signal.SIGKILL)
    holder.wait(timeout=60)
    loop.train_and_evaluate(config_fields.override(config, {"train.num_steps": "4"}), workdir)
    assert checkpoint.Checkpoints(workdir).latest_step() == 4


def test_lock_is_reentrant_and_released(tmp_path):
    workdir = str(tmp_path / "run")
    checkpoint.lock_workdir(workdir)
    checkpoint.lock_workdir(workdir)
    checkpoint.unlock_workdir(workdir)
    probe = subprocess.run([sys.executable, "-c", _HOLD_LOCK.format(root=ROOT, workdir=workdir)],
                           input="", capture_output=True, text=True, timeout=120)
    assert probe.returncode != 0 and "in use by process" in probe.stderr
    checkpoint.unlock_workdir(workdir)
    probe = subprocess.run([sys.executable, "-c", _HOLD_LOCK.format(root=ROOT, workdir=workdir)],
                           input="", capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr


# --------------------------------------------------------------------- 4. train-section changes


def test_turning_ema_on_when_resuming_migrates(corpus, tmp_path, capsys):
    workdir = str(tmp_path / "run")
    config = _config(corpus, num_steps=3, checkpoint_every=3)
    loop.train_and_evaluate(config, workdir)
    with_ema = config_fields.override(config, {"train.ema_decay": "0.99", "train.num_steps": "6",
                                            "train.warmup_steps": "20"})
    loop.train_and_evaluate(with_ema, workdir)
    out = capsys.readouterr().out
    assert "train.ema_decay: 0.0 -> 0.99 (EMA starts from the current parameters)" in out
    assert "train.warmup_steps: 10 -> 20" in out
    assert checkpoint.load_config(workdir) == with_ema
    ema, step, _ = checkpoint.restore_params(workdir, _target(with_ema), "latest", use_ema=True)
    params, _, _ = checkpoint.restore_params(workdir, _target(with_ema), "latest")
    assert step == 6
    moved = max(float(np.abs(a - b).max())
                for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(params), strict=True))
    assert moved > 0  # a real EMA, not a copy of the parameters
    without = config_fields.override(with_ema, {"train.ema_decay": "0", "train.num_steps": "7"})
    loop.train_and_evaluate(without, workdir)
    assert "the saved EMA is dropped" in capsys.readouterr().out


@pytest.mark.parametrize("field,value", [("gradient_accumulation", "2"),
                                         ("weight_decay", "0.01"),
                                         ("gradient_clip_norm", "1.0")])
def test_structure_changing_train_field_is_refused_and_nothing_changes(
        corpus, tmp_path, field, value):
    workdir = str(tmp_path / "run")
    config = _config(corpus, num_steps=3, checkpoint_every=3)
    loop.train_and_evaluate(config, workdir)
    before = _checksums(workdir)
    changed = config_fields.override(config, {f"train.{field}": value, "train.num_steps": "6"})
    with pytest.raises(loop.TrainingError, match=rf"train\.{field}: "):
        loop.train_and_evaluate(changed, workdir)
    assert _checksums(workdir) == before


def test_unreadable_checkpoints_leave_the_run_as_it_was(corpus, tmp_path):
    workdir = str(tmp_path / "run")
    config = _config(corpus, num_steps=3, checkpoint_every=3)
    loop.train_and_evaluate(config, workdir)
    _corrupt(os.path.join(workdir, "checkpoints", "3"))
    before = _checksums(workdir)
    with pytest.raises(checkpoint.CheckpointError, match="none of the checkpoints"):
        loop.train_and_evaluate(config_fields.override(config, {"train.num_steps": "6"}), workdir)
    assert _checksums(workdir) == before


# --------------------------------------------------------------------- 5. stop requests


def _stop_during(monkeypatch, target, name):
    """Makes ``target.name`` send SIGTERM to this process, then work for a long time."""
    def slow(*args, **kwargs):
        del args, kwargs
        signal.raise_signal(signal.SIGTERM)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # long work that a stop request must cut short
            time.sleep(0.01)
        raise AssertionError("the stop request was not honoured")
    monkeypatch.setattr(target, name, slow)


def test_stop_during_validation_saves_and_returns(corpus, tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    config = _config(corpus, num_steps=6, checkpoint_every=100, eval_every=2)
    _stop_during(monkeypatch, loop.evaluation.Evaluator, "evaluate")
    started = time.monotonic()
    assert loop.train_and_evaluate(config, workdir) == {}
    assert time.monotonic() - started < 100
    assert checkpoint.Checkpoints(workdir).latest_step() == 2  # saved without a score
    monkeypatch.undo()
    loop.train_and_evaluate(config, workdir)
    assert checkpoint.Checkpoints(workdir).latest_step() == 6


def test_stop_during_averaging_and_test_report(corpus, tmp_path, monkeypatch, capsys):
    workdir = str(tmp_path / "run")
    config = _config(corpus, num_steps=4, checkpoint_every=2, average_last=2)
    _stop_during(monkeypatch, checkpoint, "average_params")
    assert loop.main(config, workdir) == {}
    monkeypatch.undo()
    _stop_during(monkeypatch, report, "report_test")
    assert loop.main(config, workdir) == {}
    assert "stopped during the test report" in capsys.readouterr().out
    monkeypatch.undo()
    results = loop.main(config, workdir)
    assert "test_bleu" in results and os.path.exists(os.path.join(workdir, "results.json"))


def test_second_stop_request_exits_at_once(monkeypatch):
    # In-process: two signals sent back to back coalesce in the kernel, so a subprocess
    # test could not make sure that the handler ran twice.
    exits = []
    monkeypatch.setattr(stopping.os, "_exit", exits.append)
    stop = stopping.Stop()
    stop(signal.SIGTERM, None)  # during training steps: noted, the loop saves and returns
    assert stop.requested and not exits
    stop(signal.SIGINT, None)
    assert exits == [128 + signal.SIGINT]
    with pytest.raises(stopping.StopRequested), stop.interruptible():
        raise AssertionError("an interruptible phase must not start after a stop request")
    fresh = stopping.Stop()
    with pytest.raises(stopping.StopRequested), fresh.interruptible():
        with fresh.interruptible():  # validation inside the final phase
            pass
        fresh(signal.SIGTERM, None)  # averaging etc. after it: still ended at once


# --------------------------------------------------------------------- 8. catalogue datasets


def test_whole_loop_on_a_mocked_catalogue_dataset(tmp_path, capsys):
    import tensorflow_datasets as tfds

    from flax_transformer import decode_command

    workdir = str(tmp_path / "wmt")
    base = _config_micro()
    config = config_fields.override(base, {
        "data.dataset": "wmt14_translate/de-en", "data.source_language": "en",
        "data.target_language": "de", "data.tokens_per_batch": "640",
        "train.num_steps": "2", "train.eval_every": "2", "train.checkpoint_every": "2"})
    with tfds.testing.mock_data(num_examples=40):
        results = loop.main(config, workdir)
    assert "test_bleu" in results and "bleu" in results
    assert checkpoint.Checkpoints(workdir).latest_step() == 2
    request = decode_command.DecodeRequest(
        workdir=workdir, checkpoint="best", use_ema=False, inputs=("a b c",),
        input_file=None, output_file=str(tmp_path / "out.txt"), reference_file=None,
        attention_plot=None, self_attention=False, decode_overrides={})
    decode_command.run(request)
    with open(tmp_path / "out.txt") as handle:
        assert len(handle.read().splitlines()) == 1


# --------------------------------------------------------------------- helpers


def test_exit_within_ends_a_process_with_a_hanging_thread():
    code = (f"import sys, threading; sys.path.insert(0, {ROOT!r})\n"
            "from flax_transformer import cli\n"
            "threading.Thread(target=threading.Event().wait).start()  # never ends\n"
            "cli.exit_within(1)\n"
            "sys.exit(2)\n")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 2


# --------------------------------------------------------------------- 6, 7, 10. one-line errors


def test_catalogue_dataset_without_network_fails_within_seconds(tmp_path, monkeypatch):
    from flax_transformer import data
    from flax_transformer.data import sources

    def unreachable(*args, **kwargs):
        raise OSError("Name or service not known")
    monkeypatch.setattr(sources.socket, "create_connection", unreachable)
    config = config_fields.override(presets.get_config("tiny"),
                                 {"data.dataset": "wmt14_translate/de-en"})
    started = time.monotonic()
    with pytest.raises(data.DataError, match=r"network is unreachable.*data\.data_dir"):
        data.load_splits(config.data, str(tmp_path))
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("text,message", [
    ("{", "config.json is damaged"),
    ("[]", "JSON object of sections"),
    ('{"model": null}', "section 'model' is null"),
    ('{"model": {"d_model": "128"}}', 'model.d_model="128" is not a valid int'),
    ('{"model": {"layer_norm_epsilon": -1}}', "layer_norm_epsilon=-1.0 must be positive"),
    ('{"model": {"pad_id": -7}}', "pad_id=-7 must be a token id"),
    ('{"model": {"vocab_size": 2e9}}', "vocab_size=2000000000.0 is not a valid int"),
    ('{"train": {"learning_rate_scale": Infinity}}', "must be a finite number"),
])
def test_damaged_config_json_is_one_line(tmp_path, text, message):
    with open(tmp_path / "config.json", "w") as handle:
        handle.write(text)
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(message)):
        checkpoint.load_config(str(tmp_path))


def test_damaged_tokenizer_model_is_one_line(tmp_path):
    from flax_transformer import data
    from flax_transformer.data import tokenizer

    path = tmp_path / "tokenizer.model"
    path.write_bytes(os.urandom(16))
    with pytest.raises(data.DataError, match="not a readable SentencePiece model"):
        tokenizer.Tokenizer.load(str(path))


def test_ids_past_a_small_vocabulary_decode_as_unknown(tmp_path):
    from flax_transformer.data import tokenizer

    small = tokenizer.Tokenizer.train(["a b c", "b c d"] * 20, str(tmp_path / "t.model"), 64)
    assert small.vocab_size < 64
    assert small.decode([small.vocab_size + 3, small.eos_id]) == small.decode([small.unk_id])
    assert small.id_to_piece([63]) == ["<unk>"]


def test_plain_text_named_gz_is_one_line(tmp_path):
    from flax_transformer import data
    from flax_transformer.data import parallel_text

    path = tmp_path / "train.en.gz"
    path.write_text("not gzip\n")
    with pytest.raises(data.DataError, match=r"is named \.gz but is not"):
        list(parallel_text.read_lines(path))
    # Cut short, and damaged inside (zlib.error, a traceback before data.GZIP_ERRORS).
    whole = gzip.compress(b"eins\nzwei\n" * 200)
    for content in (whole[:len(whole) // 2],
                    whole[:20] + bytes(b ^ 0xFF for b in whole[20:40]) + whole[40:]):
        path.write_bytes(content)
        with pytest.raises(data.DataError, match=r"is named \.gz but is not complete gzip"):
            list(parallel_text.read_lines(path))


def test_decode_request_is_checked_before_the_model_load(tmp_path):
    from flax_transformer import preflight

    workdir = str(tmp_path)
    checkpoint.save_config(workdir, _config_micro())
    check = lambda **kw: preflight.check_request(  # noqa: E731
        workdir, kw.pop("overrides", {}), kw.get("input_file"), kw.get("output_file"),
        kw.get("attention_plot"))
    with pytest.raises(config_lib.ConfigError, match=r"decode.seed=.*in \[0, 2\*\*32\)"):
        check(overrides={"seed": 99999999999999999999})
    with pytest.raises(config_lib.ConfigError, match="beam_size=0"):
        check(overrides={"beam_size": 0})
    for flag in ("output_file", "attention_plot"):
        with pytest.raises(preflight.PreflightError, match=rf"--{flag} .* does not exist"):
            check(**{flag: str(tmp_path / "missing" / "out.png")})
    with pytest.raises(preflight.PreflightError, match="is a device"):
        check(input_file="/dev/zero")
    check(output_file=str(tmp_path / "out.txt"), overrides={"seed": 7})
    assert preflight.meaningless_lines(["😀😀", "\0\0", "", "one", "€ 5"]) == 2

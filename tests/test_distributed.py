"""train.py as separate processes: 2 processes × 2 CPU devices == 1 process × 4 devices,
SIGTERM saves and exits cleanly, kill -9 resumes from the last complete checkpoint.

Every child runs through the ``start_child`` fixture (conftest.py), which kills its process
group when the test ends; the tests wait on events in the children's output or on their
exit, never on fixed sleeps, so they pass on a loaded machine."""

import json
import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from flax_transformer import checkpoint, training
from tests.test_loop import _write_corpus
from tests.test_parallel import _assert_same_updates

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _args(corpus, workdir, steps=6, extra=()):
    fields = {
        "model.vocab_size": 64, "data.vocab_size": 64, "model.d_model": 32,
        "model.num_heads": 2, "model.d_ff": 64, "model.num_encoder_layers": 1,
        "model.num_decoder_layers": 1, "model.dropout_rate": 0.0, "model.max_length": 32,
        "data.dataset": "parallel_text", "data.train_files": f"{corpus}/train",
        "data.validation_files": f"{corpus}/valid", "data.test_files": f"{corpus}/test",
        "data.max_length": 16, "data.tokens_per_batch": 640, "data.bucket_lengths": "16",
        "data.eval_examples": 8, "train.num_steps": steps, "train.log_every": 1,
        "train.eval_every": 100, "train.checkpoint_every": 3, "train.warmup_steps": 10,
    }
    return [sys.executable, os.path.join(ROOT, "train.py"), "--config", "tiny",
            "--workdir", workdir, *[f"--config.{key}={value}" for key, value in fields.items()],
            *extra]


def _env(devices):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as handle:
        records = [json.loads(line) for line in handle]
    return [r["loss"] for r in records if r["split"] == "train"]


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _write_corpus(str(tmp_path_factory.mktemp("corpus")))


def test_two_processes_match_one_process_and_restore_in_one(corpus, tmp_path, start_child):
    single = str(tmp_path / "single")
    result = start_child(_args(corpus, single), tmp_path / "single.log", env=_env(4))
    assert result.wait(timeout=900) == 0, result.output()[-3000:]
    multi = str(tmp_path / "multi")
    port = _free_port()
    processes = [start_child(
        _args(corpus, multi, extra=["--coordinator_address", f"127.0.0.1:{port}",
                                    "--num_processes", "2", "--process_id", str(index)]),
        tmp_path / f"process_{index}.log", env=_env(2)) for index in range(2)]
    for process in processes:
        assert process.wait(timeout=900) == 0, process.output()[-3000:]
    np.testing.assert_allclose(_losses(multi), _losses(single), rtol=1e-5)
    assert len(_losses(multi)) == 6
    config = checkpoint.load_config(multi)
    target = jax.device_get(training.create_train_state(config, jax.random.key(0)))
    multi_params, step, _ = checkpoint.restore_params(multi, target, "latest")
    single_params, _, _ = checkpoint.restore_params(single, target, "latest")
    earlier_params, _, _ = checkpoint.restore_params(single, target, "3")
    assert step == 6
    # Tolerance: a small fraction of how far the parameters moved over the last 3 steps.
    _assert_same_updates(multi_params, single_params, earlier_params)
    # Saved by 4 devices (and by 2 × 2), restored by a process with a single device.
    for workdir in (single, multi):
        decoded = subprocess.run(
            [sys.executable, os.path.join(ROOT, "decode.py"), "--workdir", workdir,
             "--checkpoint", "latest", "--input", "forty-two"],
            env=_env(1), capture_output=True, text=True, timeout=600)
        assert decoded.returncode == 0, decoded.stderr[-2000:]
        assert "restored checkpoints/6" in decoded.stderr


def test_sigterm_saves_and_exits_zero_then_resumes(corpus, tmp_path, start_child):
    workdir = str(tmp_path / "preempted")
    args = _args(corpus, workdir, steps=100000, extra=["--config.train.checkpoint_every=50"])
    child = start_child(args, tmp_path / "preempted.log", env=_env(1))
    child.wait_for("loss=")  # training steps are running (no checkpoint yet)
    child.signal(signal.SIGTERM)
    assert child.wait(timeout=300) == 0, child.output()[-2000:]
    assert "checkpoint saved" in child.output()
    stopped_at = checkpoint.Checkpoints(workdir).latest_step()
    assert stopped_at is not None and stopped_at >= 1
    resumed = start_child(_args(corpus, workdir, steps=stopped_at + 3), tmp_path / "resumed.log",
                          env=_env(1))
    assert resumed.wait(timeout=900) == 0, resumed.output()[-3000:]
    assert f"resuming at step {stopped_at}" in resumed.output()


def test_kill_9_resumes_from_the_last_complete_checkpoint(corpus, tmp_path, start_child):
    workdir = str(tmp_path / "killed")
    args = _args(corpus, workdir, steps=100000, extra=["--config.train.checkpoint_every=3"])
    child = start_child(args, tmp_path / "killed.log", env=_env(1))
    # At step 7 the save of step 6 has begun, and Orbax begins a save only after the
    # previous one (step 3) is complete: an event in the output, not a guess of the time.
    # (The bar may skip step 7 itself when steps are fast: any later step will do.)
    child.wait_for_step(7)
    child.signal(signal.SIGKILL)
    child.wait(timeout=120)
    complete = checkpoint.Checkpoints(workdir).latest_step()
    assert complete is not None and complete >= 3
    resumed = start_child(_args(corpus, workdir, steps=complete + 2), tmp_path / "resumed.log",
                          env=_env(1))
    assert resumed.wait(timeout=900) == 0, resumed.output()[-3000:]
    assert f"resuming at step {complete}" in resumed.output()

"""train.py as separate processes: 2 processes × 2 CPU devices == 1 process × 4 devices,
SIGTERM saves and exits cleanly, kill -9 resumes from the last complete checkpoint."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from flax_transformer import checkpoint, training
from tests.test_loop import _write_corpus

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


def test_two_processes_match_one_process_and_restore_in_one(corpus, tmp_path):
    single = str(tmp_path / "single")
    result = subprocess.run(_args(corpus, single), env=_env(4), capture_output=True,
                            timeout=600, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    multi = str(tmp_path / "multi")
    port = _free_port()
    logs = [open(tmp_path / f"process_{index}.log", "w+") for index in range(2)]  # noqa: SIM115
    # Files, not pipes: a full pipe would block one process inside a collective.
    processes = [subprocess.Popen(
        _args(corpus, multi, extra=["--coordinator_address", f"127.0.0.1:{port}",
                                    "--num_processes", "2", "--process_id", str(index)]),
        env=_env(2), stdout=logs[index], stderr=subprocess.STDOUT) for index in range(2)]
    for process in processes:
        process.wait(timeout=600)
    for log in logs:
        log.seek(0)
    outputs = [log.read() for log in logs]
    assert all(process.returncode == 0 for process in processes), outputs[0][-3000:]
    np.testing.assert_allclose(_losses(multi), _losses(single), rtol=1e-5)
    assert len(_losses(multi)) == 6
    config = checkpoint.load_config(multi)
    target = jax.device_get(training.create_train_state(config, jax.random.key(0)))
    multi_params, step, _ = checkpoint.restore_params(multi, target, "latest")
    single_params, _, _ = checkpoint.restore_params(single, target, "latest")
    assert step == 6
    for got, want in zip(jax.tree.leaves(multi_params), jax.tree.leaves(single_params),
                         strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    # Saved by 4 devices (and by 2 × 2), restored by a process with a single device.
    for workdir in (single, multi):
        decoded = subprocess.run(
            [sys.executable, os.path.join(ROOT, "decode.py"), "--workdir", workdir,
             "--checkpoint", "latest", "--input", "forty-two"],
            env=_env(1), capture_output=True, text=True, timeout=300)
        assert decoded.returncode == 0, decoded.stderr[-2000:]
        assert "restored checkpoints/6" in decoded.stderr


def _wait_for_checkpoint(workdir, process, timeout=300):
    deadline = time.time() + timeout
    directory = os.path.join(workdir, "checkpoints")
    while time.time() < deadline and process.poll() is None:
        if os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory)):
            return
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


def test_sigterm_saves_and_exits_zero_then_resumes(corpus, tmp_path):
    workdir = str(tmp_path / "preempted")
    args = _args(corpus, workdir, steps=100000, extra=["--config.train.checkpoint_every=50"])
    with open(tmp_path / "preempted.log", "w+") as log:
        process = subprocess.Popen(args, env=_env(1), stdout=log, stderr=subprocess.STDOUT)
        _wait_for_checkpoint(workdir, process)
        sent = time.time()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        log.seek(0)
        output = log.read()
    assert process.returncode == 0, output[-2000:]
    assert time.time() - sent < 60
    assert "checkpoint saved" in output
    stopped_at = checkpoint.Checkpoints(workdir).latest_step()
    assert stopped_at is not None and stopped_at >= 1
    resumed = subprocess.run(_args(corpus, workdir, steps=stopped_at + 3), env=_env(1),
                             capture_output=True, timeout=600, text=True)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"resuming at step {stopped_at}" in resumed.stdout


def test_kill_9_resumes_from_the_last_complete_checkpoint(corpus, tmp_path):
    workdir = str(tmp_path / "killed")
    args = _args(corpus, workdir, steps=100000, extra=["--config.train.checkpoint_every=3"])
    process = subprocess.Popen(args, env=_env(1), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(workdir, process)
    time.sleep(1.0)
    process.kill()
    process.wait()
    complete = checkpoint.Checkpoints(workdir).latest_step()
    assert complete is not None
    resumed = subprocess.run(_args(corpus, workdir, steps=complete + 2), env=_env(1),
                             capture_output=True, timeout=600, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming at step {complete}" in resumed.stdout

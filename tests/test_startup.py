"""Start-up: what the CLIs import, the persistent compilation cache, and no recompiles.

Compilations are counted through jax.monitoring: every new program is lowered to MLIR
once ("/jax/core/compile/jaxpr_to_mlir_module_duration"), whether or not the persistent
cache then finds its executable, so a second lowering of the same step is a recompile.
"""

import contextlib
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from flax_transformer import config as config_lib
from flax_transformer import parallel, training, translate
from flax_transformer.model import Transformer
from tests.helpers import micro_config, random_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOWERING = "/jax/core/compile/jaxpr_to_mlir_module_duration"
# Libraries that translating one line with a trained run does not need.
NOT_FOR_DECODING = ("tensorflow_datasets", "grain", "matplotlib", "sacrebleu", "tensorboardX")


@contextlib.contextmanager
def count_lowerings():
    """Yields a one-element list holding the number of programs lowered so far."""
    count = [0]

    def listen(event: str, duration: float, **kwargs) -> None:
        del duration, kwargs
        if event == LOWERING:
            count[0] += 1
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def _python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def test_decode_command_imports_no_data_or_plotting_libraries():
    result = _python(f"""
        import sys
        from flax_transformer import decode_command  # and inference, below it
        print(sorted(name for name in {NOT_FOR_DECODING!r} if name in sys.modules))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


@pytest.mark.parametrize("script", ["decode.py", "train.py"])
def test_help_imports_no_jax(script):
    result = subprocess.run([sys.executable, "-X", "importtime", script, "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    assert "--no_compilation_cache" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "flax_transformer.cli" in imported  # the check itself works
    assert not imported & {"jax", "flax", "orbax.checkpoint", *NOT_FOR_DECODING}


def test_lazy_data_names_resolve():
    from flax_transformer import data

    assert callable(data.load_splits) and callable(data.train_batches)
    assert data.monolingual.TargetText is not None and data.sources.load_splits is not None
    assert "load_splits" in dir(data)
    with pytest.raises(AttributeError):
        data.no_such_name  # noqa: B018


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(parallel.CACHE_ENV, "off")
    assert parallel.compilation_cache_dir() is None
    monkeypatch.setenv(parallel.CACHE_ENV, str(tmp_path / "cache"))
    assert parallel.compilation_cache_dir() == str(tmp_path / "cache")
    assert parallel.compilation_cache_dir(enabled=False) is None
    monkeypatch.delenv(parallel.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert parallel.compilation_cache_dir() == str(tmp_path / "xdg" / "flax_transformer" / "jax")


def test_tests_do_not_write_the_users_cache():
    directory = os.environ[parallel.CACHE_ENV]
    assert parallel.compilation_cache_dir() == os.path.abspath(directory)
    assert not directory.startswith(os.path.expanduser("~/.cache"))


_CACHED_PROGRAM = """
    import jax, jax.numpy as jnp
    from flax_transformer import parallel
    hits = []
    jax.monitoring.register_event_listener(
        lambda event, **kwargs: hits.append(event) if event.endswith("cache_hits") else None)
    print(parallel.use_compilation_cache())
    print(float(jax.jit(lambda x: jnp.tanh(x) * 3.0 + 1.0)(jnp.arange(7.0)).sum()))
    print(len(hits))
"""


def test_second_process_reads_the_persistent_cache(tmp_path):
    env = {**os.environ, parallel.CACHE_ENV: str(tmp_path / "cache")}
    first = _python(_CACHED_PROGRAM, env)
    assert first.returncode == 0, first.stderr
    directory, value, hits = first.stdout.split()
    assert directory == str(tmp_path / "cache") and hits == "0"
    assert os.listdir(directory), "the first process wrote nothing"
    second = _python(_CACHED_PROGRAM, env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split()[1] == value
    assert int(second.stdout.split()[2]) >= 1, "the second process compiled everything again"


def test_an_undated_entry_does_not_stop_the_cache_from_filling(tmp_path):
    """An entry without its "-atime" file (a process killed mid-write, or one without
    filelock) made every later write fail; use_compilation_cache dates it."""
    directory = tmp_path / "cache"
    directory.mkdir()
    (directory / "jit_f-0123abcd-cache").write_bytes(b"an entry of an older process")
    result = _python(_CACHED_PROGRAM, {**os.environ, parallel.CACHE_ENV: str(directory)})
    assert result.returncode == 0, result.stderr
    assert "Error writing persistent compilation cache" not in result.stderr
    names = os.listdir(directory)
    entries = [name for name in names if name.endswith("-cache")]
    assert len(entries) > 1, "nothing new was cached"
    assert all(name.removesuffix("-cache") + "-atime" in names for name in entries)


def test_cache_off_writes_nothing(tmp_path):
    env = {**os.environ, parallel.CACHE_ENV: "off", "XDG_CACHE_HOME": str(tmp_path)}
    result = _python(_CACHED_PROGRAM, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "None"
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("parallelism", ["pmap", "mesh"])
def test_train_and_eval_steps_compile_once(parallelism):
    config = micro_config(parallelism=parallelism)
    strategy = parallel.make_strategy(config)
    state = strategy.put_state(training.create_train_state(config, jax.random.key(0)))
    rng = np.random.default_rng(0)
    batches = [strategy.put_batch(random_batch(rng, rows=8)) for _ in range(3)]
    root = jax.random.key(1)
    with count_lowerings() as count:
        state, _ = strategy.train_step(state, batches[0], parallel.step_rng(root, 0))
        first = count[0]
        for index in (1, 2):
            state, _ = strategy.train_step(state, batches[index], parallel.step_rng(root, index))
        jax.block_until_ready(state)
        assert first >= 1
        assert count[0] == first, "a later train step compiled again"
        jax.block_until_ready(strategy.eval_step(state, batches[0]))
        after_eval = count[0]
        jax.block_until_ready(strategy.eval_step(state, batches[1]))
        assert count[0] == after_eval, "the second eval step compiled again"


def test_translate_compiles_once_per_bucket():
    model_config = micro_config().model
    params = training.init_params(model_config, jax.random.key(0))
    translate_fn = translate.make_translate_fn(
        Transformer(model_config), config_lib.DecodeConfig(), bos_id=2, eos_id=3)
    rng = np.random.default_rng(0)
    with count_lowerings() as count:
        batch = rng.integers(4, 64, (4, 8)).astype(np.int32)
        first = np.asarray(translate_fn(params, batch).tokens)
        compiled = count[0]
        batch = rng.integers(4, 64, (4, 8)).astype(np.int32)
        second = np.asarray(translate_fn(params, batch).tokens)
    assert first.shape == second.shape
    assert compiled >= 1 and count[0] == compiled, "a same-shape batch compiled again"

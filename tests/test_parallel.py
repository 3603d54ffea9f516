"""parallel.py on 4 simulated CPU devices: pmap and mesh give the single-device result."""

import ast
import dataclasses
import functools
import os
import resource
import subprocess
import sys

import jax
import numpy as np
import pytest

from flax_transformer import parallel, training
from tests.helpers import kind_config, micro_config, random_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_single(config, state, batches, root):
    step = jax.jit(lambda s, b, r: training.train_step(s, b, r, config=config))
    losses = []
    for index, batch in enumerate(batches):
        state, metrics = step(state, batch, parallel.step_rng(root, index))
        losses.append(training.summarize(metrics)["loss"])
    return jax.device_get(state.params), losses


def _run_strategy(config, state, batches, root):
    strategy = parallel.make_strategy(config)
    device_state = strategy.put_state(state)
    losses = []
    for index, batch in enumerate(batches):
        device_state, metrics = strategy.train_step(device_state, strategy.put_batch(batch),
                                                    parallel.step_rng(root, index))
        losses.append(training.summarize(strategy.metrics(metrics))["loss"])
    return strategy.get_state(device_state).params, losses


@pytest.mark.parametrize("parallelism", ["pmap", "mesh"])
def test_four_devices_equal_one_device(parallelism):
    assert jax.local_device_count() == 4
    # Adam's ε = 1e-9 turns float rounding in near-zero gradients into full-size steps;
    # a larger ε keeps the comparison about the gradient aggregation being right.
    config = micro_config(adam_epsilon=1e-6, parallelism=parallelism, learning_rate_scale=0.5)
    rng = np.random.default_rng(0)
    batches = [random_batch(rng, rows=8) for _ in range(5)]
    state = jax.device_get(training.create_train_state(config, jax.random.key(0)))
    root = jax.random.key(7)
    single_params, single_losses = _run_single(config, state, batches, root)
    multi_params, multi_losses = _run_strategy(config, state, batches, root)
    np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-5)
    _assert_same_updates(multi_params, single_params, state.params)


@pytest.mark.parametrize("parallelism", ["pmap", "mesh"])
def test_compiled_train_step_is_the_program_train_step_runs(parallelism):
    config = micro_config(parallelism=parallelism)
    strategy = parallel.make_strategy(config)
    state = jax.device_get(training.create_train_state(config, jax.random.key(0)))
    batch = strategy.put_batch(random_batch(np.random.default_rng(0), rows=8))
    rng = parallel.step_rng(jax.random.key(1), 0)
    compiled = strategy.compiled_train_step(strategy.put_state(state), batch, rng)
    assert "ENTRY" in compiled.as_text() and " dot(" in compiled.as_text()
    _, want = strategy.train_step(strategy.put_state(state), batch, rng)
    _, got = compiled(strategy.put_state(state), batch, rng)
    np.testing.assert_allclose(training.summarize(strategy.metrics(got))["loss"],
                               training.summarize(strategy.metrics(want))["loss"], rtol=1e-6)


def _assert_same_updates(got_params, want_params, initial_params, fraction=1e-2):
    """Both runs moved every parameter the same way, up to ``fraction`` of the update.

    The tolerance comes from the quantity compared: float32 sums taken in another order
    (per device, then across devices) change an Adam update by a small fraction of its
    size, on any CPU; wrongly combined gradients or dropped rows change it by its whole size.
    """
    for path, got, want, initial in zip(
            [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(
                want_params)],
            jax.tree.leaves(got_params), jax.tree.leaves(want_params),
            jax.tree.leaves(initial_params), strict=True):
        update = float(np.abs(np.asarray(want) - np.asarray(initial)).max())
        assert update > 0, f"{path} did not move: the comparison would be vacuous"
        difference = float(np.abs(np.asarray(got) - np.asarray(want)).max())
        assert difference <= fraction * update, (
            f"{path}: runs differ by {difference:.3g}, more than {fraction:g} of the "
            f"largest update {update:.3g}")


def test_pmap_dropout_differs_between_devices():
    config = micro_config()
    config = dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                   dropout_rate=0.5))
    strategy = parallel.PmapStrategy(config)
    batch = random_batch(np.random.default_rng(1), rows=4)
    same_rows = {key: np.repeat(value[:1], 4, axis=0) for key, value in batch.items()}
    state = strategy.put_state(training.create_train_state(config, jax.random.key(0)))
    per_device = jax.pmap(
        lambda s, b, r: training.train_step(s, b, r, config=config,
                                            axis_name=parallel.AXIS)[1]["loss"][0],
        axis_name=parallel.AXIS, in_axes=(0, 0, None))
    losses = np.asarray(per_device(state, strategy.put_batch(same_rows), jax.random.key(3)))
    # psum makes every device report the same total; compare with dropout off instead.
    assert np.allclose(losses, losses[0])
    local = jax.pmap(
        lambda s, b, r: training.train_step(
            s, b, jax.random.fold_in(r, jax.lax.axis_index(parallel.AXIS)),
            config=config)[1]["loss"][0],
        axis_name=parallel.AXIS, in_axes=(0, 0, None))
    per_row = np.asarray(local(state, strategy.put_batch(same_rows), jax.random.key(3)))
    assert len(set(np.round(per_row, 6))) > 1  # identical rows, different dropout masks


@pytest.mark.parametrize("kind", ["encoder_decoder", "encoder_only"])
def test_pmap_over_one_device_runs_as_jit_with_the_same_numbers(kind, monkeypatch):
    """make_strategy: "pmap" on a single device is the jit step (no replica axis, so XLA
    does not copy Adam's moments), folding the dropout key as pmap's replica 0 does."""
    config = kind_config(kind)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                   dropout_rate=0.3))
    monkeypatch.setattr(jax, "device_count", lambda: 1)
    strategy = parallel.make_strategy(config)
    assert isinstance(strategy, parallel.MeshStrategy)
    state = training.create_train_state(config, jax.random.key(0))
    batch = random_batch(np.random.default_rng(2), rows=8, length=16)
    one_device = jax.pmap(
        lambda s, b, r: training.train_step(s, b, r, config=config, axis_name=parallel.AXIS),
        axis_name=parallel.AXIS, in_axes=(0, 0, None), devices=jax.devices()[:1])
    replicas = jax.tree.map(lambda leaf: np.asarray(leaf)[None], state)
    want_state, want_metrics = one_device(replicas, {k: v[None] for k, v in batch.items()},
                                          jax.random.key(5))
    got_state, got_metrics = jax.jit(functools.partial(
        training.train_step, config=config, pmap_replica=True))(state, batch,
                                                               jax.random.key(5))
    for got, want in zip(jax.tree.leaves((got_state.params, got_metrics)),
                         jax.tree.leaves((want_state.params, want_metrics)), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want)[0], rtol=1e-6,
                                   atol=1e-7)
    assert float(got_metrics["loss"][1]) > 0            # some tokens are scored
    # Without the fold the dropout masks differ, and so does the update.
    plain, _ = jax.jit(functools.partial(training.train_step, config=config))(
        state, batch, jax.random.key(5))
    assert not all(np.allclose(got, np.asarray(want)[0]) for got, want in zip(
        jax.tree.leaves(plain.params), jax.tree.leaves(want_state.params), strict=True))


def test_describe_devices_mentions_count():
    assert "4 device(s)" in parallel.describe_devices()


def _buffer_addresses(state) -> list[int]:
    return [shard.data.unsafe_buffer_pointer()
            for leaf in jax.tree.leaves(state) for shard in leaf.addressable_shards]


@pytest.mark.parametrize("parallelism", ["pmap", "mesh"])
def test_the_first_step_writes_over_the_state_put_state_gave_it(parallelism):
    """put_state copies into the runtime's own buffers, so even the first step donates them.

    On a CPU, device_put of a NumPy array borrows its memory, which a step cannot take
    over: the first step then held two states at once (+0.7 GiB at base). The caller's
    host state must stay as it was.
    """
    config = micro_config(parallelism=parallelism)
    host = jax.device_get(training.create_train_state(config, jax.random.key(0)))
    host_before = jax.tree.map(np.copy, host)
    strategy = parallel.make_strategy(config)
    state = strategy.put_state(host)
    given = _buffer_addresses(state)
    batch = strategy.put_batch(random_batch(np.random.default_rng(0), rows=8))
    state, _ = strategy.train_step(state, batch, jax.random.key(1))
    assert _buffer_addresses(state) == given
    jax.tree.map(np.testing.assert_array_equal, host, host_before)
    parallel.release_freed_host_memory()       # safe at any time; frees nothing in use
    state, _ = strategy.train_step(state, batch, jax.random.key(2))
    assert _buffer_addresses(state) == given


_HOST_MEMORY_REUSE = """
import resource

import jax
import jax.numpy as jnp

from flax_transformer import parallel

print("prepared", parallel.prepare_host_memory_reuse())   # before the backend starts
step = jax.jit(lambda x, w: jnp.sin(x) @ w)   # sin(x) is a 96 MiB temporary
x, w = jnp.ones((24576, 1024), jnp.float32), jnp.ones((1024, 1), jnp.float32)
print("temporary", step.lower(x, w).compile().memory_analysis().temp_size_in_bytes)


def faults(calls):
    counts = []
    for _ in range(calls):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step(x, w).block_until_ready()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return counts


faults(1)
print("defaults", min(faults(5)))
print("inline", step(x, w).is_ready())   # programs run on the calling thread
print("acted", parallel.reuse_freed_host_memory(True))
print("reusing", faults(15))
with parallel.freed_host_memory_returned():
    print("returned", max(faults(5)))
print("reusing_again", faults(15))
parallel.reuse_freed_host_memory(False)
"""


def test_reused_host_memory_is_not_faulted_in_again():
    """A step's big freed temporaries are reused without page faults while reuse is on.

    In a process of its own: the arena is shared and programs run inline before JAX's
    CPU backend starts. With glibc's defaults each call maps its 96 MiB temporary anew
    (~24,600 page faults).
    """
    if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
        pytest.skip("mallopt settings are glibc's")
    env = {key: value for key, value in os.environ.items() if key != "JAX_PLATFORMS"}
    result = subprocess.run([sys.executable, "-c", _HOST_MEMORY_REUSE], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    seen = {line.split(" ", 1)[0]: ast.literal_eval(line.split(" ", 1)[1])
            for line in result.stdout.splitlines()}
    assert seen["prepared"] and seen["acted"] and seen["inline"], result.stdout
    pages = seen["temporary"] // resource.getpagesize()
    assert pages >= 24576, seen                          # the temporary is not fused away
    assert seen["defaults"] > pages // 2, seen           # mapped anew by every call
    assert seen["returned"] > pages // 2, seen
    # Most calls find a freed temporary: small allocations may split one that is not at
    # the top of the heap, so the heap can take a few before calls find one whole.
    for phase in ("reusing", "reusing_again"):
        assert sum(count < pages // 20 for count in seen[phase]) >= 5, (phase, seen)

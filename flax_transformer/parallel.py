"""The only module that knows about devices: pmap replicas, or jit over a data mesh.

Both strategies compile the same pure ``train_step``/``eval_step`` and expose the same
four verbs, so the training loop never branches on the strategy:

    strategy.put_state(host_state)   -> state on the devices
    strategy.put_batch(local_batch)  -> batch on the devices
    strategy.train_step(state, batch, rng) -> (state, metrics)   # state donated
    strategy.get_state(state)        -> one copy of the state (for checkpoints, decoding)
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import importlib.util
import logging
import os
import pkgutil
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flax_transformer import training
from flax_transformer.config import Config

AXIS = "data"


CACHE_ENV = "FLAX_TRANSFORMER_COMPILATION_CACHE"
CACHE_MAX_BYTES = 2**30  # least recently used programs are evicted beyond this
_OFF = ("off", "0", "false", "no", "none")


def compilation_cache_dir(enabled: bool = True) -> str | None:
    """Where compiled programs persist between processes; None when the cache is off.

    ``$FLAX_TRANSFORMER_COMPILATION_CACHE`` = ``off`` turns it off, a path moves it;
    by default it is ``$XDG_CACHE_HOME/flax_transformer/jax`` (``~/.cache/...``), shared
    by every run of this user: a decode.py of any run, or a resumed train.py, finds the
    programs of the same shapes that an earlier process compiled.
    """
    setting = os.environ.get(CACHE_ENV, "").strip()
    if not enabled or setting.lower() in _OFF:
        return None
    if setting and setting.lower() not in ("on", "1", "true", "yes"):
        return os.path.abspath(os.path.expanduser(setting))
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache_home, "flax_transformer", "jax")


def use_compilation_cache(enabled: bool = True) -> str | None:
    """Turns on JAX's persistent compilation cache (before the first compilation).

    Every program is cached, however quick to compile: on a CPU the many small ones
    (parameter initialisation, host-device transfers) add up to seconds of start-up.
    JAX keys entries by the program, the jax/XLA version, the device kind and XLA flags,
    so a cache shared between runs and versions never returns a wrong program.

    Returns:
      the cache directory, or None when it is off (``enabled`` False, the environment
      variable says off, or the directory cannot be created).
    """
    directory = compilation_cache_dir(enabled)
    if directory is None:
        return None
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        logging.warning("compilation cache off: cannot create %s (%s)", directory, error)
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if importlib.util.find_spec("filelock") is not None:  # JAX's eviction needs it
        jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
        _date_undated_entries(directory)
    return directory


def _date_undated_entries(directory: str) -> None:
    """Gives every cached program without its access-time file one (dated now).

    With eviction on, JAX reads the "-atime" file of every entry before each write, and
    one entry without it (written by a process killed between its two files, or by one
    without ``filelock``, which writes no dates) makes every later write fail with a
    FileNotFoundError warning: the cache would stop filling for good.
    """
    try:
        names = set(os.listdir(directory))
    except OSError:
        return
    stamp = time.time_ns().to_bytes(8, "little")
    for name in names:
        key = name.removesuffix("-cache")
        if key != name and f"{key}-atime" not in names:
            try:
                with open(os.path.join(directory, f"{key}-atime"), "xb") as handle:
                    handle.write(stamp)
            except OSError:   # another process dated it first, or a read-only cache
                pass


def initialize_distributed(coordinator: str = "", num_processes: int = 0,
                           process_id: int = -1) -> bool:
    """Starts jax.distributed when the job runs as several processes; returns whether it did.

    Flags win over the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
    JAX_PROCESS_ID); on TPU pods and SLURM jax finds everything by itself when all are unset.
    """
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    num_processes = num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0"))
    if process_id < 0:
        process_id = int(os.environ.get("JAX_PROCESS_ID", "-1"))
    if num_processes <= 1 and not coordinator:
        return False
    host = coordinator.rsplit(":", 1)[0] if coordinator else ""
    # A loopback coordinator listens on loopback only (JAX binds all interfaces otherwise).
    bind = coordinator if host in ("127.0.0.1", "localhost", "[::1]") else None
    jax.distributed.initialize(coordinator_address=coordinator or None,
                               num_processes=num_processes or None,
                               process_id=None if process_id < 0 else process_id,
                               coordinator_bind_address=bind)
    return True


def all_processes_ok(ok: bool) -> bool:
    """Whether ``ok`` holds in every process (so that all stop together when one cannot go on)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def barrier(name: str) -> None:
    """Waits until every process reaches this point (a no-op in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def describe_devices() -> str:
    devices = jax.devices()
    kinds = sorted({device.device_kind for device in devices})
    return (f"{len(devices)} device(s) ({', '.join(kinds)}), {jax.local_device_count()} local, "
            f"process {jax.process_index()} of {jax.process_count()}")


class PmapStrategy:
    """One replica of the state per local device; gradients summed with lax.psum."""

    name = "pmap"

    def __init__(self, config: Config):
        self.batch_multiple = jax.local_device_count()
        step = functools.partial(training.train_step, config=config, axis_name=AXIS)
        self._train = jax.pmap(step, axis_name=AXIS, in_axes=(0, 0, None), donate_argnums=(0,))
        self._eval = jax.pmap(functools.partial(training.eval_step, config=config,
                                                axis_name=AXIS), axis_name=AXIS)
        # The replicas must carry the sharding the step's outputs carry: jit's cache key
        # includes the arguments' shardings, and flax.jax_utils.replicate's (a mesh axis
        # named "_device_put_sharded") made the second step compile the whole step again.
        self._replicate = jax.pmap(lambda tree: tree, axis_name=AXIS)

    def put_state(self, state: Any) -> Any:
        count = jax.local_device_count()
        stacked = jax.tree.map(lambda leaf: np.broadcast_to(leaf, (count, *np.shape(leaf))),
                               jax.device_get(state))
        return self._replicate(stacked)

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        count = jax.local_device_count()
        return {key: value.reshape(count, value.shape[0] // count, *value.shape[1:])
                for key, value in batch.items()}

    def train_step(self, state, batch, rng):
        return self._train(state, batch, rng)

    def compiled_train_step(self, state, batch, rng) -> jax.stages.Compiled:
        """The executable ``train_step`` runs for these arguments (HLO text, costs)."""
        return self._train.lower(state, batch, rng).compile()

    def eval_step(self, state, batch):
        return _first(self._eval(state.params, batch))

    def get_state(self, state: Any) -> Any:
        return jax.device_get(_first(state))

    def get_params(self, state: Any) -> Any:
        """The parameters on one local device, for single-device computations (decoding)."""
        return _first(state.params)

    @staticmethod
    def metrics(metrics: Any) -> Any:
        return _first(metrics)


class MeshStrategy:
    """jit over a 1-D ``data`` mesh: batch sharded on rows, state replicated."""

    def __init__(self, config: Config, pmap_replica: bool = False):
        self.name = "pmap (as jit: one device)" if pmap_replica else "mesh"
        self.mesh = Mesh(np.array(jax.devices()), (AXIS,))
        self.batch_multiple = jax.local_device_count()
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        self._rows = NamedSharding(self.mesh, PartitionSpec(AXIS))
        step = functools.partial(training.train_step, config=config, pmap_replica=pmap_replica)
        self._train = jax.jit(step, donate_argnums=(0,),
                              out_shardings=(self._replicated, self._replicated))
        self._eval = jax.jit(functools.partial(training.eval_step, config=config),
                             out_shardings=self._replicated)
        self._copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree),
                             out_shardings=self._replicated)

    def put_state(self, state: Any) -> Any:
        # Copies into buffers of the runtime's own: the step donates its input, which must
        # not free the caller's arrays; and device_put of a NumPy array on a CPU borrows
        # its memory, which a step cannot reuse for its output, so the first step would
        # hold two states at once (+0.7 GiB at base; device_put's may_alias=False still
        # borrows on CPU in jax 0.10).
        return self._copy(jax.device_put(jax.device_get(state), self._replicated))

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return {key: jax.make_array_from_process_local_data(self._rows, value)
                for key, value in batch.items()}

    def train_step(self, state, batch, rng):
        return self._train(state, batch, rng)

    def compiled_train_step(self, state, batch, rng) -> jax.stages.Compiled:
        """The executable ``train_step`` runs for these arguments (HLO text, costs)."""
        return self._train.lower(state, batch, rng).compile()

    def eval_step(self, state, batch):
        return self._eval(state.params, batch)

    def get_state(self, state: Any) -> Any:
        # Replicated arrays of a multi-process mesh are not fully addressable: read a local copy.
        return jax.tree.map(lambda leaf: np.asarray(leaf.addressable_data(0)), state)

    def get_params(self, state: Any) -> Any:
        """The parameters on one local device, for single-device computations (decoding)."""
        return jax.tree.map(lambda leaf: leaf.addressable_data(0), state.params)

    @staticmethod
    def metrics(metrics: Any) -> Any:
        return metrics


def release_freed_host_memory() -> None:
    """Gives the memory glibc's allocator keeps after frees back to the OS (malloc_trim).

    Call it after ``put_state`` once the host state is dropped: the host copy and the
    temporaries of an op-by-op initialisation are freed into the allocator's heap, which
    keeps them, and the train step's own temporaries would come on top (base: 0.4 GiB of
    a 2.9 GiB peak). A no-op where the C library has no ``malloc_trim`` (macOS, musl,
    Windows).
    """
    gc.collect()           # a dropped state can sit in a reference cycle until collected
    try:
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):      # no C library loadable by that name (Windows)
        return
    if trim is not None:
        trim(0)


# glibc's mallopt parameters (malloc.h) and the defaults that reuse_freed_host_memory restores
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_TRIM_DEFAULT, _MMAP_MAX_DEFAULT, _TRIM_KEEP = 128 * 1024, 65536, 2**31 - 1
_host_arena = {"shared": False, "reusing": False}


def _mallopt() -> Any:
    """glibc's ``mallopt``, or None under another C library (musl, macOS, Windows)."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return None
        return getattr(ctypes.CDLL(None), "mallopt", None)
    except (AttributeError, ValueError, OSError, TypeError):   # no confstr, no such name
        return None


def _accelerator_expected() -> bool:
    """Whether JAX will start on a GPU or TPU, judged without starting a backend."""
    if jax.config.jax_platforms:
        return any(name.strip() not in ("", "cpu") for name in jax.config.jax_platforms.split(","))
    plugins = importlib.util.find_spec("jax_plugins")   # CUDA/ROCm plugins live there
    found = plugins is not None and any(
        True for _ in pkgutil.iter_modules(plugins.submodule_search_locations or []))
    return found or importlib.util.find_spec("libtpu") is not None


def prepare_host_memory_reuse() -> bool:
    """Lets ``reuse_freed_host_memory`` work: one glibc malloc arena, programs run inline.

    Call it before JAX starts its CPU backend (its threads take their arenas with their
    first allocation, and the backend reads the dispatch setting when it starts).

    - XLA:CPU runs a step on a thread of its own, and a thread's own arena hands out
      blocks over 64 MiB (a step's temporaries: tiny 148 MiB, base 1.1 GiB) as fresh
      mappings that ``free`` unmaps: every step faults them in again, page by page (tiny:
      39,000 faults and 75 ms of kernel time a step; base: 280,000 and 0.55 s). In the
      shared main arena they can come from the heap and stay there.
    - With asynchronous dispatch that thread frees a step's temporaries only after it
      has made the step's results ready, and on a busy machine the free often came after
      the next step had taken a block of its own: the heap then kept two (base: 2.5 →
      3.6 GiB, in 4 of 4 processes under load). So CPU programs run on the calling thread
      (``jax_cpu_enable_async_dispatch`` off), which frees them before the call returns
      (and releases the GIL meanwhile); the reuse keeps one step in flight anyway.

    A no-op, returning False, when a GPU or TPU is expected or the C library is not glibc.
    """
    mallopt = _mallopt()
    if mallopt is None or _accelerator_expected():
        return False
    _host_arena["shared"] = bool(mallopt(_M_ARENA_MAX, 1))
    if _host_arena["shared"]:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    return _host_arena["shared"]


def reuse_freed_host_memory(reuse: bool) -> bool:
    """While steps run back to back on a CPU: blocks freed by one are kept for the next.

    On: big blocks come from the heap (no mmap) and the heap is not trimmed, so a step's
    temporaries reuse the last step's pages instead of faulting in new ones. Off (the
    glibc defaults): big blocks are mapped and unmapped again, and the heap's free pages go
    back to the OS (``release_freed_host_memory``), as around evaluations and checkpoints,
    whose compilations would otherwise leave their garbage in the heap. Turn it on after
    the first steps (their compilation, done with it off, leaves no garbage behind), and
    keep one step in flight while it is on (wait for each step's result): with several,
    a step takes its temporaries before the last one's are freed, small allocations split
    the freed blocks, and the heap grows instead (base: 4.7 GiB peak instead of 2.5, and
    no faster). Returns whether it acted: only after ``prepare_host_memory_reuse``, on a
    CPU backend.
    """
    mallopt = _mallopt()
    if mallopt is None or not _host_arena["shared"] or jax.default_backend() != "cpu":
        return False
    mallopt(_M_MMAP_MAX, 0 if reuse else _MMAP_MAX_DEFAULT)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_KEEP if reuse else _TRIM_DEFAULT)
    if _host_arena["reusing"] and not reuse:
        release_freed_host_memory()
    _host_arena["reusing"] = reuse
    return True


@contextlib.contextmanager
def freed_host_memory_returned() -> Iterator[None]:
    """Inside, glibc's defaults (and the freed memory given back); after, reuse as before."""
    reusing = _host_arena["reusing"]
    if reusing:
        reuse_freed_host_memory(False)
    try:
        yield
    finally:
        if reusing:
            reuse_freed_host_memory(True)


def make_strategy(config: Config) -> PmapStrategy | MeshStrategy:
    """The strategy config.train.parallelism names; "pmap" over one device runs as jit.

    Over a single device pmap computes the step jit computes, but its replica axis costs
    memory on a CPU: the state's outputs are reshaped to [1, ...], so XLA fuses each of
    Adam's moment updates into both of its consumers (that reshape and the parameter
    update) and then copies every moment before updating it in place. At base that is
    362 copies a step and +350 MiB of peak host memory (benchmarks/README.md). So one
    device gets the jit step, folding the dropout key as pmap's replica 0 does: the same
    numbers as before, and a run started under pmap resumes on its own stream.
    """
    if config.train.parallelism == "pmap" and jax.device_count() > 1:
        return PmapStrategy(config)
    return MeshStrategy(config, pmap_replica=config.train.parallelism == "pmap")


def _first(tree: Any) -> Any:
    """This process's first replica of a pmapped tree (leaf[0] may live on another host)."""
    return jax.tree.map(lambda leaf: leaf.addressable_data(0).reshape(leaf.shape[1:]), tree)


def step_rng(root: jax.Array, step: int | jax.Array) -> jax.Array:
    """The key of one step: the root key folded by the step number."""
    return jax.random.fold_in(root, jnp.asarray(step, jnp.uint32))

"""Run directories and Orbax checkpoints; the only module that imports Orbax.

A run directory is self-describing::

    WORKDIR/config.json          the Config of the run (restored by decode.py)
    WORKDIR/tokenizer.model      the SentencePiece model (written by data/)
    WORKDIR/checkpoints/<step>/  state (params, optimizer, step, EMA) + data iterator state
    WORKDIR/averaged/<step>/     parameters averaged over the last N checkpoints
    WORKDIR/metrics.jsonl, WORKDIR/tensorboard/
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from flax_transformer import config as config_lib
from flax_transformer import config_fields

log = logging.getLogger(__name__)
Policies = ocp.checkpoint_managers


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that does not fit the run's config."""


# --------------------------------------------------------------------------- run directory


def check_writable(workdir: str) -> None:
    """Fails early, with what to do, when the workdir cannot be written (or the disk is full)."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test_") as handle:
            handle.write(b"\0" * 1024 * 1024)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise CheckpointError(
            f"cannot write to workdir {workdir!r} ({error.strerror or error}); choose a "
            "writable --workdir with free space.") from error


_LOCKS: dict[str, list] = {}   # realpath of a workdir -> [open lock file, holders]


def lock_workdir(workdir: str) -> None:
    """Takes the run directory's exclusive lock, or says which process holds it.

    ``fcntl.flock`` on WORKDIR/.lock: the kernel releases it when the holder exits in any
    way (kill -9 included), so a lock is never stale. Re-entrant within one process.
    """
    key = os.path.realpath(workdir)
    if key in _LOCKS:
        _LOCKS[key][1] += 1
        return
    os.makedirs(workdir, exist_ok=True)
    handle = open(os.path.join(workdir, ".lock"), "a+")  # noqa: SIM115 (held until unlock)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise CheckpointError(
            f"{workdir!r} is in use by {holder}; wait for it to end (or stop it), or use "
            "another --workdir.") from error
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    _LOCKS[key] = [handle, 1]


def unlock_workdir(workdir: str) -> None:
    """Releases one ``lock_workdir``; the lock is freed when the last holder releases it."""
    key = os.path.realpath(workdir)
    if key not in _LOCKS:
        return
    _LOCKS[key][1] -= 1
    if _LOCKS[key][1] == 0:
        handle = _LOCKS.pop(key)[0]
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _atomic_write(path: str, text: str) -> None:
    directory = os.path.dirname(path) or "."
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as handle:
        handle.write(text)
        temporary = handle.name
    os.replace(temporary, path)


def config_path(workdir: str) -> str:
    return os.path.join(workdir, "config.json")


def save_config(workdir: str, config: config_lib.Config) -> None:
    _atomic_write(config_path(workdir), config_fields.to_json(config) + "\n")


def load_config(workdir: str) -> config_lib.Config:
    """The Config saved in ``workdir``; a clear error when there is none."""
    path = config_path(workdir)
    if not os.path.exists(path):
        raise CheckpointError(
            f"{path} not found: {workdir!r} is not a run directory of train.py. Pass the "
            "--workdir that train.py wrote to.")
    try:
        with open(path, encoding="utf-8") as handle:
            return config_fields.from_json(handle.read())
    except (UnicodeDecodeError, json.JSONDecodeError, config_lib.ConfigError) as error:
        raise CheckpointError(
            f"{path} is damaged ({error}); restore it (e.g. from a copy, or rewrite it with "
            "the train.py flags of the run).") from error


# --------------------------------------------------------------------------- checkpoints


def _score(metrics: dict) -> float:
    return float(metrics["score"])


def _manager(directory: str, keep: int, async_save: bool, read_only: bool = False):
    policy = Policies.AnyPreservationPolicy([
        Policies.LatestN(n=keep),
        Policies.BestN(get_metric_fn=_score, n=1,
                       keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, best_fn=_score, best_mode="max",
        enable_async_checkpointing=async_save,
        read_only=read_only, create=not read_only,
        # Synchronous directory creation: a read-only or full disk then fails in save()
        # itself; created in the background, the failure left Orbax's threads waiting forever.
        async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
    return _Manager(directory, options=options, item_names=("state", "data"))


class _Manager(ocp.CheckpointManager):
    """A CheckpointManager for which an unreadable metrics file means "no score".

    Orbax reads every step's metrics when it opens a directory; one garbage
    ``<step>/metrics/metrics`` would otherwise stop training and decoding alike.
    """

    def metrics(self, step: int) -> Any:
        try:
            return super().metrics(step)
        except Exception as error:
            log.warning("the validation score saved with checkpoint %s in %s is unreadable "
                        "(%s); ignoring it.", step, self.directory, _short(error))
            return None


class Checkpoints:
    """Saves and restores training states of one run directory.

    Saves are asynchronous (training goes on while files are written) and atomic: Orbax
    writes into a temporary directory and renames it when complete, so a killed process
    never leaves a checkpoint that ``restore`` would pick.
    """

    def __init__(self, workdir: str, keep: int = 5, async_save: bool = True,
                 subdir: str = "checkpoints"):
        self.directory = os.path.abspath(os.path.join(workdir, subdir))
        self._manager = _manager(self.directory, keep, async_save)
        self._keep = keep
        self._field_reader = None  # a manager of its own for reading one field, see below

    def save(self, step: int, state: Any, data_state: dict | None = None,
             metrics: dict | None = None) -> None:
        """Starts saving ``state`` (a host pytree) and the data iterator state at ``step``."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state or {}))
        needed = sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(state))
        free = shutil.disk_usage(self.directory).free
        if free < 2 * needed + 2**20:  # caught here, a full disk gives one clean message
            raise self._save_failed(OSError(
                f"{free} bytes free, checkpoint {step} needs about {needed}"))
        try:
            self._manager.save(step, args=args, metrics=metrics, force=True)
        except Exception as error:  # Orbax re-raises a failed earlier save here, too
            raise self._save_failed(error) from error

    def _save_failed(self, error: Exception) -> CheckpointError:
        return CheckpointError(
            f"saving a checkpoint into {self.directory} failed ({_short(error)}); free disk "
            "space or make it writable, then run the same command to resume from the last "
            "complete checkpoint.")

    def steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """Step with the highest validation score (train.best_metric) so far, or None.

        Steps whose saved score cannot be read (a damaged metrics file) are left out.
        """
        scores = {step: self.score(step) for step in self.steps()}
        scored = [step for step in scores if scores[step] is not None]
        return max(scored, key=lambda step: (scores[step], step)) if scored else None

    def score(self, step: int) -> float | None:
        """The validation score saved with ``step``, or None (none saved, or unreadable)."""
        metrics = self._manager.metrics(step)
        try:
            return float(metrics["score"]) if isinstance(metrics, dict) else None
        except (KeyError, TypeError, ValueError):
            return None

    def restore(self, target: Any, step: int | None = None, fallback: bool | None = None,
                move_damaged: bool = False, field: str | None = None) -> tuple[Any, dict, int]:
        """Restores (state, data_state, step): ``step`` (default: the newest one).

        A checkpoint that fails to read (corrupted or truncated files) is reported and, with
        ``fallback`` (default: when no step is asked for), the next newest is tried, so
        one bad write costs one interval of training, not the run. ``move_damaged``
        (training) then moves the unreadable newer steps to ``<directory>.damaged/`` so
        that training can save those steps again.

        With ``field`` (e.g. "params"), ``target`` is the tree of that one field of the
        saved state, and only it is read: inference skips the optimizer's moments, two
        thirds of a checkpoint of Adam, and data_state is then {}.
        """
        steps = list(reversed(self.steps()))
        if not steps or (step is not None and step not in steps):
            raise CheckpointError(
                f"no checkpoint {'' if step is None else step} in {self.directory} "
                f"(steps there: {sorted(steps) or 'none'}); pick one with --checkpoint.")
        first = steps[0] if step is None else step
        fallback = step is None if fallback is None else fallback
        candidates = [first] + ([s for s in steps if s != first] if fallback else [])
        damaged = []
        for candidate in candidates:
            try:
                state, data_state = self._restore_one(target, candidate, field)
            except CheckpointError:
                raise
            except Exception as error:
                if not fallback:
                    raise CheckpointError(
                        f"checkpoint {candidate} in {self.directory} cannot be restored "
                        f"({_short(error)}); pick another one with --checkpoint (steps: "
                        f"{sorted(steps)}).") from error
                damaged.append(candidate)
                log.warning("checkpoint %s in %s is unreadable (%s); trying another one.",
                            candidate, self.directory, _short(error))
                continue
            if damaged:
                self._set_aside(damaged, candidate, move_damaged)
            return state, data_state, candidate
        raise CheckpointError(
            f"none of the checkpoints {sorted(candidates)} in {self.directory} can be read; "
            "start fresh in a new --workdir.")

    def _restore_one(self, target: Any, step: int, field: str | None) -> tuple[Any, dict]:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        if field is not None:  # the files StandardSave wrote; the other fields left unread
            # Orbax binds an item to the first kind of args it is used with, and the main
            # manager saves and restores whole states with StandardSave/StandardRestore.
            if self._field_reader is None:
                self._field_reader = _manager(self.directory, self._keep, False)
            self._field_reader.reload()
            restored = self._field_reader.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore({field: abstract}, partial_restore=True)))
            _check_shapes(restored.state[field], target, f"{self.directory}/{step}")
            return restored.state[field], {}
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
        _check_shapes(restored.state, target, f"{self.directory}/{step}")
        return restored.state, dict(restored.data or {})

    def _set_aside(self, damaged: list[int], used: int, move: bool) -> None:
        """Reports the unreadable steps; moves those newer than ``used`` aside (training)."""
        aside = f"{self.directory}.damaged"
        newer = [step for step in damaged if step > used] if move else []
        for step in newer:
            os.makedirs(aside, exist_ok=True)
            target = os.path.join(aside, str(step))
            if os.path.exists(target):
                target += time.strftime(".%Y%m%d-%H%M%S")
            shutil.move(os.path.join(self.directory, str(step)), target)
        if newer:
            self._manager.reload()
        moved = f"; moved {newer} to {aside}/ (kept for inspection)" if newer else ""
        print(f"warning: checkpoint(s) {damaged} in {self.directory} are unreadable; using "
              f"checkpoint {used}{moved}.", file=sys.stderr)

    def delete(self, step: int) -> None:
        self._manager.delete(step)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk; a failed one raises."""
        try:
            self._manager.wait_until_finished()
        except Exception as error:
            raise self._save_failed(error) from error

    def close(self) -> None:
        self._manager.close()
        if self._field_reader is not None:
            self._field_reader.close()


def _check_shapes(restored: Any, target: Any, name: str) -> None:
    """Refuses a checkpoint whose tree or shapes differ from the config's model.

    Orbax restores arrays with the shapes they were saved with, so a checkpoint of another
    model would otherwise fail deep inside the first forward pass.
    """
    found = {jax.tree_util.keystr(path): np.shape(leaf)
             for path, leaf in jax.tree_util.tree_leaves_with_path(restored)}
    for path, leaf in jax.tree_util.tree_leaves_with_path(target):
        key = jax.tree_util.keystr(path)
        if found.get(key) != np.shape(leaf):
            raise CheckpointError(
                f"the checkpoint {name} does not fit the model of the config: {key} has "
                f"shape {found.get(key, 'missing')}, the config needs {np.shape(leaf)} "
                "(config.json edited after training, or checkpoints copied from another "
                "run). Use the run's own config.json.")


def _short(error: Exception) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) < 300 else text[:300] + "…"


def average_params(workdir: str, target: Any, count: int, keep: int = 5
                   ) -> tuple[Any, list[int]]:
    """The state of the newest of the last ``count`` checkpoints, its parameters replaced by
    their mean over those checkpoints (computed in float64); and the steps averaged."""
    checkpoints = Checkpoints(workdir, keep=keep, async_save=False)
    steps = checkpoints.steps()[-count:]
    if not steps:
        raise CheckpointError(f"no checkpoints in {checkpoints.directory} to average.")
    total = None
    for step in steps:  # the whole state of the newest step, the parameters of the others
        if step == steps[-1]:
            state, _, _ = checkpoints.restore(target, step)
            params = state.params
        else:
            params, _, _ = checkpoints.restore(target.params, step, field="params")
        params = jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), params)
        total = params if total is None else jax.tree.map(np.add, total, params)
    checkpoints.close()
    averaged = jax.tree.map(lambda leaf, like: (leaf / len(steps)).astype(like.dtype),
                            total, state.params)
    return state.replace(params=averaged), steps


def save_averaged(workdir: str, state: Any, steps: list[int],
                  score: float | None = None) -> None:
    """Writes an averaged state to WORKDIR/averaged under the newest step it averages.

    ``score``, its validation score, lets ``restore_params(which="best")`` prefer it to the
    best single checkpoint. An earlier average under the same step is replaced.
    """
    out = Checkpoints(workdir, keep=1, async_save=False, subdir="averaged")
    if steps[-1] in out.steps():
        out.delete(steps[-1])
    out.save(steps[-1], state, {"averaged_steps": steps},
             None if score is None else {"score": float(score)})
    out.wait()
    out.close()


def restore_params(workdir: str, target: Any, which: str = "best",
                   use_ema: bool = False) -> tuple[Any, int, str]:
    """Parameters for inference: which = 'best', 'latest', 'averaged' or a step number.

    "best" is the checkpoint with the highest validation score, or the average of the
    last checkpoints (``train.average_last``) when its validation score is at least as high.
    Only the parameters (or their EMA) are read from disk, not the optimizer's state.

    Args:
      target: the parameters' tree of shapes (``training.param_shapes``), or a whole
        TrainState tree (``training.train_state_shapes``), whose params are then used.

    Returns:
      (params, step, description of what was restored).
    """
    if hasattr(target, "params"):  # a TrainState tree
        kept_ema = target.ema_params is not None
        target = target.params
    else:
        kept_ema = use_ema and load_config(workdir).train.ema_decay > 0
    if use_ema and not kept_ema:
        raise CheckpointError("this run kept no EMA of parameters (train.ema_decay was 0).")
    subdir = "averaged" if which == "averaged" else "checkpoints"
    if not os.path.isdir(os.path.join(workdir, subdir)):
        raise CheckpointError(
            f"no {subdir}/ in {workdir!r}: train first (python train.py --workdir "
            f"{workdir}){' with --config.train.average_last=5' if subdir == 'averaged' else ''}.")
    if which == "best" and averaged_is_best(workdir):
        subdir = "averaged"
    checkpoints = Checkpoints(workdir, async_save=False, subdir=subdir)
    step = None
    if which == "best":
        step = checkpoints.best_step() if subdir == "checkpoints" else None
    elif which not in ("latest", "averaged"):
        step = int(which)
    # "best" and "latest" fall back to the newest readable checkpoint; a step number does not.
    params, _, step = checkpoints.restore(target, step, fallback=which in ("best", "latest"),
                                          field="ema_params" if use_ema else "params")
    checkpoints.close()
    return params, step, f"{subdir}/{step}{' (EMA)' if use_ema else ''}"


def averaged_is_best(workdir: str) -> bool:
    """Whether WORKDIR/averaged holds an average scored at least as high as the best step."""
    if not os.path.isdir(os.path.join(workdir, "averaged")):
        return False
    averaged = Checkpoints(workdir, keep=1, async_save=False, subdir="averaged")
    checkpoints = Checkpoints(workdir, async_save=False)
    try:
        latest, best = averaged.latest_step(), checkpoints.best_step()
        averaged_score = averaged.score(latest) if latest is not None else None
        best_score = checkpoints.score(best) if best is not None else None
    finally:
        averaged.close()
        checkpoints.close()
    return averaged_score is not None and (best_score is None or averaged_score >= best_score)


def save_json(path: str, values: dict) -> None:
    _atomic_write(path, json.dumps(values, indent=2) + "\n")

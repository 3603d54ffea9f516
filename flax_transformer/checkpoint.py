"""Run directories and Orbax checkpoints; the only module that imports Orbax.

A run directory is self-describing::

    WORKDIR/config.json          the Config of the run (restored by decode.py)
    WORKDIR/tokenizer.model      the SentencePiece model (written by data/)
    WORKDIR/checkpoints/<step>/  state (params, optimizer, step, EMA) + data iterator state
    WORKDIR/averaged/<step>/     parameters averaged over the last N checkpoints
    WORKDIR/metrics.jsonl, WORKDIR/tensorboard/
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from flax_transformer import config as config_lib

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


def _atomic_write(path: str, text: str) -> None:
    directory = os.path.dirname(path) or "."
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as handle:
        handle.write(text)
        temporary = handle.name
    os.replace(temporary, path)


def config_path(workdir: str) -> str:
    return os.path.join(workdir, "config.json")


def save_config(workdir: str, config: config_lib.Config) -> None:
    _atomic_write(config_path(workdir), config_lib.to_json(config) + "\n")


def load_config(workdir: str) -> config_lib.Config:
    """The Config saved in ``workdir``; a clear error when there is none."""
    path = config_path(workdir)
    if not os.path.exists(path):
        raise CheckpointError(
            f"{path} not found: {workdir!r} is not a run directory of train.py. Pass the "
            "--workdir that train.py wrote to.")
    with open(path) as handle:
        return config_lib.from_json(handle.read())


def config_differences(saved: config_lib.Config, new: config_lib.Config) -> list[str]:
    """Fields (model and data) whose change makes old checkpoints unusable for ``new``."""
    differences = []
    for section in ("model", "data"):
        old_values = config_lib.to_dict(saved)[section]
        new_values = config_lib.to_dict(new)[section]
        for key in sorted(old_values):
            if key in ("num_workers", "eval_examples"):
                continue
            if old_values[key] != new_values.get(key):
                differences.append(
                    f"{section}.{key}: {old_values[key]!r} -> {new_values.get(key)!r}")
    return differences


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
        read_only=read_only, create=not read_only)
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))


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

    def save(self, step: int, state: Any, data_state: dict | None = None,
             metrics: dict | None = None) -> None:
        """Starts saving ``state`` (a host pytree) and the data iterator state at ``step``."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state or {}))
        self._manager.save(step, args=args, metrics=metrics, force=True)

    def steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """Step with the highest validation score (train.best_metric) so far, or None."""
        self._manager.reload()
        return self._manager.best_step()

    def score(self, step: int) -> float | None:
        """The validation score saved with ``step``, or None when it was saved without one."""
        metrics = self._manager.metrics(step)
        return float(metrics["score"]) if metrics and "score" in metrics else None

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict, int]:
        """Restores (state, data_state, step); the newest readable step when ``step`` is None.

        A checkpoint that fails to read (corrupted or truncated files) is reported and the
        previous one is tried, so one bad write costs one interval of training, not the run.
        """
        candidates = [step] if step is not None else list(reversed(self.steps()))
        if not candidates:
            raise CheckpointError(f"no checkpoint in {self.directory}.")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        for candidate in candidates:
            try:
                restored = self._manager.restore(candidate, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
            except Exception as error:
                if step is not None:
                    raise CheckpointError(
                        f"checkpoint {candidate} in {self.directory} cannot be restored: "
                        f"{_short(error)}") from error
                log.warning("checkpoint %s in %s is unreadable (%s); trying the previous one.",
                            candidate, self.directory, _short(error))
                continue
            _check_shapes(restored.state, target, f"{self.directory}/{candidate}")
            return restored.state, dict(restored.data or {}), candidate
        raise CheckpointError(
            f"none of the checkpoints {candidates} in {self.directory} can be read; start "
            "fresh in a new --workdir.")

    def delete(self, step: int) -> None:
        self._manager.delete(step)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


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
    for step in steps:
        state, _, _ = checkpoints.restore(target, step)
        params = jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), state.params)
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

    Returns:
      (params, step, description of what was restored).
    """
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
    state, _, step = checkpoints.restore(target, step)
    checkpoints.close()
    if use_ema and state.ema_params is None:
        raise CheckpointError("this run kept no EMA of parameters (train.ema_decay was 0).")
    params = state.ema_params if use_ema else state.params
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

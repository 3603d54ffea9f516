"""checkpoint.py: Orbax save/restore, retention, corruption fallback, averaging, run dirs."""

import glob
import logging
import os

import jax
import numpy as np
import pytest

from flax_transformer import checkpoint, config_fields, training
from tests.helpers import micro_config


@pytest.fixture(scope="module")
def host_state():
    return jax.device_get(training.create_train_state(micro_config(), jax.random.key(0)))


def _with_step(state, step):
    params = jax.tree.map(lambda leaf: leaf + step, state.params)
    return state.replace(step=np.int32(step), params=params)


def _save_steps(workdir, state, steps, scores=None, keep=2):
    checkpoints = checkpoint.Checkpoints(workdir, keep=keep)
    for step in steps:
        metrics = {"score": scores[step]} if scores and step in scores else None
        checkpoints.save(step, _with_step(state, step), {"position": step}, metrics)
    checkpoints.wait()
    return checkpoints


def test_round_trip_restores_state_and_data_position(tmp_path, host_state):
    checkpoints = _save_steps(str(tmp_path), host_state, [3])
    restored, data_state, step = checkpoints.restore(host_state)
    assert step == 3 and data_state == {"position": 3} and int(restored.step) == 3
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(_with_step(host_state, 3)),
                         strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_keeps_the_last_k_and_the_best(tmp_path, host_state):
    checkpoints = _save_steps(str(tmp_path), host_state, [1, 2, 3, 4, 5],
                              scores={2: 9.0, 4: 3.0}, keep=2)
    assert checkpoints.steps() == [2, 4, 5]
    assert checkpoints.best_step() == 2


@pytest.mark.parametrize("field", [None, "params"])
def test_corrupted_latest_falls_back_to_previous(tmp_path, host_state, caplog, field):
    checkpoints = _save_steps(str(tmp_path), host_state, [1, 2])
    for path in glob.glob(os.path.join(checkpoints.directory, "2", "state", "**"),
                          recursive=True):
        if os.path.isfile(path) and not path.endswith("_METADATA"):
            with open(path, "wb") as handle:
                handle.write(b"garbage")
    target = host_state if field is None else host_state.params
    restored, data_state, step = checkpoints.restore(target, field=field)
    assert step == 1 and data_state == ({"position": 1} if field is None else {})
    params = restored.params if field is None else restored
    np.testing.assert_array_equal(jax.tree.leaves(params)[0],
                                  jax.tree.leaves(host_state.params)[0] + 1)
    assert "unreadable" in caplog.text
    with pytest.raises(checkpoint.CheckpointError, match="cannot be restored"):
        checkpoints.restore(target, step=2, field=field)


def test_restore_params_reads_the_parameters_alone(tmp_path, host_state, caplog):
    """Inference reads no optimizer state: a target whose optimizer differs (clipping adds
    a state) still gets the parameters, as does the parameters' tree alone; and says
    nothing on the way (decode.py's stderr is for the user)."""
    _save_steps(str(tmp_path), host_state, [1, 2]).close()
    clipped = config_fields.override(micro_config(), {"train.gradient_clip_norm": "1.0"})
    other_optimizer = training.train_state_shapes(clipped)
    assert (jax.tree.structure(other_optimizer.opt_state)
            != jax.tree.structure(host_state.opt_state))
    with pytest.raises(checkpoint.CheckpointError, match="cannot be restored"):
        checkpoint.Checkpoints(str(tmp_path)).restore(other_optimizer, step=2)
    expected = jax.tree.leaves(_with_step(host_state, 2).params)
    caplog.clear()
    caplog.set_level(logging.INFO)
    for target in (other_optimizer, training.param_shapes(micro_config().model)):
        params, step, what = checkpoint.restore_params(str(tmp_path), target, "latest")
        assert (step, what) == (2, "checkpoints/2")
        assert jax.tree.structure(params) == jax.tree.structure(host_state.params)
        for got, want in zip(jax.tree.leaves(params), expected, strict=True):
            np.testing.assert_array_equal(got, want)
    assert [record.getMessage() for record in caplog.records
            if record.levelno >= logging.WARNING] == []


def test_restore_params_gives_the_ema_or_explains_there_is_none(tmp_path, host_state):
    config = config_fields.override(micro_config(), {"train.ema_decay": "0.9"})
    with_ema = host_state.replace(
        ema_params=jax.tree.map(lambda leaf: leaf - 7.0, host_state.params))
    for run, state, kept in (("ema", with_ema, config), ("plain", host_state, micro_config())):
        _save_steps(str(tmp_path / run), state, [1]).close()
        checkpoint.save_config(str(tmp_path / run), kept)
    shapes = training.param_shapes(config.model)
    ema, _, what = checkpoint.restore_params(str(tmp_path / "ema"), shapes, "latest",
                                             use_ema=True)
    assert what == "checkpoints/1 (EMA)"
    for got, want in zip(jax.tree.leaves(ema), jax.tree.leaves(with_ema.ema_params),
                         strict=True):
        np.testing.assert_array_equal(got, want)
    for target in (shapes, host_state):
        with pytest.raises(checkpoint.CheckpointError, match="kept no EMA"):
            checkpoint.restore_params(str(tmp_path / "plain"), target, "latest", use_ema=True)


def test_partially_written_checkpoint_is_never_picked(tmp_path, host_state):
    checkpoints = _save_steps(str(tmp_path), host_state, [1])
    # What a process killed mid-save leaves: Orbax's temporary directory, never renamed.
    partial = os.path.join(checkpoints.directory, "2.orbax-checkpoint-tmp-123")
    os.makedirs(os.path.join(partial, "state"))
    fresh = checkpoint.Checkpoints(str(tmp_path), keep=2)
    assert fresh.steps() == [1]
    assert fresh.restore(host_state)[2] == 1


def test_averaged_params_are_the_mean_of_the_last_checkpoints(tmp_path, host_state):
    _save_steps(str(tmp_path), host_state, [1, 2, 3], keep=3).close()
    averaged, steps = checkpoint.average_params(str(tmp_path), host_state, count=2, keep=3)
    assert steps == [2, 3]
    checkpoint.save_averaged(str(tmp_path), averaged, steps)
    params, _, what = checkpoint.restore_params(str(tmp_path), host_state, "averaged")
    expected = jax.tree.map(lambda leaf: leaf + 2.5, host_state.params)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert what == "averaged/3"


@pytest.mark.parametrize("averaged_score, expected", [(9.0, "averaged/3"), (4.0, "checkpoints/3")])
def test_best_is_the_average_only_when_it_scores_at_least_as_high(
        tmp_path, host_state, averaged_score, expected):
    _save_steps(str(tmp_path), host_state, [1, 2, 3], scores={1: 1.0, 2: 3.0, 3: 5.0},
                keep=3).close()
    averaged, steps = checkpoint.average_params(str(tmp_path), host_state, count=3, keep=3)
    assert steps == [1, 2, 3]
    checkpoint.save_averaged(str(tmp_path), averaged, steps, score=averaged_score)
    params, _, what = checkpoint.restore_params(str(tmp_path), host_state, "best")
    assert what == expected
    offset = 2 if expected.startswith("averaged") else 3  # mean of steps 1, 2, 3 — or step 3
    want = jax.tree.map(lambda leaf: leaf + offset, host_state.params)
    for got, ref in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-6)
    # Averaging again (a finished run rerun) replaces the average under the same step.
    checkpoint.save_averaged(str(tmp_path), averaged, steps, score=0.0)
    assert checkpoint.restore_params(str(tmp_path), host_state, "best")[2] == "checkpoints/3"


def test_restore_params_explains_a_missing_run(tmp_path, host_state):
    with pytest.raises(checkpoint.CheckpointError, match="train first"):
        checkpoint.restore_params(str(tmp_path), host_state)
    with pytest.raises(checkpoint.CheckpointError, match="not a run directory"):
        checkpoint.load_config(str(tmp_path))


def test_config_round_trip_and_differences(tmp_path):
    config = micro_config()
    checkpoint.save_config(str(tmp_path), config)
    assert checkpoint.load_config(str(tmp_path)) == config
    other = config_fields.override(config, {"model.d_ff": "128", "train.num_steps": "7"})
    assert config_fields.config_differences(config, other) == ["model.d_ff: 64 -> 128"]
    # How gradients are computed is not the model: a run may resume with either.
    other = config_fields.override(config, {"model.transposed_weight_gradients": "false"})
    assert config_fields.config_differences(config, other) == []


def test_unwritable_workdir_is_refused_early(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(checkpoint.CheckpointError, match="cannot write"):
        checkpoint.check_writable(str(blocked / "run"))


def test_checkpoint_of_another_model_is_refused_with_the_parameter(tmp_path, host_state):
    checkpoints = _save_steps(str(tmp_path), host_state, [1])
    other_config = config_fields.override(micro_config(), {"model.d_ff": "128"})
    other = jax.device_get(training.create_train_state(other_config, jax.random.key(0)))
    with pytest.raises(checkpoint.CheckpointError, match=r"does not fit the model.*d_ff|hidden"):
        checkpoints.restore(other)

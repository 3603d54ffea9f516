"""loop.py end to end on a small local corpus: training, exact resume, refusals, signals."""

import dataclasses
import itertools
import json
import os

import jax
import numpy as np
import pytest

from flax_transformer import checkpoint, config_fields, data, loop, training
from flax_transformer.data import number_words
from tests.helpers import micro_config


def _write_corpus(directory, seed=0):
    """Small number-words files: 300 train, 20 validation, 20 test pairs."""
    rng = np.random.default_rng(seed)
    numbers = rng.choice(5000, size=340, replace=False)
    splits = {"train": numbers[:300], "valid": numbers[300:320], "test": numbers[320:]}
    for name, values in splits.items():
        for language, render in (("en", number_words.english), ("de", number_words.german)):
            with open(os.path.join(directory, f"{name}.{language}"), "w") as handle:
                handle.write("\n".join(render(int(n)) for n in values) + "\n")
    return directory


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _write_corpus(str(tmp_path_factory.mktemp("corpus")))


def _config(corpus, **train):
    base = micro_config()
    data_config = dataclasses.replace(
        base.data, dataset="parallel_text", train_files=f"{corpus}/train",
        validation_files=f"{corpus}/valid", test_files=f"{corpus}/test",
        tokenizer_sentences=1000, tokens_per_batch=640, max_length=16, bucket_lengths=(16,))
    train_config = dataclasses.replace(
        base.train, **{"num_steps": 6, "log_every": 2, "eval_every": 100,
                       "checkpoint_every": 3, "keep_checkpoints": 5, **train})
    model = dataclasses.replace(base.model, dropout_rate=0.1)
    return dataclasses.replace(base, model=model, data=data_config,
                               train=train_config).validate()


def _params(workdir, config, which="latest"):
    target = jax.device_get(training.create_train_state(config, jax.random.key(0)))
    return checkpoint.restore_params(workdir, target, which)[0]


def test_interrupted_run_resumes_bitwise(corpus, tmp_path):
    straight = str(tmp_path / "straight")
    interrupted = str(tmp_path / "interrupted")
    config = _config(corpus)
    loop.train_and_evaluate(config, straight)
    # Stop after the save at step 3, then rerun the full command on the same workdir.
    loop.train_and_evaluate(config_fields.override(config, {"train.num_steps": "3"}), interrupted)
    loop.train_and_evaluate(config, interrupted)
    for got, want in zip(jax.tree.leaves(_params(interrupted, config)),
                         jax.tree.leaves(_params(straight, config)), strict=True):
        np.testing.assert_array_equal(got, want)
    with open(os.path.join(straight, "metrics.jsonl")) as handle:
        lines = [json.loads(line) for line in handle]
    assert {line["split"] for line in lines} == {"train", "validation"}
    assert os.path.exists(os.path.join(straight, "tokenizer.model"))
    assert checkpoint.load_config(straight) == config
    assert os.listdir(os.path.join(straight, "tensorboard"))


def test_reusing_host_memory_changes_no_number(corpus, tmp_path):
    """train.reuse_host_memory changes only where a step's buffers come from: reuse turns
    on at the first log (step 2), off around the evaluation (4) and saves (3, 6), off at
    the end; parameters and logged metrics are those of a run with glibc's defaults."""
    config = _config(corpus, eval_every=4)
    reusing = config_fields.override(config, {"train.reuse_host_memory": "true"})
    logged = {}
    for name, run_config in (("defaults", config), ("reusing", reusing)):
        loop.train_and_evaluate(run_config, str(tmp_path / name))
        with open(tmp_path / name / "metrics.jsonl") as handle:
            logged[name] = [{key: value for key, value in json.loads(line).items()
                             if key not in ("time", "tokens_per_second",
                                            "model_tflops_per_second")}
                            for line in handle]
    assert logged["reusing"] == logged["defaults"]
    assert any(line["split"] == "validation" and line["step"] == 4
               for line in logged["reusing"])
    for got, want in zip(jax.tree.leaves(_params(str(tmp_path / "reusing"), config)),
                         jax.tree.leaves(_params(str(tmp_path / "defaults"), config)),
                         strict=True):
        np.testing.assert_array_equal(got, want)


def test_average_last_is_scored_on_validation_and_can_become_best(corpus, tmp_path):
    workdir = str(tmp_path / "run")
    config = _config(corpus, checkpoint_every=2, average_last=3, eval_every=2)
    loop.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as handle:
        lines = [json.loads(line) for line in handle]
    scored = [line for line in lines if line["split"] == "validation_averaged"]
    assert len(scored) == 1 and scored[0]["step"] == 6
    target = jax.device_get(training.create_train_state(config, jax.random.key(0)))
    averaged = checkpoint.Checkpoints(workdir, keep=1, async_save=False, subdir="averaged")
    assert averaged.steps() == [6]
    assert averaged.score(6) == pytest.approx(scored[0][config.train.best_metric])
    expected, _ = checkpoint.average_params(workdir, target, 3, config.train.keep_checkpoints)
    for got, want in zip(jax.tree.leaves(_params(workdir, config, "averaged")),
                         jax.tree.leaves(expected.params), strict=True):
        np.testing.assert_array_equal(got, want)
    # "best" is whichever of the average and the best checkpoint scored higher.
    checkpoints = checkpoint.Checkpoints(workdir, async_save=False)
    best_single = checkpoints.score(checkpoints.best_step())
    what = checkpoint.restore_params(workdir, target, "best")[2]
    assert what == ("averaged/6" if averaged.score(6) >= best_single
                    else f"checkpoints/{checkpoints.best_step()}")


def test_next_batch_after_resume_equals_uninterrupted(corpus, tmp_path):
    config = _config(corpus)
    splits = data.load_splits(config.data, str(tmp_path))
    tokenizer = data.get_tokenizer(config.data, str(tmp_path), splits["train"])
    straight = data.train_batches(splits["train"], tokenizer, config.data, 1)
    expected = [next(straight) for _ in range(5)][-1]
    first = data.train_batches(splits["train"], tokenizer, config.data, 1)
    for _ in range(4):
        next(first)
    resumed = data.train_batches(splits["train"], tokenizer, config.data, 1)
    resumed.set_state(json.loads(json.dumps(first.get_state())))
    got = next(resumed)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


def test_different_model_config_is_refused_then_fresh_moves_it_aside(corpus, tmp_path):
    workdir = str(tmp_path / "run")
    config = _config(corpus, num_steps=2, checkpoint_every=2)
    loop.train_and_evaluate(config, workdir)
    changed = config_fields.override(config, {"model.d_ff": "32"})
    with pytest.raises(loop.TrainingError, match=r"model.d_ff: 64 -> 32"):
        loop.train_and_evaluate(changed, workdir)
    loop.train_and_evaluate(changed, workdir, fresh=True)
    assert checkpoint.load_config(workdir) == changed
    assert any(name.startswith("run.old-") for name in os.listdir(tmp_path))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(corpus, tmp_path):
    workdir = str(tmp_path / "nan")
    config = _config(corpus, num_steps=2, checkpoint_every=2)
    loop.train_and_evaluate(config, workdir)
    # A learning rate this large overflows the parameters within a few steps.
    exploding = config_fields.override(config, {"train.num_steps": "40",
                                             "train.learning_rate_scale": "1e30"})
    with pytest.raises(loop.TrainingError, match=r"not finite"):
        loop.train_and_evaluate(exploding, workdir)
    assert checkpoint.Checkpoints(workdir).latest_step() == 2


def test_logged_model_flops_are_flops_per_step_times_steps_per_second(corpus, tmp_path):
    """The logged FLOP rate is train_flops_per_step of the step's global shape × steps/s,
    with steps/s read independently from the times the log records were written."""
    workdir = str(tmp_path / "flops")
    config = _config(corpus, num_steps=30, log_every=10, eval_every=1000,
                     checkpoint_every=1000, peak_flops=1e12)
    # Steps long enough (8,192 tokens) that the logging between two records, which the
    # records' times include and the logged interval does not, stays far below 5 %.
    model = dataclasses.replace(config.model, d_model=64, d_ff=256)
    config = dataclasses.replace(config, model=model,
                                 data=dataclasses.replace(config.data, tokens_per_batch=8192))
    loop.train_and_evaluate(config.validate(), workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as handle:
        train = [line for line in map(json.loads, handle) if line["split"] == "train"]
    assert [line["step"] for line in train] == [10, 20, 30]
    rows = config.data.tokens_per_batch // (2 * 16)   # one bucket (16): every batch [B, 16]
    per_step = training.train_flops_per_step(config.model, rows, 16, 16)
    for previous, line in itertools.pairwise(train):   # the first interval also compiles
        steps_per_second = (line["step"] - previous["step"]) / (line["time"] - previous["time"])
        expected = per_step * steps_per_second
        assert line["model_tflops_per_second"] * 1e12 == pytest.approx(expected, rel=0.05)
        assert line["mfu"] == pytest.approx(line["model_tflops_per_second"] * 1e12 / 1e12)


def test_a_resume_keeps_the_layer_layout_its_checkpoints_have(corpus, tmp_path, capsys):
    """A scanned run resumed with scan_layers off continues in its own layout, says so,
    and ends as the uninterrupted run does."""
    config = _config(corpus)
    scanned = dataclasses.replace(config, model=dataclasses.replace(
        config.model, num_decoder_layers=2, scan_layers=True))
    unrolled = dataclasses.replace(scanned, model=dataclasses.replace(
        scanned.model, scan_layers=False))
    straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
    loop.train_and_evaluate(scanned, straight)
    loop.train_and_evaluate(config_fields.override(scanned, {"train.num_steps": "3"}),
                            interrupted)
    capsys.readouterr()
    loop.train_and_evaluate(unrolled, interrupted)
    assert "resuming in the run's own parameter layout: model.scan_layers=True" in (
        capsys.readouterr().out)
    assert checkpoint.load_config(interrupted).model.scan_layers
    params = _params(interrupted, scanned)
    assert set(params["decoder"]) == {"layers"}
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(_params(straight, scanned)),
                         strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_run_saved_before_kernel_layout_resumes_with_its_in_out_kernels(corpus, tmp_path,
                                                                         capsys):
    """A config.json without model.kernel_layout (runs before 2026-12-03) means [I, O]
    kernels: resumed under today's default ("out_in") it continues with them, says so,
    and ends as the uninterrupted run does."""
    config = _config(corpus)
    assert config.model.kernel_layout == "out_in"
    old = dataclasses.replace(config, model=dataclasses.replace(
        config.model, kernel_layout="in_out"))
    straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
    loop.train_and_evaluate(old, straight)
    loop.train_and_evaluate(config_fields.override(old, {"train.num_steps": "3"}),
                            interrupted)
    path = checkpoint.config_path(interrupted)
    with open(path) as handle:
        saved = json.load(handle)
    del saved["model"]["kernel_layout"]                   # as an older version wrote it
    with open(path, "w") as handle:
        json.dump(saved, handle)
    assert checkpoint.load_config(interrupted).model.kernel_layout == "in_out"
    capsys.readouterr()
    loop.train_and_evaluate(config, interrupted)
    assert ("resuming in the run's own parameter layout: model.kernel_layout='in_out'"
            in capsys.readouterr().out)
    params = _params(interrupted, old)
    kernel = params["decoder"]["layer_0"]["feed_forward"]["hidden"]["kernel"]
    assert kernel.shape == (old.model.d_model, old.model.d_ff)           # [I, O]
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(_params(straight, old)),
                         strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_tokenizer_smaller_than_the_vocabulary_is_noted_with_the_flags_that_fit(capsys):
    config = micro_config()
    rows = config.model.vocab_size
    loop._note_unused_rows(rows, config)
    assert capsys.readouterr().out == ""
    loop._note_unused_rows(rows - 10, config)
    out = capsys.readouterr().out
    assert f"the tokenizer has {rows - 10} pieces and the model {rows}" in out
    assert "other 10 are never trained nor emitted" in out
    assert f"--config.model.vocab_size={rows - 10} --config.data.vocab_size={rows - 10}" in out

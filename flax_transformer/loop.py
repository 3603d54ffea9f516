"""The training loop: data → compiled steps → metrics, evaluation and checkpoints.

``train_and_evaluate(config, workdir)`` is what ``train.py`` calls. Running it again on the
same workdir resumes exactly where the last checkpoint left off (parameters, optimizer,
step, data iterator); SIGTERM/SIGINT save a checkpoint and return cleanly (stopping.py).
``main`` then writes the test report (report.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import time
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from flax_transformer import (
    checkpoint,
    config_fields,
    data,
    evaluation,
    parallel,
    report,
    stopping,
    training,
)
from flax_transformer.config import Config

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot start or cannot go on; the message says why and what to do."""


@dataclasses.dataclass
class _Run:
    """What the loop carries between steps (host-side only)."""

    config: Config
    workdir: str
    strategy: Any
    checkpoints: checkpoint.Checkpoints
    train_batches: Any
    evaluator: evaluation.Evaluator
    root_rng: jax.Array
    stop: stopping.Stop
    saved_config: Config | None = None
    writer: Any = None
    step: int = 0
    last_batch_shape: tuple[int, int, int] = (1, 1, 1)   # global (B, S, T)
    interval_flops: float = 0.0   # model FLOPs of the steps since the last train log
    last_eval: dict = dataclasses.field(default_factory=dict)


def prepare_workdir(config: Config, workdir: str, fresh: bool = False) -> Config | None:
    """Checks the workdir can be written and holds no run it cannot resume.

    Changes nothing in a run directory (config.json is written once the restore it
    depends on has succeeded); ``fresh`` moves a run of another config aside.

    Returns:
      the config saved in the workdir (None for a new run).
    """
    checkpoint.check_writable(workdir)
    if not os.path.exists(checkpoint.config_path(workdir)):
        return None
    saved = checkpoint.load_config(workdir)
    accepted, refused = config_fields.train_changes(saved, config)
    differences = config_fields.config_differences(saved, config) + refused
    if differences and not fresh:
        raise TrainingError(
            f"{workdir!r} holds a run with a different config ({'; '.join(differences)}); "
            "its checkpoints cannot continue under the new one. Use another --workdir, or "
            "pass --fresh to move the old run aside and start over.")
    if differences:
        backup = f"{workdir.rstrip('/')}.old-{time.strftime('%Y%m%d-%H%M%S')}"
        checkpoint.unlock_workdir(workdir)  # the lock file moves with the old run
        shutil.move(workdir, backup)
        log.warning("moved the previous run to %s", backup)
        checkpoint.check_writable(workdir)
        if jax.process_index() == 0:
            checkpoint.lock_workdir(workdir)
        return None
    if accepted and jax.process_index() == 0:
        print(f"resuming with changed training settings: {'; '.join(accepted)}")
    return saved


def load_data(config: Config, workdir: str) -> tuple[dict, Any]:
    """Splits and tokenizer; process 0 prepares them first, the others then read them."""
    def load():
        if config.model.monolingual:
            splits = data.load_text_splits(config.data, workdir)
        else:
            splits = data.load_splits(config.data, workdir)
        symbols = (data.MASK_PIECE,) if config.model.kind == "encoder_only" else ()
        return splits, data.get_tokenizer(config.data, workdir, splits["train"], symbols)
    loaded = load() if jax.process_index() == 0 else None
    parallel.barrier("data prepared")
    return loaded or load()


def _batch_data(config: Config) -> Any:
    """The data config batches are planned with (one-sided rows for the monolingual kinds)."""
    return data.batch_config(config.data) if config.model.monolingual else config.data


def _setup(config: Config, workdir: str, stop: stopping.Stop) -> _Run:
    splits, tokenizer = load_data(config, workdir)
    _warn_skipped(splits)
    # A small corpus may yield fewer pieces than asked for; more would overflow the embedding.
    if tokenizer.vocab_size > config.model.vocab_size:
        raise TrainingError(
            f"the tokenizer in {workdir} has {tokenizer.vocab_size} pieces but "
            f"model.vocab_size={config.model.vocab_size}; use a fresh --workdir.")
    _note_unused_rows(tokenizer.vocab_size, config)
    strategy = parallel.make_strategy(config)
    train_batches = data.train_batches(
        splits["train"], tokenizer, _batch_data(config), batch_multiple=strategy.batch_multiple,
        process_index=jax.process_index(), process_count=jax.process_count())
    validation = evaluation.first_examples(splits["validation"], config.eval.max_examples)
    evaluator = evaluation.Evaluator(config, validation, tokenizer, strategy)
    return _Run(config=config, workdir=workdir, strategy=strategy,
                checkpoints=checkpoint.Checkpoints(workdir, config.train.keep_checkpoints),
                train_batches=train_batches, evaluator=evaluator, stop=stop,
                # rbg keys; dropout's bits come from random_bits, so the kind only
                # changes make_rng's fold_in (all kinds cost the same, benchmarks/).
                root_rng=jax.random.key(config.train.seed, impl="rbg"))


def _note_unused_rows(pieces: int, config: Config) -> None:
    """Says when the tokenizer has fewer pieces than the model has rows (a small corpus:
    base on number_words has 625 of 37,000): the rest are never trained nor emitted
    (decoding masks them), but they cost parameters and softmax time."""
    unused = config.model.vocab_size - pieces
    if unused <= 0 or jax.process_index() != 0:
        return
    print(f"note: the tokenizer has {pieces} pieces and the model {config.model.vocab_size} "
          f"vocabulary rows; the other {unused} are never trained nor emitted. "
          f"--config.model.vocab_size={pieces} --config.data.vocab_size={pieces} "
          "in a fresh --workdir would drop them.")


def _warn_skipped(splits: dict) -> None:
    """Says how many pairs the data preparation left out (empty sides, invalid UTF-8)."""
    for name, pairs in splits.items():
        counts = {why: n for why, n in dict(getattr(pairs, "skipped", {})).items() if n}
        if counts and jax.process_index() == 0:
            print(f"warning: {sum(counts.values())} {name} pair(s) left out ("
                  + ", ".join(f"{why}: {n}" for why, n in sorted(counts.items())) + ")")


def _initial_state(run: _Run) -> Any:
    """A fresh state, or the newest readable checkpoint (with the data iterator state)."""
    if run.checkpoints.latest_step() is None:
        init_rng = jax.random.fold_in(run.root_rng, 0)
        return jax.device_get(training.create_train_state(run.config, init_rng))
    # Resuming: the restore target needs shapes only (building real initial parameters op
    # by op, to be overwritten, costs seconds of start-up: 8 s at base).
    state = training.train_state_shapes(run.config)
    wants_ema = state.ema_params is not None
    saved_ema = run.saved_config.train.ema_decay > 0 if run.saved_config else wants_ema
    restored, data_state, step = run.checkpoints.restore(
        _with_ema(state, saved_ema), move_damaged=jax.process_index() == 0)
    state = _with_ema(restored, wants_ema)
    run.train_batches.set_state(data_state)
    run.step = int(step)
    log.info("resumed from %s/%d", run.checkpoints.directory, step)
    return state


def _with_ema(state: Any, on: bool) -> Any:
    """``state`` with an EMA (starting from its parameters when it had none) or without."""
    if not on:
        return state.replace(ema_params=None)
    return state if state.ema_params is not None else state.replace(ema_params=state.params)


def _start_writing(run: _Run) -> None:
    """After a successful restore: the run's config.json and its metrics writer."""
    from flax_transformer.metrics_writer import MetricsWriter

    if jax.process_index() == 0:
        checkpoint.save_config(run.workdir, run.config)
    run.writer = MetricsWriter(run.workdir, enabled=jax.process_index() == 0)


def _announce(run: _Run) -> None:
    config = run.config
    print(f"flax_transformer: preset {config.name!r}, "
          f"{training.parameter_count(config.model) / 1e6:.2f} M parameters, "
          f"{run.strategy.name} over {parallel.describe_devices()}")
    describe = data.describe_text if config.model.monolingual else data.describe
    print(f"data: {describe(config.data)}; "
          f"{config.data.tokens_per_batch} tokens per batch; workdir {run.workdir}")
    length = config.data.max_length
    rows = max(_batch_data(config).tokens_per_batch // (2 * length), 1)
    flops = training.train_flops_per_step(config.model, rows, length, length)
    peak = config.train.peak_flops
    print(f"model FLOPs per step: {flops / 1e9:.1f} GFLOP for a full [{rows}, {length}] batch; "
          + (f"MFU against a peak of {peak / 1e12:.3g} TFLOP/s is logged" if peak else
             "set --config.train.peak_flops (benchmarks/peak.py measures it) to log MFU"))
    if run.step:
        print(f"resuming at step {run.step} of {config.train.num_steps}")


def _save(run: _Run, state: Any, metrics: dict | None = None) -> None:
    host_state = run.strategy.get_state(state)
    if not all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(host_state.params)):
        raise TrainingError(
            f"parameters are not finite at step {run.step}; not saving. The last good "
            f"checkpoint is step {run.checkpoints.latest_step()}.")
    run.checkpoints.save(run.step, host_state, run.train_batches.get_state(), metrics)


def _log_train(run: _Run, metrics: Any, seconds: float, tokens: int, bar: tqdm) -> None:
    summary = training.summarize(run.strategy.metrics(metrics))
    if not all(math.isfinite(value) for value in summary.values()):
        raise TrainingError(
            f"the training loss became {summary['loss']} at step {run.step} (not finite). "
            f"The last good checkpoint is step {run.checkpoints.latest_step()}; lower "
            "train.learning_rate_scale or set train.gradient_clip_norm and resume.")
    schedule = training.learning_rate_schedule(run.config.train, run.config.model.d_model)
    summary["learning_rate"] = float(schedule(run.step - 1))
    summary["tokens_per_second"] = tokens / max(seconds, 1e-9)
    summary.update(_mfu(run, run.interval_flops, seconds))
    run.interval_flops = 0.0
    run.writer.write(run.step, "train", summary)
    bar.set_postfix(loss=f"{summary['loss']:.3f}", lr=f"{summary['learning_rate']:.2e}",
                    tok_s=f"{summary['tokens_per_second']:.0f}", refresh=False)


def _mfu(run: _Run, flops: float, seconds: float) -> dict[str, float]:
    """Model FLOP/s (and utilisation when the peak is configured) of the last interval.

    Args:
      flops: train_flops_per_step summed over the interval's steps, each at the padded
        global shape it ran with (what the hardware computed, padding included).
      seconds: wall time of those steps.
    """
    model_flops = flops / max(seconds, 1e-9)
    result = {"model_tflops_per_second": model_flops / 1e12}
    if run.config.train.peak_flops > 0:
        result["mfu"] = model_flops / run.config.train.peak_flops
    return result


def _evaluate(run: _Run, state: Any) -> dict:
    with run.stop.interruptible():
        results = run.evaluator.evaluate(state)
    run.writer.write(run.step, "validation", results)
    run.last_eval = results
    if jax.process_index() == 0:
        tqdm.write(f"step {run.step}: " + ", ".join(
            f"{name} {value:.4g}" for name, value in results.items()
            if isinstance(value, float)))
    return results


def _train_steps(run: _Run, state: Any) -> Any:
    """Runs steps until num_steps or a stop request; evaluates, logs and saves on schedule."""
    train = run.config.train
    with tqdm(total=train.num_steps, initial=run.step, desc="train", unit="step",
              disable=jax.process_index() != 0, dynamic_ncols=True) as bar:
        try:
            return _steps_until_done(run, state, bar)
        finally:
            parallel.reuse_freed_host_memory(False)


def _steps_until_done(run: _Run, state: Any, bar: tqdm) -> Any:
    train = run.config.train
    interval_metrics, interval_tokens, interval_start = None, 0, time.perf_counter()
    reusing = False
    while run.step < train.num_steps and not run.stop.requested:
        batch = next(run.train_batches)
        rng = parallel.step_rng(run.root_rng, run.step + 1)
        state, metrics = run.strategy.train_step(state, run.strategy.put_batch(batch), rng)
        if reusing:   # one step in flight, so that its temporaries are free for the next
            jax.block_until_ready(metrics)
        run.step += 1
        bar.update(1)
        interval_metrics = training.add_metrics(interval_metrics, metrics)
        interval_tokens += int(np.count_nonzero(batch["target_output"])) * jax.process_count()
        run.last_batch_shape = (batch["source"].shape[0] * jax.process_count(),
                                batch["source"].shape[1], batch["target_output"].shape[1])
        run.interval_flops += training.train_flops_per_step(run.config.model,
                                                            *run.last_batch_shape)
        if run.step % train.log_every == 0 or run.step == train.num_steps:
            jax.block_until_ready(interval_metrics)   # time the steps, not their dispatch
            _log_train(run, interval_metrics, time.perf_counter() - interval_start,
                       interval_tokens, bar)
            interval_metrics, interval_tokens = None, 0
            if train.reuse_host_memory and not reusing:   # the first compilations are done
                reusing = parallel.reuse_freed_host_memory(True)   # (evaluations restore it)
            interval_start = time.perf_counter()
        evaluating = run.step % train.eval_every == 0 or run.step == train.num_steps
        if evaluating or run.step % train.checkpoint_every == 0 or run.stop.requested:
            with parallel.freed_host_memory_returned():   # their compilations and copies
                _evaluate_and_save(run, state, evaluating)
    return state


def _evaluate_and_save(run: _Run, state: Any, evaluating: bool) -> None:
    """Saves a checkpoint, after an evaluation that scores it when ``evaluating``."""
    metrics_for_save = None
    if evaluating:
        with contextlib.suppress(stopping.StopRequested):  # saved below, without a score
            metrics_for_save = {"score": evaluation.score(_evaluate(run, state),
                                                          run.config.train.best_metric)}
    _save(run, state, metrics_for_save)


def train_and_evaluate(config: Config, workdir: str, fresh: bool = False) -> dict:
    """Trains (or resumes) the run in ``workdir``; returns the last evaluation results
    (empty when a stop request ended it early)."""
    config.validate()
    if config.train.reuse_host_memory:
        parallel.prepare_host_memory_reuse()   # before _lock starts the backend
    stop = stopping.Stop()
    checkpoint.check_writable(workdir)
    previous_handlers = stopping.install_signal_handlers(stop)
    try:
        _lock(workdir)
    except BaseException:
        stopping.restore_handlers(previous_handlers)
        raise
    try:
        return _train_locked(config, workdir, fresh, stop)
    except stopping.StopRequested:
        print("stopped before training went on; nothing lost. Run the same command to "
              "continue.")
        return {}
    finally:
        stopping.restore_handlers(previous_handlers)
        if jax.process_index() == 0:
            checkpoint.unlock_workdir(workdir)


def _saved_layout(config: Config, saved: Config | None) -> Config:
    """A resumed run keeps the parameter layout its checkpoints were written in.

    ``model.scan_layers`` stores the same parameters stacked or one layer at a time, and
    ``model.kernel_layout`` each Dense kernel as [O, I] or [I, O]; the checkpoints (and
    their averages) of one run share one layout, so a resume asking for another one
    continues in the saved one, and says so.
    """
    if saved is None:
        return config
    kept = {field: getattr(saved.model, field) for field in ("scan_layers", "kernel_layout")
            if getattr(saved.model, field) != getattr(config.model, field)}
    if not kept:
        return config
    if jax.process_index() == 0:
        asked = ", ".join(f"{field}={getattr(config.model, field)!r}" for field in kept)
        print("resuming in the run's own parameter layout: " + ", ".join(
            f"model.{field}={value!r}" for field, value in kept.items())
            + f" (as saved; for {asked}, start a new run in another --workdir)")
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **kept))


def _lock(workdir: str) -> None:
    """One training job per workdir: process 0 holds the lock for all processes."""
    error = None
    if jax.process_index() == 0:
        try:
            checkpoint.lock_workdir(workdir)
        except checkpoint.CheckpointError as caught:
            error = caught
    if not parallel.all_processes_ok(error is None):
        raise error or TrainingError(f"process 0 could not lock {workdir!r}; see its output.")


def _train_locked(config: Config, workdir: str, fresh: bool, stop: stopping.Stop) -> dict:
    saved = prepare_workdir(config, workdir, fresh)
    config = _saved_layout(config, saved)
    with stop.interruptible():
        run = _setup(config, workdir, stop)
    run.saved_config = saved
    state = run.strategy.put_state(_initial_state(run))   # the host copy is dropped here
    parallel.release_freed_host_memory()
    _start_writing(run)
    _announce(run)
    try:
        state = _train_steps(run, state)
        with run.stop.interruptible():
            if not run.last_eval:  # resumed a finished run
                _evaluate(run, state)
            if config.train.average_last > 1:
                _average_last(run)
    except stopping.StopRequested:
        pass
    finally:
        try:
            run.checkpoints.wait()
        finally:
            run.writer.close()
    run.checkpoints.close()
    if run.stop.requested:
        print(f"stopped at step {run.step}; checkpoint saved. Run the same command to resume.")
        return {}
    return run.last_eval


def _average_last(run: _Run) -> None:
    """Averages the last train.average_last checkpoints, scores the average on validation
    and saves it with that score (``restore_params("best")`` prefers it when not worse)."""
    train = run.config.train
    run.checkpoints.wait()
    averaged, steps = checkpoint.average_params(run.workdir,
                                                training.train_state_shapes(run.config),
                                                train.average_last,
                                                train.keep_checkpoints)
    results = run.evaluator.evaluate(run.strategy.put_state(averaged))
    run.writer.write(run.step, "validation_averaged", results)
    score = evaluation.score(results, train.best_metric)
    checkpoint.save_averaged(run.workdir, averaged, steps, score)
    best_step = run.checkpoints.best_step()
    best = run.checkpoints.score(best_step) if best_step is not None else None
    chosen = ("the average" if checkpoint.averaged_is_best(run.workdir)
              else f"checkpoint {best_step}")
    sign = -1 if train.best_metric in evaluation.LOWER_IS_BETTER else 1  # scores -> values
    print(f"averaged checkpoints {steps} into {run.workdir}/averaged/{steps[-1]}: validation "
          f"{train.best_metric} {sign * score:.4g}, best single checkpoint "
          f"{'n/a' if best is None else f'{sign * best:.4g}'}; 'best' (test report, "
          f"decode.py) is {chosen}.")


USER_ERRORS = (TrainingError, checkpoint.CheckpointError, data.DataError, FileNotFoundError)


def _report_or_stop(config: Config, workdir: str) -> dict | None:
    """The test report, ended at once (None) by a stop request."""
    stop = stopping.Stop()
    previous_handlers = stopping.install_signal_handlers(stop)
    try:
        with stop.interruptible():
            # Every process takes part: Orbax restores are collective across processes.
            splits, tokenizer = load_data(config, workdir)
            return report.report_test(config, workdir, splits, tokenizer,
                                      verbose=jax.process_index() == 0)
    except stopping.StopRequested:
        print("stopped during the test report; training is complete. Run the same command "
              "to write the report.")
        return None
    finally:
        stopping.restore_handlers(previous_handlers)


def main(config: Config, workdir: str, fresh: bool = False) -> dict:
    """train.py's job: train (or resume), then report on the test split and suggest decoding."""
    start = time.perf_counter()
    results = train_and_evaluate(config, workdir, fresh)
    if not results:  # stopped early by a signal
        return results
    test_results = {}
    if config.eval.test_report != "off":
        test_results = _report_or_stop(config, workdir)
        if test_results is None:
            return {}
    results = {**results, **test_results}
    results["wall_seconds"] = time.perf_counter() - start
    if jax.process_index() != 0:
        return results
    checkpoint.save_json(os.path.join(workdir, "results.json"), results)
    print(f"\ndone in {results['wall_seconds']:.0f} s.", end="")
    print(f" Try it:\n  python decode.py --workdir {workdir} --input "
          f"\"{_example_input(config)}\"")
    return results


def _example_input(config: Config) -> str:
    """A line to try decode.py with: a sentence, a prompt, or a line with <mask>."""
    examples = {"encoder_decoder": ("four hundred twenty-one thousand three hundred seven",
                                    "A man is riding a bicycle."),
                "decoder_only": ("drei", "Ein Mann"),
                "encoder_only": (f"neunhundert{data.MASK_PIECE}",
                                 f"Ein Mann fährt {data.MASK_PIECE} Fahrrad.")}
    number_words, other = examples[config.model.kind]
    return number_words if config.data.dataset == "number_words" else other

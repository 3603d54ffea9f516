"""What decode.py runs: restore a run, translate lines, score them, draw attention.

    restored = inference.restore("runs/default", which="best")
    result = inference.translate_lines(restored, ["twenty-one"], restored.config.decode)
    result.translations                                   # ["einundzwanzig"]

``run(DecodeRequest(...))`` is the whole command: read input, translate in bucketed batches
(compiled once per bucket), write output, print sacreBLEU/chrF and write the heatmaps.
Every user mistake surfaces as an ``InferenceError``, ``checkpoint.CheckpointError`` or
``config.ConfigError`` with one sentence saying what to do (``DECODE_USER_ERRORS``).
The searches and their batching live in ``translate.py``; this module is files and runs.
Runs of the other model kinds are dispatched on ``config.model.kind`` to
``language_model.py`` (decoder_only: continue prompts) and ``fill_mask.py`` (encoder_only:
fill ``<mask>``), after ``check_flags_fit``/``check_lines_fit`` refuse what the kind
cannot do.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import os
import sys
from collections.abc import Sequence
from typing import IO, Any

import jax
import numpy as np
from tqdm.auto import tqdm

from flax_transformer import (
    checkpoint,
    config_fields,
    data,
    evaluation,
    fill_mask,
    language_model,
    plots,
    preflight,
    training,
    translate,
)
from flax_transformer import config as config_lib
from flax_transformer.data import batching
from flax_transformer.model import Transformer


class InferenceError(ValueError):
    """Input that decode.py cannot use; the message says what was wrong and what to do."""


DECODE_USER_ERRORS = (InferenceError, checkpoint.CheckpointError, config_lib.ConfigError,
                      preflight.PreflightError, data.DataError)


# --------------------------------------------------------------------------- restoring


@dataclasses.dataclass(frozen=True)
class Restored:
    """A run ready to decode: its config, tokenizer, model and parameters."""

    config: config_lib.Config
    tokenizer: data.Tokenizer
    model: Any            # the module of config.model.kind (Transformer, DecoderOnly, …)
    params: Any
    description: str      # what was restored, e.g. "checkpoints/300"


def load_tokenizer(workdir: str, config: config_lib.Config) -> data.Tokenizer:
    """WORKDIR/tokenizer.model, checked against the model's vocabulary size."""
    path = os.path.join(workdir, data.tokenizer.FILE_NAME)
    if not os.path.exists(path):
        raise InferenceError(f"{path} not found: {workdir!r} holds no tokenizer; pass the "
                             "--workdir that train.py wrote to.")
    tokenizer = data.Tokenizer.load(path)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise InferenceError(
            f"{path} has {tokenizer.vocab_size} pieces but the run's model.vocab_size is "
            f"{config.model.vocab_size}: the tokenizer belongs to another run. Copy back the "
            "run's own tokenizer.model.")
    return tokenizer


def saved_config(workdir: str) -> config_lib.Config:
    """WORKDIR/config.json, or an InferenceError when the workdir does not exist."""
    if not os.path.isdir(workdir):
        raise InferenceError(f"workdir {workdir!r} does not exist; pass the --workdir that "
                             "train.py wrote to.")
    return checkpoint.load_config(workdir)


def restore(workdir: str, which: str = "best", use_ema: bool = False) -> Restored:
    """Config, tokenizer and parameters of a run directory.

    Args:
      workdir: a run directory written by train.py.
      which: "best", "latest", "averaged" or a step number.
      use_ema: restore the exponential moving average of the parameters.
    """
    config = saved_config(workdir)
    tokenizer = load_tokenizer(workdir, config)
    params, _, description = checkpoint.restore_params(
        workdir, training.train_state_shapes(config), which, use_ema)
    model = training.KINDS[config.model.kind].module(config.model)
    return Restored(config=config, tokenizer=tokenizer, model=model,
                    params=params, description=description)


# --------------------------------------------------------------------------- reading text


def split_lines(raw: bytes, name: str) -> list[str]:
    """UTF-8 bytes -> one string per line ("\\n" or "\\r\\n" ends a line).

    Raises:
      InferenceError: naming the first line that is not UTF-8.
    """
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()   # the newline that ends the last line
    texts = []
    for number, line in enumerate(lines, start=1):
        try:
            texts.append(line.decode("utf-8").removesuffix("\r"))
        except UnicodeDecodeError as error:
            raise InferenceError(
                f"{name} line {number} is not UTF-8 ({error.reason} at byte {error.start}); "
                "convert the file to UTF-8 (e.g. iconv -t UTF-8).") from error
    return texts


def read_text_file(path: str) -> list[str]:
    """The lines of a UTF-8 text file, plain or gzip'd (``.gz``); a clear error if it is
    missing, not gzip despite its name, or not UTF-8."""
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as handle:
            return split_lines(handle.read(), path)
    except OSError as error:  # gzip.BadGzipFile is an OSError too
        raise InferenceError(f"cannot read {path!r}: {error.strerror or error}.") from error


def read_stream(stream: IO) -> list[str]:
    """The lines of a text or binary stream (stdin)."""
    raw = getattr(stream, "buffer", stream).read()
    return split_lines(raw if isinstance(raw, bytes) else raw.encode("utf-8"), "<stdin>")


# --------------------------------------------------------------------------- translating


@functools.lru_cache(maxsize=8)
def _translate_fn(model: Transformer, decode_config: config_lib.DecodeConfig, bos_id: int,
                  eos_id: int, pad_id: int):
    """One compiled search per (model, search): repeated calls reuse its compilations."""
    return translate.make_translate_fn(model, decode_config, bos_id=bos_id, eos_id=eos_id,
                                       pad_id=pad_id)


@dataclasses.dataclass(frozen=True)
class Translations:
    """Outputs of translate_lines, in input order."""

    translations: list[str]      # the best (or only) hypothesis of each input
    sources: list[list[int]]     # the encoded inputs, EOS included (empty for empty lines)
    outputs: list[list[int]]     # the best output's ids, without EOS (Tokenizer.content_ids)
    truncated: int               # lines cut to the model's max_length
    hypotheses: list[list[str]]  # N per input: decode.nbest (beam), num_samples or 1
    log_probs: list[list[float]]  # log P of each hypothesis under the model
    scores: list[list[float]]    # log P / lp(|Y|) with decode.length_penalty (GNMT)


def translate_lines(restored: Restored, lines: Sequence[str],
                    decode_config: config_lib.DecodeConfig,
                    progress: bool = False) -> Translations:
    """Translates lines in batches of decode_config.tokens_per_batch source tokens.

    Sources are padded to power-of-two buckets up to model.max_length, so a file compiles
    at most a handful of times; lines longer than model.max_length tokens are truncated.
    """
    tokenizer, max_length = restored.tokenizer, restored.config.model.max_length
    sources, truncated = translate.encode_sources(tokenizer, lines, max_length)
    translate_fn = _translate_fn(restored.model, decode_config, tokenizer.bos_id,
                                 tokenizer.eos_id, tokenizer.pad_id)
    with tqdm(total=len(lines), desc="decode", unit="line", file=sys.stderr,
              disable=not progress) as bar:
        rows = translate.translate_all(
            translate_fn, restored.params, sources,
            buckets=batching.bucket_lengths((), max_length),
            tokens_per_batch=decode_config.tokens_per_batch, pad_id=tokenizer.pad_id,
            rng=jax.random.key(decode_config.seed), on_batch=bar.update)
    hypotheses = [[tokenizer.decode(row) for row in found.tokens] for found in rows]
    return Translations(
        translations=[texts[0] for texts in hypotheses], sources=sources,
        outputs=[tokenizer.content_ids(found.tokens[0]) for found in rows],
        truncated=truncated, hypotheses=hypotheses,
        log_probs=[found.log_probs.tolist() for found in rows],
        scores=[found.scores.tolist() for found in rows])


# --------------------------------------------------------------------------- scoring, plots


def check_counts(input_count: int, references: Sequence[str], reference_name: str) -> None:
    """One reference per input line, or an InferenceError saying both counts."""
    if input_count != len(references):
        raise InferenceError(
            f"the input has {input_count} lines but {reference_name} has "
            f"{len(references)}; give one reference per input line.")


def attention_paths(path: str, self_attention: bool) -> dict[str, str]:
    """{"cross": path, and with self_attention "encoder_self"/"decoder_self": siblings}."""
    stem, extension = os.path.splitext(path)
    paths = {"cross": path}
    if self_attention:
        for kind in ("encoder_self", "decoder_self"):
            paths[kind] = f"{stem}.{kind}{extension or '.png'}"
    return paths


def write_attention_plots(restored: Restored, source_ids: Sequence[int],
                          output_ids: Sequence[int], path: str,
                          self_attention: bool = False) -> dict[str, tuple[str, np.ndarray]]:
    """Heatmaps of every layer and head for one sentence, teacher-forced on its output.

    Args:
      source_ids: the encoded source, EOS included (S tokens).
      output_ids: the decoded output without EOS; EOS is appended (T tokens in all).
      path: PNG of the cross-attention; self-attention goes next to it (attention_paths).

    Returns:
      {kind: (png path, plotted matrices float [L·H, Q, K])}.
    """
    tokenizer = restored.tokenizer
    max_length = restored.config.model.max_length
    output_ids = [*output_ids, tokenizer.eos_id][:max_length]
    weights = translate.attention_weights(
        restored.model, restored.params, np.asarray([source_ids], np.int32),
        np.asarray([output_ids], np.int32), bos_id=tokenizer.bos_id)
    pieces = (tokenizer.id_to_piece(source_ids), tokenizer.id_to_piece(output_ids),
              tokenizer.id_to_piece([tokenizer.bos_id])[0])
    written = {}
    for kind, png in attention_paths(path, self_attention).items():
        stacked = np.stack([np.asarray(layer[0]) for layer in weights[kind]])  # [L, H, Q, K]
        x_labels, y_labels, axes_text = plots.attention_labels(kind, *pieces)
        matrices = plots.save_attention_grid(
            png, stacked, x_labels=x_labels, y_labels=y_labels,
            title=f"{kind.replace('_', '-')} attention ({restored.description}); {axes_text}")
        written[kind] = (png, matrices)
    return written


# --------------------------------------------------------------------------- other kinds

# What an encoder_only run's fill-mask reads of the search flags; the others search.
FILL_MASK_FLAGS = ("top_k", "tokens_per_batch")


def check_flags_fit(request: DecodeRequest, kind: str) -> None:
    """Refuses flags that only fit another model kind (before the model is loaded)."""
    if kind != "encoder_decoder" and (request.attention_plot or request.self_attention):
        raise InferenceError(
            f"--attention_plot draws a translation's cross-attention, which this "
            f"{kind} run does not have; drop --attention_plot/--self_attention.")
    several = [f"--{name}" for name in ("nbest", "num_samples")
               if (request.decode_overrides.get(name) or 1) > 1]
    if kind != "encoder_decoder" and (several or request.output_format != "text"
                                      or request.print_scores):
        flag = (several or (["--output_format"] if request.output_format != "text"
                            else ["--print_scores"]))[0]
        raise InferenceError(
            f"{flag} is for translation runs; this {kind} run writes one output line per "
            "input line, so drop it.")
    if kind == "encoder_only":
        searching = sorted(name for name, value in request.decode_overrides.items()
                           if value is not None and name not in FILL_MASK_FLAGS)
        if searching:
            raise InferenceError(
                f"--{searching[0]} controls a search, but this encoder_only run fills each "
                "<mask> in one pass (its likeliest piece); drop it, or use --top_k N to "
                "list the N likeliest pieces per <mask>.")


def check_lines_fit(lines: Sequence[str], kind: str) -> None:
    """Refuses input that only fits another model kind (<mask> is encoder_only's)."""
    has_mask = [data.MASK_PIECE in line for line in lines]
    if kind == "decoder_only" and any(has_mask):
        raise InferenceError(
            f"input line {has_mask.index(True) + 1} holds {data.MASK_PIECE}, which only an "
            "encoder_only run fills; this decoder_only run continues prompts, so remove it.")
    if kind == "encoder_only" and any(line.strip() for line in lines) and not any(has_mask):
        raise InferenceError(
            f"no input line holds {data.MASK_PIECE}; this encoder_only run fills the "
            f"positions marked with it, e.g. --input \"drei{data.MASK_PIECE}zwanzig\".")


def _kind_task(kind: str, decode_config: config_lib.DecodeConfig, method: str) -> str:
    """What decode.py does with a run of this kind, for its first stderr line."""
    if kind == "decoder_only":
        return f"continuing prompts, {method}"
    if kind == "encoder_only":
        listed = f", top {decode_config.top_k} listed" if decode_config.top_k else ""
        return f"filling {data.MASK_PIECE} (likeliest piece{listed})"
    return method


def _single(outputs: list[str], sources: list[list[int]], ids: list[list[int]],
            truncated: int) -> Translations:
    """Translations of one unscored output per input (the kinds that search no n-best)."""
    return Translations(outputs, sources, ids, truncated, hypotheses=[[o] for o in outputs],
                        log_probs=[[0.0] for _ in outputs], scores=[[0.0] for _ in outputs])


def decode_other_kind(restored: Restored, lines: Sequence[str],
                      decode_config: config_lib.DecodeConfig, progress: bool,
                      stderr: IO) -> tuple[Translations, list[str]]:
    """A decoder_only run continues the lines; an encoder_only run fills their masks.

    Returns:
      the results (``translations`` = what is scored against references) and the lines to
      write (for fill-mask with --top_k, each output followed by its candidates).
    """
    model, params, tokenizer = restored.model, restored.params, restored.tokenizer
    max_length = restored.config.model.max_length
    with tqdm(total=len(lines), desc="decode", unit="line", file=stderr,
              disable=not progress) as bar:
        if restored.config.model.kind == "decoder_only":
            done = language_model.continue_lines(model, params, tokenizer, lines,
                                                 decode_config, max_length, bar.update)
            result = _single(done.outputs, done.prompts, done.continuations,
                             done.truncated)
            return result, _warn(result, stderr, max_length - 1, "prompt")
        done = fill_mask.fill_lines(model, params, tokenizer, lines, max_length=max_length,
                                    tokens_per_batch=decode_config.tokens_per_batch,
                                    top_k=decode_config.top_k, on_batch=bar.update)
    if done.without_mask:
        print(f"warning: {done.without_mask} line(s) hold no {data.MASK_PIECE} and are "
              "written unchanged.", file=stderr)
    fills = [[found[0][0] for found in per_mask] for per_mask in done.candidates]
    result = _single(done.outputs, done.sources, fills, done.truncated)
    _warn(result, stderr, max_length, "line")
    written = fill_mask.format_candidates(done, tokenizer) if decode_config.top_k else None
    return result, written or result.translations


def _warn(result: Translations, stderr: IO, limit: int, what: str) -> list[str]:
    """Warns about truncated inputs; returns the lines to write."""
    if result.truncated:
        print(f"warning: {result.truncated} {what}(s) longer than {limit} tokens were "
              "truncated to it.", file=stderr)
    return result.translations


# --------------------------------------------------------------------------- the command


@dataclasses.dataclass(frozen=True)
class DecodeRequest:
    """Everything decode.py's flags ask for.

    Attributes:
      inputs: sentences given on the command line (each may hold several lines), or None.
      input_file: read when inputs is None; "-" or None with no inputs = stdin.
      decode_overrides: {"method": "beam", ...} as strings, applied to the run's decode
        config (validated like --config.decode.X).
      output_format: "text" or "jsonl" (see format_output).
      print_scores: text format: append each hypothesis' log P and score.
    """

    workdir: str
    checkpoint: str = "best"
    use_ema: bool = False
    inputs: tuple[str, ...] | None = None
    input_file: str | None = None
    output_file: str | None = None
    reference_file: str | None = None
    attention_plot: str | None = None
    self_attention: bool = False
    decode_overrides: dict[str, str] = dataclasses.field(default_factory=dict)
    output_format: str = "text"
    print_scores: bool = False


def decode_config_for(config: config_lib.Config,
                      overrides: dict[str, str]) -> config_lib.DecodeConfig:
    """The run's decode config with the command line's changes, validated."""
    dotted = {f"decode.{name}": str(value) for name, value in overrides.items()
              if value is not None}
    return config_fields.override(config, dotted).decode


def input_lines(request: DecodeRequest, stdin: IO) -> list[str]:
    """The sentences to translate, from --input, --input_file or stdin."""
    if request.inputs is not None:
        return [line.removesuffix("\r") for text in request.inputs for line in text.split("\n")]
    if request.input_file and request.input_file != "-":
        return read_text_file(request.input_file)
    return read_stream(stdin)


OUTPUT_FORMATS = ("text", "jsonl")


def format_output(result: Translations, lines: Sequence[str], output_format: str,
                  print_scores: bool) -> list[str]:
    """The output lines.

    "text": each input's N hypotheses (decode.nbest or num_samples; 1 by default), best
    first, one per line; with print_scores each line is ``HYPOTHESIS<TAB>LOG_P<TAB>SCORE``.
    "jsonl": one JSON object per input, {"source", "hypotheses", "log_probs", "scores"}.
    LOG_P is log P(hypothesis | source) under the model (EOS included), SCORE is
    LOG_P / ((5 + |Y|) / 6)^decode.length_penalty (GNMT; |Y| counts EOS).
    """
    if output_format == "jsonl":
        return [json.dumps({"source": source, "hypotheses": texts, "log_probs": log_probs,
                            "scores": scores}, ensure_ascii=False)
                for source, texts, log_probs, scores in zip(
                    lines, result.hypotheses, result.log_probs, result.scores, strict=True)]
    if output_format != "text":
        raise InferenceError(f"output format {output_format!r} is not one of "
                             f"{', '.join(OUTPUT_FORMATS)}.")
    if not print_scores:
        return [text for texts in result.hypotheses for text in texts]
    return [f"{text}\t{log_p:.4f}\t{score:.4f}"
            for texts, log_probs, scores in zip(result.hypotheses, result.log_probs,
                                                result.scores, strict=True)
            for text, log_p, score in zip(texts, log_probs, scores, strict=True)]


def write_lines(lines: Sequence[str], path: str | None, stdout: IO) -> None:
    if path is None:
        stdout.write("".join(f"{line}\n" for line in lines))
        stdout.flush()
        return
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("".join(f"{line}\n" for line in lines))
    except OSError as error:
        raise InferenceError(f"cannot write {path!r}: {error.strerror or error}.") from error


def _first_sentence(result: Translations) -> int | None:
    """Index of the first input with tokens (the one whose attention is drawn)."""
    return next((index for index, ids in enumerate(result.sources) if ids), None)


def _plot(request: DecodeRequest, restored: Restored, result: Translations,
          stderr: IO) -> dict[str, tuple[str, np.ndarray]]:
    index = _first_sentence(result)
    if index is None:
        raise InferenceError("--attention_plot needs at least one non-empty input line.")
    written = write_attention_plots(restored, result.sources[index], result.outputs[index],
                                    request.attention_plot, request.self_attention)
    for kind, (png, _) in written.items():
        print(f"{kind} attention of input line {index + 1}: {png}", file=stderr)
    return written


def _describe(restored: Restored, decode_config: config_lib.DecodeConfig, count: int) -> str:
    method = decode_config.method
    if method == "beam":
        method += f" (beam {decode_config.beam_size}, alpha {decode_config.length_penalty})"
    elif method == "sample":
        method += (f" (temperature {decode_config.temperature}, top-k {decode_config.top_k}, "
                   f"top-p {decode_config.top_p}, seed {decode_config.seed})")
    method = _kind_task(restored.config.model.kind, decode_config, method)
    extras = [f"{name} {getattr(decode_config, name)}" for name in
              ("nbest", "num_samples", "min_length", "no_repeat_ngram_size")
              if getattr(decode_config, name) != getattr(config_lib.DecodeConfig(), name)]
    method += "".join(f", {extra}" for extra in extras)
    return (f"restored {restored.description}; {count} line(s), {method}, on "
            f"{jax.devices()[0].platform}")


@dataclasses.dataclass(frozen=True)
class Decoded:
    """What run did: the translations, the score lines and the plots it wrote."""

    result: Translations
    scores: list[str]                               # empty without a reference file
    plots: dict[str, tuple[str, np.ndarray]]        # see write_attention_plots


def run(request: DecodeRequest, stdin: IO | None = None, stdout: IO | None = None,
        stderr: IO | None = None) -> Decoded:
    """decode.py: restore, translate, write, score, plot. Raises one of DECODE_USER_ERRORS.

    The streams default to sys.stdin/stdout/stderr as they are at call time.
    """
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    preflight.check_request(request.workdir, request.decode_overrides, request.input_file,
                            request.output_file, request.attention_plot)  # before the restore
    run_config = saved_config(request.workdir)
    kind = run_config.model.kind
    check_flags_fit(request, kind)                      # before reading or loading anything
    # Search options that do not fit together fail here, before the model is loaded.
    decode_config = decode_config_for(run_config, request.decode_overrides)
    lines = input_lines(request, stdin)
    check_lines_fit(lines, kind)
    if count := preflight.meaningless_lines(lines):
        print(f"warning: {count} line(s) hold no letter or digit (only emoji, symbols or "
              "control characters); their outputs are guesses.", file=stderr)
    restored = restore(request.workdir, request.checkpoint, request.use_ema)
    references = read_text_file(request.reference_file) if request.reference_file else None
    if references is not None:
        check_counts(len(lines), references, request.reference_file)  # before decoding
    print(_describe(restored, decode_config, len(lines)), file=stderr)
    progress = request.inputs is None and len(lines) > 1 and stderr.isatty()
    if kind == "encoder_decoder":
        result = translate_lines(restored, lines, decode_config, progress=progress)
        written = format_output(result, lines, request.output_format, request.print_scores)
        if result.truncated:
            print(f"warning: {result.truncated} line(s) longer than model.max_length="
                  f"{restored.config.model.max_length} tokens were truncated to it.",
                  file=stderr)
    else:
        result, written = decode_other_kind(restored, lines, decode_config, progress, stderr)
    write_lines(written, request.output_file, stdout)
    scores = []
    if references is not None:
        scores = evaluation.score_lines(result.translations, references)
        print("\n".join(scores), file=stderr)
    plots = _plot(request, restored, result, stderr) if request.attention_plot else {}
    return Decoded(result=result, scores=scores, plots=plots)

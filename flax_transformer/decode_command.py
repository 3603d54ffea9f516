"""What decode.py runs: read the input, check that it fits the run, decode, write, score.

    request = decode_command.DecodeRequest(workdir="runs/default", inputs=("twenty-one",))
    decode_command.run(request)                           # prints "einundzwanzig"

``run(DecodeRequest(...))`` is the whole command: read input, translate in bucketed batches
(compiled once per bucket), write output, print sacreBLEU/chrF and write the heatmaps.
Every user mistake surfaces as an ``inference.InferenceError``,
``checkpoint.CheckpointError``, ``config.ConfigError``, ``preflight.PreflightError`` or
``data.DataError`` with one sentence saying what to do (``DECODE_USER_ERRORS``); flags and
input that only fit another model kind are refused (``check_flags_fit``,
``check_lines_fit``) before the model is loaded. The model side (restoring a run,
translating, continuing prompts, filling masks, attention weights) is ``inference.py``.
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import json
import sys
from collections.abc import Sequence
from typing import IO

import jax
import numpy as np

from flax_transformer import checkpoint, config_fields, data, evaluation, inference, preflight
from flax_transformer import config as config_lib
from flax_transformer.data import number_text
from flax_transformer.inference import InferenceError, Restored, Translations

DECODE_USER_ERRORS = (InferenceError, checkpoint.CheckpointError, config_lib.ConfigError,
                      preflight.PreflightError, data.DataError)


# --------------------------------------------------------------------------- reading text


def split_lines(raw: bytes, name: str) -> list[str]:
    """UTF-8 bytes -> one string per line ("\\n" or "\\r\\n" ends a line); a leading
    byte-order mark (files saved as "UTF-8 with BOM") is not part of the first line.

    Raises:
      InferenceError: naming the first line that is not UTF-8.
    """
    lines = raw.removeprefix(codecs.BOM_UTF8).split(b"\n")
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
    except data.GZIP_ERRORS as error:
        raise InferenceError(f"cannot read {path!r}: {error}; it is not a complete gzip file: "
                             "compress it again (gzip FILE) or give the plain text.") from error
    except OSError as error:
        raise InferenceError(f"cannot read {path!r}: {error.strerror or error}.") from error


def read_stream(stream: IO) -> list[str]:
    """The lines of a text or binary stream (stdin)."""
    raw = getattr(stream, "buffer", stream).read()
    return split_lines(raw if isinstance(raw, bytes) else raw.encode("utf-8"), "<stdin>")


# --------------------------------------------------------------------------- checks


def check_counts(input_count: int, references: Sequence[str], reference_name: str) -> None:
    """One reference per input line, or an InferenceError saying both counts."""
    if input_count != len(references):
        raise InferenceError(
            f"the input has {input_count} lines but {reference_name} has "
            f"{len(references)}; give one reference per input line.")


# What an encoder_only run's fill-mask reads of the search flags; the others search.
FILL_MASK_FLAGS = ("top_k", "tokens_per_batch")


def check_flags_fit(request: DecodeRequest, kind: str) -> None:
    """Refuses flags that only fit another model kind (before the model is loaded)."""
    if kind != "encoder_decoder" and (request.attention_plot or request.self_attention):
        raise InferenceError(
            f"--attention_plot draws a translation's cross-attention, which this "
            f"{kind} run does not have; drop --attention_plot/--self_attention.")
    several = [f"--{name}" for name in ("nbest", "num_samples")
               if int(str(request.decode_overrides.get(name) or 1)) > 1]  # preflight parsed
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


def not_number_words(run_config: config_lib.Config, lines: Sequence[str]) -> list[int]:
    """Indices of the input lines of a number_words translation run (English source) that
    are not number words as the task writes them, so that their outputs are guesses (empty
    and meaningless lines have their own handling)."""
    data_config = run_config.data
    if (run_config.model.kind != "encoder_decoder" or data_config.dataset != "number_words"
            or data_config.source_language != "en"):
        return []
    return [index for index, line in enumerate(lines)
            if line.strip() and not preflight.is_meaningless(line)
            and not number_text.is_number_words(line.strip())]


def _kind_task(kind: str, decode_config: config_lib.DecodeConfig, method: str) -> str:
    """What decode.py does with a run of this kind, for its first stderr line."""
    if kind == "decoder_only":
        return f"continuing prompts, {method}"
    if kind == "encoder_only":
        listed = f", top {decode_config.top_k} listed" if decode_config.top_k else ""
        return f"filling {data.MASK_PIECE} (likeliest piece{listed})"
    return method


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
    written = inference.write_attention_plots(restored, result.sources[index],
                                              result.outputs[index], request.attention_plot,
                                              request.self_attention)
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
    plots: dict[str, tuple[str, np.ndarray]]        # see inference.write_attention_plots


def run(request: DecodeRequest, stdin: IO | None = None, stdout: IO | None = None,
        stderr: IO | None = None) -> Decoded:
    """decode.py: restore, translate, write, score, plot. Raises one of DECODE_USER_ERRORS.

    The streams default to sys.stdin/stdout/stderr as they are at call time.
    """
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    preflight.check_request(request.workdir, request.decode_overrides, request.input_file,
                            request.output_file, request.attention_plot)  # before the restore
    run_config = inference.saved_config(request.workdir)
    kind = run_config.model.kind
    check_flags_fit(request, kind)                      # before reading or loading anything
    # Search options that do not fit together fail here, before the model is loaded.
    decode_config = decode_config_for(run_config, request.decode_overrides)
    lines = input_lines(request, stdin)
    check_lines_fit(lines, kind)
    if strays := not_number_words(run_config, lines):
        print(f"warning: {len(strays)} line(s) are not English number words as number_words "
              f"writes them (line {strays[0] + 1}: {lines[strays[0]]!r}); this run learned "
              "only those (lower case, hyphens inside 21 … 99, no 'and', e.g. 'three "
              "hundred forty-two'), so their outputs are guesses.", file=stderr)
    if count := preflight.meaningless_lines(lines):
        print(f"warning: {count} line(s) hold no letter or digit (only emoji, symbols or "
              "control characters); their outputs are guesses.", file=stderr)
    restored = inference.restore(request.workdir, request.checkpoint, request.use_ema)
    references = read_text_file(request.reference_file) if request.reference_file else None
    if references is not None:
        check_counts(len(lines), references, request.reference_file)  # before decoding
    print(_describe(restored, decode_config, len(lines)), file=stderr)
    progress = request.inputs is None and len(lines) > 1 and stderr.isatty()
    if kind == "encoder_decoder":
        result = inference.translate_lines(restored, lines, decode_config, progress=progress)
        written = format_output(result, lines, request.output_format, request.print_scores)
        if result.truncated:
            print(f"warning: {result.truncated} line(s) longer than model.max_length="
                  f"{restored.config.model.max_length} tokens were truncated to it.",
                  file=stderr)
    else:
        result, written = inference.decode_other_kind(restored, lines, decode_config, progress,
                                                      stderr)
    write_lines(written, request.output_file, stdout)
    scores = []
    if references is not None:
        scores = evaluation.score_lines(result.translations, references)
        print("\n".join(scores), file=stderr)
    plots = _plot(request, restored, result, stderr) if request.attention_plot else {}
    return Decoded(result=result, scores=scores, plots=plots)

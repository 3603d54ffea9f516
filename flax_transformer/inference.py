"""A trained run put to use: restore it, decode lines of text, draw its attention.

    restored = inference.restore("runs/default", which="best")
    result = inference.translate_lines(restored, ["twenty-one"], restored.config.decode)
    result.translations                                   # ["einundzwanzig"]

The searches and their batching live in ``translate.py``. Runs of the other model kinds
are dispatched on ``config.model.kind`` (``decode_other_kind``) to ``language_model.py``
(decoder_only: continue prompts) and ``fill_mask.py`` (encoder_only: fill ``<mask>``).
decode.py's command around this (files, flags, checks, output formats, scores) is
``decode_command.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Sequence
from typing import IO, Any

import jax
import numpy as np
from tqdm.auto import tqdm

from flax_transformer import (
    checkpoint,
    data,
    fill_mask,
    language_model,
    plots,
    training,
    translate,
)
from flax_transformer import config as config_lib
from flax_transformer.data import batching
from flax_transformer.model import Transformer


class InferenceError(ValueError):
    """Input that decode.py cannot use; the message says what was wrong and what to do."""


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
        workdir, training.param_shapes(config.model), which, use_ema)
    model = training.KINDS[config.model.kind].module(config.model)
    return Restored(config=config, tokenizer=tokenizer, model=model,
                    params=params, description=description)


# --------------------------------------------------------------------------- translating


@functools.lru_cache(maxsize=8)
def _translate_fn(model: Transformer, decode_config: config_lib.DecodeConfig, bos_id: int,
                  eos_id: int, pad_id: int, piece_count: int):
    """One compiled search per (model, search): repeated calls reuse its compilations."""
    return translate.make_translate_fn(model, decode_config, bos_id=bos_id, eos_id=eos_id,
                                       pad_id=pad_id, piece_count=piece_count)


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
                                 tokenizer.eos_id, tokenizer.pad_id, tokenizer.vocab_size)
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


# --------------------------------------------------------------------------- attention maps


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



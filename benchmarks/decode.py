"""Decoding speed: the KV cache and the cross-attention cache, and compilations per file.

1. Greedy search with the full cache (self-attention K/V buffers + cross-attention K/V
   computed once) against no cache at all (the whole decoder rerun over the output
   buffer every step), at 32, 128 and 256 output tokens.
2. Beam search (beam 4) with the full cache against the self-attention cache only
   (cross-attention K/V recomputed from the encoder output every step, as the Flax WMT
   example does), at the same lengths.
3. A file of mixed-length sentences decoded through ``translate.translate_all``'s buckets:
   how many times it compiles, against once per distinct length without buckets.

The package decodes with the full cache only; the two slower ways to decode that it is
measured against (``self_only`` and ``none``) are written here, from the model's public
methods (``encode``, ``init_cache``, ``extend``, ``decode``).

Every output is forced to its full length: the model has random weights and its EOS
logit is masked, so each row decodes exactly N tokens and tokens/s counts N per
sentence (not per beam). Cached and uncached searches must give the same tokens; the
table says whether they do.

Run: ``python benchmarks/decode.py [--preset tiny] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys

import common
import jax
import jax.numpy as jnp
import numpy as np

from flax_transformer import decoding, translate
from flax_transformer.config import DecodeConfig
from flax_transformer.data import batching
from flax_transformer.model import Transformer
from flax_transformer.presets import get_config

BOS_ID, EOS_ID, PAD_ID = 2, 3, 0


def bench_model(preset: str, max_output: int, source_length: int) -> tuple[Transformer, dict]:
    """The preset's Transformer (room for max_output positions) and random params."""
    model_config = get_config(preset).model
    model_config = dataclasses.replace(
        model_config, max_length=max(model_config.max_length, max_output + 1, source_length))
    model = Transformer(model_config)
    tokens = jnp.ones((1, 8), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), tokens, tokens)["params"]
    return model, params


def never_eos(tokens_to_logits: decoding.TokensToLogits) -> decoding.TokensToLogits:
    """The same model with EOS masked, so that every row decodes max_length tokens."""
    def masked(tokens, cache):
        logits, cache = tokens_to_logits(tokens, cache)
        return logits.at[:, EOS_ID].set(decoding.NEG_INF), cache
    return masked


def seq2seq_decoder(model: Transformer, params, source_tokens, max_length: int, caching: str):
    """The Transformer as ``tokens_to_logits`` with one of three caches.

    "full": translate.seq2seq_decoder (self-attention K/V buffers + cross-attention K/V
    computed once); "self_only": self-attention buffers, cross K/V recomputed from the
    encoder output every step (the Flax WMT example); "none": the whole decoder rerun
    over the [B, max_length] output buffer every step.
    """
    if caching == "full":
        return translate.seq2seq_decoder(model, params, source_tokens, max_length)
    variables = {"params": params}
    encoded = model.apply(variables, source_tokens, method="encode")         # [B, S, D]
    if caching == "self_only":
        return _self_only(model, variables, source_tokens, encoded, max_length)
    if caching == "none":
        return _no_cache(model, variables, source_tokens, encoded, max_length)
    raise ValueError(f"caching={caching!r} must be 'full', 'self_only' or 'none'.")


def _without_cross(cache: dict) -> dict:
    return dict(cache, layers=tuple({"self": layer["self"]} for layer in cache["layers"]))


def _self_only(model, variables, source_tokens, encoded, max_length):
    """Self-attention cache only; the cross K/V of every layer rebuilt at every step."""
    def with_cross(cache):
        fresh = model.apply(variables, cache["encoded"], cache["source_tokens"], max_length,
                            method="init_cache")
        layers = tuple(dict(kept, cross=new["cross"])
                       for kept, new in zip(cache["decode"]["layers"], fresh["layers"],
                                            strict=True))
        return dict(cache["decode"], layers=layers)

    def tokens_to_logits(tokens, cache):
        logits, step_cache = model.apply(variables, tokens[:, None], with_cross(cache),
                                         method="extend")
        return logits[:, 0], dict(cache, decode=_without_cross(step_cache))
    full = model.apply(variables, encoded, source_tokens, max_length, method="init_cache")
    return tokens_to_logits, {"decode": _without_cross(full), "encoded": encoded,
                              "source_tokens": source_tokens}


def _no_cache(model, variables, source_tokens, encoded, max_length):
    """No cache: each token is written into a [B, L] buffer and the decoder rerun on it."""
    def tokens_to_logits(tokens, cache):
        positions = cache["positions"]                                      # [B]
        rows = jnp.arange(tokens.shape[0])
        buffer = cache["tokens"].at[rows, positions].set(tokens.astype(jnp.int32))
        logits = model.apply(variables, cache["encoded"], cache["source_tokens"], buffer,
                             method="decode")[rows, positions]              # [B, V]
        return logits, dict(cache, tokens=buffer, positions=positions + 1)
    batch = source_tokens.shape[0]
    return tokens_to_logits, {"tokens": jnp.full((batch, max_length), PAD_ID, jnp.int32),
                              "positions": jnp.zeros((batch,), jnp.int32),
                              "encoded": encoded, "source_tokens": source_tokens}


def make_search(model: Transformer, *, beam_size: int, caching: str, max_length: int):
    """jit(params, source_tokens int [B, S]) -> tokens int [B, N] of greedy or beam search."""
    def search(params, source_tokens):
        tokens_to_logits, cache = seq2seq_decoder(model, params, source_tokens, max_length,
                                                  caching)
        common_args = dict(bos_id=BOS_ID, eos_id=EOS_ID, max_length=max_length,
                           pad_id=PAD_ID)
        if beam_size == 1:
            return decoding.greedy_search(never_eos(tokens_to_logits), cache,
                                          **common_args).tokens
        tokens, _, _ = decoding.beam_search(never_eos(tokens_to_logits), cache,
                                            beam_size=beam_size, **common_args)
        return tokens[:, 0]
    return jax.jit(search)


def time_search(model, params, source, *, beam_size: int, caching: str, max_length: int,
                repeats: int) -> dict:
    """Compile time, best time and output tokens/s of one search; keeps its outputs."""
    search = make_search(model, beam_size=beam_size, caching=caching, max_length=max_length)
    outputs = {}

    def run():
        outputs["tokens"] = np.asarray(search(params, source))   # waits for the result
    first = common.best_of(run, repeats=1, warmup=0)["best_s"]
    timing = common.best_of(run, repeats=repeats, warmup=0)
    tokens = outputs["tokens"]
    return {"search": "greedy" if beam_size == 1 else f"beam {beam_size}", "caching": caching,
            "output_tokens": max_length, "first_call_s": first, "best_s": timing["best_s"],
            "median_s": timing["median_s"],
            "tokens_per_s": source.shape[0] * max_length / timing["best_s"],
            "full_length": bool(np.all((tokens != EOS_ID) & (tokens != PAD_ID))),
            "tokens": tokens}


def compare(fast: dict, slow: dict) -> dict:
    """One table row: the cached search against the slower one at the same length."""
    return {"search": fast["search"], "output_tokens": fast["output_tokens"],
            "fast": fast["caching"], "slow": slow["caching"],
            "fast_tokens_per_s": fast["tokens_per_s"], "slow_tokens_per_s": slow["tokens_per_s"],
            "speedup": fast["tokens_per_s"] / slow["tokens_per_s"],
            "same_tokens": bool(np.array_equal(fast["tokens"], slow["tokens"])),
            "full_length": fast["full_length"] and slow["full_length"],
            "fast_first_call_s": fast["first_call_s"], "slow_first_call_s": slow["first_call_s"]}


BEAM_INVARIANT = ("cross", "cross_mask")


@contextlib.contextmanager
def beam_invariant_cache_kept():
    """Measures a proposed change to ``decoding._reorder_cache`` (not in the package).

    Beam search reorders every cache leaf [B·W, ...] after each step, but the beams of one
    sentence only ever take each other's place, and the leaves that depend on the source
    alone (cross-attention K/V and the cross mask) are the same for all W beams
    of a sentence: gathering them copies [B·W, S, H, K] per layer for nothing. This
    variant leaves those leaves where they are (identical results, checked by the table's
    "same tokens" column).
    """
    def reorder(cache, beam_indices):
        batch, beams = beam_indices.shape
        flat = (jnp.arange(batch)[:, None] * beams + beam_indices).reshape(-1)   # [B·W]

        def gather(path, leaf):
            names = {getattr(key, "key", None) for key in path}
            return leaf if names & set(BEAM_INVARIANT) else jnp.take(leaf, flat, axis=0)
        return jax.tree_util.tree_map_with_path(gather, cache)

    original = decoding._reorder_cache
    decoding._reorder_cache = reorder
    try:
        yield
    finally:
        decoding._reorder_cache = original


def mixed_file(count: int, longest: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """``count`` random sentences of 1..longest tokens (never pad, BOS or EOS)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, longest + 1, size=count)
    return [rng.integers(4, vocab_size, size=length).tolist() for length in lengths]


class CompileCounter:
    """Counts XLA backend compilations while active (jax.monitoring events)."""

    def __init__(self):
        self.count = 0

    def _listener(self, event: str, duration: float, **kwargs) -> None:
        del duration, kwargs
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1

    def __enter__(self) -> CompileCounter:
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc_info) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listener)


def count_compilations(model, params, sentences: list[list[int]],
                       tokens_per_batch: int) -> dict:
    """Decodes the file through source_batches; counts compilations and batches."""
    longest = max(len(sentence) for sentence in sentences)
    buckets = batching.bucket_lengths((), longest)
    decode_config = DecodeConfig(method="greedy", max_extra_length=16)
    translate_fn = translate.make_translate_fn(model, decode_config, bos_id=BOS_ID,
                                               eos_id=EOS_ID, pad_id=PAD_ID)
    batches = list(batching.source_batches(sentences, buckets,
                                           tokens_per_batch=tokens_per_batch, pad_id=PAD_ID))
    with CompileCounter() as counter:
        timing = common.best_of(lambda: translate.translate_all(
            translate_fn, params, sentences, buckets=buckets, tokens_per_batch=tokens_per_batch,
            pad_id=PAD_ID), repeats=1, warmup=0)
    return {"sentences": len(sentences), "distinct_lengths": len({len(s) for s in sentences}),
            "buckets": list(buckets), "batches": len(batches),
            "shapes": sorted({batch.tokens.shape for batch in batches}),
            "jit_cache_entries": translate_fn._cache_size(),
            "backend_compilations": counter.count, "seconds": timing["best_s"]}


def run_grid(model, params, source, args) -> list[dict]:
    """Greedy full vs none and beam full vs self_only at every output length."""
    rows = []
    for length in args.lengths:
        timed = {}
        for beam, caching in ((1, "full"), (1, "none"), (args.beam, "full"),
                              (args.beam, "self_only")):
            timed[beam, caching] = time_search(model, params, source, beam_size=beam,
                                               caching=caching, max_length=length,
                                               repeats=args.repeats)
            print(f"  N={length:<4d} {timed[beam, caching]['search']:7s} {caching:9s} "
                  f"{timed[beam, caching]['tokens_per_s']:10.1f} tokens/s", flush=True)
        with beam_invariant_cache_kept():
            proposed = time_search(model, params, source, beam_size=args.beam,
                                   caching="full", max_length=length, repeats=args.repeats)
        proposed["caching"] = "full, cross K/V not reordered (proposed)"
        rows.append(compare(timed[1, "full"], timed[1, "none"]))
        rows.append(compare(timed[args.beam, "full"], timed[args.beam, "self_only"]))
        rows.append(compare(proposed, timed[args.beam, "self_only"]))
        rows[-1]["same_tokens"] &= bool(np.array_equal(proposed["tokens"],
                                                       timed[args.beam, "full"]["tokens"]))
    return rows


def print_tables(rows: list[dict], compiles: dict, title: str) -> str:
    text = common.print_table(
        f"Decoding speed, output tokens per second ({title})",
        ["search", "output tokens N", "cached", "tok/s", "against", "tok/s", "speed-up",
         "same tokens", "full length", "first call s (cached / against)"],
        [(r["search"], r["output_tokens"], r["fast"], r["fast_tokens_per_s"], r["slow"],
          r["slow_tokens_per_s"], r["speedup"], r["same_tokens"], r["full_length"],
          f"{r['fast_first_call_s']:.1f} / {r['slow_first_call_s']:.1f}") for r in rows])
    greedy = [r for r in rows if r["search"] == "greedy" and r["output_tokens"] == 128]
    if greedy:
        speedup = greedy[0]["speedup"]
        text += common.print_table("Target", ["metric", "measured", "target", "result"], [
            ("greedy KV-cache speed-up at 128 tokens", speedup, 5.0,
             "met" if speedup >= 5.0 else "missed")])
    text += common.print_table(
        "Compilations for a file of mixed-length sentences (greedy, translate_all)",
        ["sentences", "distinct lengths (= compilations without buckets)", "buckets",
         "batches", "batch shapes", "jit cache entries", "XLA compilations", "seconds"],
        [(compiles["sentences"], compiles["distinct_lengths"],
          " ".join(map(str, compiles["buckets"])), compiles["batches"],
          " ".join(f"{rows}×{length}" for rows, length in compiles["shapes"]),
          compiles["jit_cache_entries"], compiles["backend_compilations"],
          compiles["seconds"])])
    return text


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="model shapes (random weights)")
    parser.add_argument("--batch", type=int, default=8, help="sentences decoded together")
    parser.add_argument("--source-length", type=int, default=32)
    parser.add_argument("--lengths", type=_ints, default=[32, 128, 256],
                        help="output tokens N per sentence")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (best is kept)")
    parser.add_argument("--file-sentences", type=int, default=300)
    parser.add_argument("--file-longest", type=int, default=60)
    parser.add_argument("--tokens-per-batch", type=int, default=1024)
    common.add_json_flag(parser)
    args = parser.parse_args(argv)
    machine = common.describe_machine()
    print(common.machine_line(machine), flush=True)
    model, params = bench_model(args.preset, max(args.lengths),
                                max(args.source_length, args.file_longest))
    rng = np.random.default_rng(0)
    source = rng.integers(4, model.config.vocab_size, (args.batch, args.source_length),
                          dtype=np.int32)
    rows = run_grid(model, params, source, args)
    sentences = mixed_file(args.file_sentences, args.file_longest, model.config.vocab_size)
    compiles = count_compilations(model, params, sentences, args.tokens_per_batch)
    title = (f"{args.preset}, random weights, {args.batch} sentences of "
             f"{args.source_length} tokens")
    text = print_tables(rows, compiles, title)
    common.write_json(args.json, {"machine": machine, "args": vars(args), "speed": rows,
                                  "compilations": compiles, "markdown": text})
    return 0


if __name__ == "__main__":
    sys.exit(main())

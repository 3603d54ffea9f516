"""The input pipeline on Multi30k EN→DE: one-time costs, pairs/s, batch shapes, coverage.

Measures, with the 'multi30k' preset's data config (vocabulary 8000, max_length 64,
4000 tokens per batch, packed rows; buckets 16/24/32/48/64 for the bucketed layout):

1. one-time costs: preparing the TFDS dataset from the text files, training the
   SentencePiece model, tokenizing the training split;
2. steady state, per epoch, with buckets and with packing: pairs/s and batches/s that
   ``data.train_batches`` delivers, the distinct batch shapes, and the fraction of
   batch tokens that are not padding;
3. the tokenizer's coverage of the validation split: the fraction of tokens that are not
   <unk> and the fraction of characters that have a piece;
4. the pairs/s that the multi30k preset's train step consumes on this machine, against
   the pipeline's pairs/s (how far the pipeline is from being the bottleneck).

Run: ``python benchmarks/data.py [--multi30k ../shared/data/multi30k] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import common
import numpy as np

from flax_transformer import data
from flax_transformer.config import DataConfig
from flax_transformer.presets import get_config


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def pairs_in(batch: dict[str, np.ndarray]) -> int:
    if "source_segments" in batch:
        return int(batch["source_segments"].max(axis=1).sum())
    return int((batch["target_output"][:, 0] > 0).sum())


def epoch_rates(train_pairs, tokenizer, config: DataConfig, epochs: int) -> dict:
    """Pairs/s and batch statistics over ``epochs`` full epochs (after tokenizing)."""
    iterator, setup_s = timed(data.train_batches, train_pairs, tokenizer, config, 1)
    pairs = batches = real_tokens = all_tokens = 0
    shapes_per_epoch = []
    start = time.perf_counter()
    for _ in range(epochs):
        shapes, epoch = set(), iterator.epoch
        while iterator.epoch == epoch:
            batch = next(iterator)
            pairs += pairs_in(batch)
            batches += 1
            shapes.add(batch["source"].shape)
            real_tokens += int((batch["source"] > 0).sum() + (batch["target_output"] > 0).sum())
            all_tokens += 2 * batch["source"].size
        shapes_per_epoch.append(len(shapes))
    seconds = time.perf_counter() - start
    return {"tokenize_and_plan_s": setup_s, "pairs_per_s": pairs / seconds,
            "batches_per_s": batches / seconds, "batches_per_epoch": batches / epochs,
            "pairs_per_epoch": pairs / epochs, "distinct_shapes_per_epoch": max(shapes_per_epoch),
            "non_padding_fraction": real_tokens / all_tokens, "stats": iterator.stats}


def train_step_rate(train_pairs, tokenizer, steps: int = 3) -> dict:
    """Pairs/s that the multi30k preset's train step consumes (one batch shape, compiled once)."""
    import jax

    from flax_transformer import training

    config = get_config("multi30k")
    config = dataclasses.replace(config, data=dataclasses.replace(
        config.data, train_files="x", validation_files="x"))
    iterator = data.train_batches(train_pairs, tokenizer, config.data, 1)
    first = next(iterator)
    batches = [b for b in (next(iterator) for _ in range(60))
               if b["source"].shape == first["source"].shape][:steps]
    step = jax.jit(lambda s, b, r: training.train_step(s, b, r, config=config),
                   donate_argnums=(0,))
    state = training.create_train_state(config, jax.random.key(0))
    state, metrics = step(state, first, jax.random.key(1))
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for index, batch in enumerate(batches):
        state, metrics = step(state, batch, jax.random.key(index))
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / len(batches)
    pairs = sum(pairs_in(batch) for batch in batches) / len(batches)
    return {"batch_shape": list(first["source"].shape), "seconds_per_step": seconds,
            "pairs_per_step": pairs, "pairs_per_s": pairs / seconds}


def coverage(pairs, tokenizer) -> dict:
    """Fractions of tokens that are not <unk> and of non-space characters with a piece."""
    pieces = tokenizer.id_to_piece(range(4, tokenizer.vocab_size))
    known_characters = set("".join(pieces))
    tokens = unknown = characters = covered = 0
    for pair in pairs:
        for text in (pair["source"], pair["target"]):
            ids = tokenizer.encode(text)
            tokens += len(ids)
            unknown += ids.count(tokenizer.unk_id)
            visible = [c for c in text if not c.isspace()]
            characters += len(visible)
            covered += sum(c in known_characters for c in visible)
    return {"token_coverage": 1 - unknown / tokens, "character_coverage": covered / characters,
            "tokens_per_sentence": tokens / (2 * len(pairs))}


def run(multi30k: str, workdir: str, epochs: int) -> dict:
    config = dataclasses.replace(
        get_config("multi30k").data, train_files=os.path.join(multi30k, "train"),
        validation_files=os.path.join(multi30k, "val"),
        test_files=os.path.join(multi30k, "test_2016_flickr"))
    splits, build_s = timed(data.load_splits, config, workdir)
    _, reuse_s = timed(data.load_splits, config, workdir)
    tokenizer, tokenizer_s = timed(data.get_tokenizer, config, workdir, splits["train"])
    eval_batches, eval_s = timed(data.eval_batches, splits["validation"], tokenizer, config, 1)
    return {
        "config": dataclasses.asdict(config),
        "sizes": {name: len(split) for name, split in splits.items()},
        "prepare_s": build_s, "reuse_prepared_s": reuse_s, "tokenizer_train_s": tokenizer_s,
        "vocab_size": tokenizer.vocab_size,
        "eval_batches_s": eval_s, "eval_batches": len(eval_batches),
        "eval_shapes": len({batch["source"].shape for batch in eval_batches}),
        "buckets": epoch_rates(splits["train"], tokenizer,
                               dataclasses.replace(config, packing=False), epochs),
        "packed": epoch_rates(splits["train"], tokenizer,
                              dataclasses.replace(config, packing=True), epochs),
        "tokens_per_batch": config.tokens_per_batch, "preset_packing": config.packing,
        "validation_coverage": coverage(splits["validation"], tokenizer),
        "train_step": train_step_rate(splits["train"], tokenizer),
    }


def report(results: dict) -> None:
    common.print_table("One-time costs (Multi30k train: 29,000 pairs)", ["step", "seconds"], [
        ["prepare TFDS array_record dataset (3 splits)", results["prepare_s"]],
        ["reuse the prepared dataset", results["reuse_prepared_s"]],
        [f"train SentencePiece (vocab {results['vocab_size']})", results["tokenizer_train_s"]],
        ["tokenize train + plan epoch 0 (buckets)", results["buckets"]["tokenize_and_plan_s"]],
        ["validation eval_batches (1,014 pairs)", results["eval_batches_s"]],
    ])
    rows = [[name, r["pairs_per_s"], r["batches_per_s"], r["batches_per_epoch"],
             r["distinct_shapes_per_epoch"], r["non_padding_fraction"]]
            for name, r in (("buckets", results["buckets"]), ("packing", results["packed"]))]
    common.print_table(f"Training batches ({results['tokens_per_batch']} tokens per batch, "
                       "this process only)",
                       ["layout", "pairs/s", "batches/s", "batches/epoch",
                        "distinct shapes/epoch", "non-padding fraction"], rows)
    consumer = results["train_step"]
    layout = "packed" if results["preset_packing"] else "buckets"
    common.print_table("Pipeline against the train step (multi30k preset, same batches)",
                       ["measure", "value"], [
        ["train step: seconds per step", consumer["seconds_per_step"]],
        ["train step: pairs consumed per second", consumer["pairs_per_s"]],
        [f"pipeline pairs/s ÷ train step pairs/s ({layout}, as the preset)",
         results[layout]["pairs_per_s"] / consumer["pairs_per_s"]],
    ])
    cover = results["validation_coverage"]
    common.print_table("Tokenizer coverage on Multi30k validation", ["measure", "value"], [
        ["tokens that are not <unk>", cover["token_coverage"]],
        ["non-space characters with a piece", cover["character_coverage"]],
        ["tokens per sentence", cover["tokens_per_sentence"]],
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--multi30k", default="../shared/data/multi30k",
                        help="folder with train/val/test_2016_flickr .en/.de(.gz) files")
    parser.add_argument("--workdir", default="", help="where to prepare (default: a temp dir)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per layout")
    common.add_json_flag(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        results = run(args.multi30k, args.workdir or temporary, args.epochs)
    results["machine"] = common.describe_machine()
    print(common.machine_line(results["machine"]))
    report(results)
    common.write_json(args.json, results)


if __name__ == "__main__":
    main()

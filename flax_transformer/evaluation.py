"""Validation during training: loss/perplexity/accuracy, and sacreBLEU of greedy outputs."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np

from flax_transformer import data, training, translate
from flax_transformer.config import Config
from flax_transformer.data import batching, chunked, number_text
from flax_transformer.model import Transformer


def bleu(hypotheses: list[str], references: list[str]) -> tuple[float, str]:
    """Corpus BLEU, cased, on detokenized text with sacreBLEU's 13a tokenizer.

    Returns:
      (score, sacreBLEU signature).
    """
    import sacrebleu  # here, not at the top: decode.py without references never needs it

    metric = sacrebleu.BLEU()
    score = metric.corpus_score(hypotheses, [references]).score
    return score, str(metric.get_signature())


def chrf(hypotheses: list[str], references: list[str]) -> tuple[float, str]:
    import sacrebleu

    metric = sacrebleu.CHRF()
    return metric.corpus_score(hypotheses, [references]).score, str(metric.get_signature())


def exact_match(hypotheses: list[str], references: list[str]) -> float:
    """Fraction of outputs identical to their reference (after stripping outer spaces)."""
    pairs = list(zip(hypotheses, references, strict=True))
    return sum(h.strip() == r.strip() for h, r in pairs) / max(len(pairs), 1)


def score_lines(hypotheses: list[str], references: list[str]) -> list[str]:
    """Printable BLEU and chrF (with signatures) and exact match of a test set."""
    bleu_score, bleu_signature = bleu(hypotheses, references)
    chrf_score, chrf_signature = chrf(hypotheses, references)
    exact = exact_match(hypotheses, references)
    lines = [f"BLEU = {bleu_score:.2f} ({bleu_signature})",
             f"chrF = {chrf_score:.2f} ({chrf_signature})",
             f"exact match = {100 * exact:.1f}% of {len(references)} lines"]
    if references and all(len(reference.split()) < 4 for reference in references):
        lines.append("note: every reference has fewer than 4 words, so 4-gram BLEU is near 0 "
                     "by construction (e.g. German number compounds); read chrF and exact "
                     "match instead.")
    return lines


def _number_of(source: str, reference: str) -> int:
    """The number a number_words pair writes, read from its English side."""
    try:
        return number_text.parse_english(source)
    except data.DataError:
        return number_text.parse_english(reference)


def digit_classes(sources: list[str], hypotheses: list[str], references: list[str],
                  train_sources: set[str]) -> list[dict]:
    """Exact match of number_words outputs per digit count 1 … 6, over all of 0 … 999, and
    for the numbers from 1,000 up per ending class (the form of their last three digits:
    ``number_text.ENDING_CLASSES``, "000" … "x10–x99").

    Args:
      sources, hypotheses, references: one entry per example, in either direction.
      train_sources: the source lines of the training split (to say what was seen).

    Returns:
      rows {"name", "key", "examples", "exact_match", "seen"}: the digit counts that have
      examples, then "all of 0–999" (key "below_1000"), then the endings that have
      examples (keys "ending_0" … "ending_5"); "seen" counts the examples whose source is
      in train_sources.
    """
    numbers = np.asarray([_number_of(s, r) for s, r in zip(sources, references, strict=True)])
    correct = np.asarray([h.strip() == r.strip() for h, r in zip(hypotheses, references,
                                                                   strict=True)])
    seen = np.asarray([source in train_sources for source in sources])
    digits = np.asarray([len(str(number)) for number in numbers])
    groups = [(str(count), f"digits_{count}", digits == count)
              for count in number_text.DIGIT_CLASSES]
    groups.append(("all of 0–999", "below_1000", numbers < 1000))
    endings = np.asarray([number_text.ending_class(int(number)) for number in numbers])
    groups += [(f"ends {name}", f"ending_{ending}", (numbers >= 1000) & (endings == ending))
               for ending, name in enumerate(number_text.ENDING_CLASSES)]
    return [{"name": name, "key": key, "examples": int(chosen.sum()),
             "exact_match": float(correct[chosen].mean()), "seen": int(seen[chosen].sum())}
            for name, key, chosen in groups if chosen.any()]


def digit_class_lines(rows: list[dict]) -> list[str]:
    """digit_classes as a small printable table."""
    def seen(row):
        if row["seen"] == row["examples"]:
            return "yes"
        return "no (held out)" if not row["seen"] else f"{row['seen']} of {row['examples']}"
    lines = ["digits       | examples | exact match | seen in training?",
             "-------------|----------|-------------|------------------"]
    lines += [f"{row['name']:<12} | {row['examples']:>8,} | {100 * row['exact_match']:>9.1f} %"
              f" | {seen(row)}" for row in rows]
    return lines


def first_examples(split: Any, count: int) -> Any:
    """The first ``count`` examples of ``split`` (all of it when count is 0)."""
    if not count or count >= len(split):
        return split
    return list(chunked.iterate(split, count))


def most_frequent_token_accuracy(batches: list[dict]) -> float:
    """Accuracy of always answering the commonest token of the scored positions of an
    encoder_only run's validation batches ("mask_weights" > 0): the baseline to beat."""
    targets = np.concatenate([batch["target_output"][batch["mask_weights"] > 0]
                              for batch in batches])
    return float(np.bincount(targets).max() / len(targets)) if len(targets) else 0.0


class Evaluator:
    """Evaluates a training state on the validation split.

    Every model kind gets loss, NLL, perplexity and token accuracy (encoder_only: at the
    masked positions, plus ``baseline_accuracy``); translation adds BLEU, chrF and exact
    match of greedy outputs. ``loss_batches`` counts the batches the loss covered.
    """

    def __init__(self, config: Config, split: Any, tokenizer: Any, strategy: Any,
                 max_examples: int | None = None, max_batches: int | None = None):
        """max_examples: sentences decoded for BLEU; None = data.eval_examples, 0 = all.
        max_batches: loss batches; None = eval.max_batches, 0 = all."""
        self.config = config
        self.strategy = strategy
        self.tokenizer = tokenizer
        self.split = split
        self.max_batches = config.eval.max_batches if max_batches is None else max_batches
        self.data_config = (data.batch_config(config.data) if config.model.monolingual
                            else config.data)
        self.sources, self.references, self.translate_fn = [], [], None
        if config.model.kind == "encoder_decoder":
            self._prepare_translation(max_examples)
        self.signature_printed = False

    def _prepare_translation(self, max_examples: int | None) -> None:
        config, split, tokenizer = self.config, self.split, self.tokenizer
        count = config.data.eval_examples if max_examples is None else max_examples
        count = min(count, len(split)) if count else len(split)
        pairs = list(chunked.iterate(split, count))
        self.references = [pair["target"] for pair in pairs]
        # Sources as decode.py reads them, cut to what the model was trained on.
        self.sources, _ = translate.encode_sources(
            tokenizer, [pair["source"] for pair in pairs], config.data.max_length)
        greedy = dataclasses.replace(config.decode, method="greedy",
                                     max_extra_length=config.train.max_eval_length_extra)
        self.translate_fn = translate.make_translate_fn(
            Transformer(config.model), greedy, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id, piece_count=tokenizer.vocab_size)

    @functools.cached_property
    def loss_batches(self) -> list[dict]:
        """The split's examples in device-divisible batches (the first eval.max_batches);
        built on first use only (the test report of a translation run never needs them)."""
        batches = data.eval_batches(self.split, self.tokenizer, self.data_config,
                                    self.strategy.batch_multiple)
        if self.max_batches:
            batches = batches[:self.max_batches]
        return [training.add_eval_masks({k: v for k, v in batch.items() if k != "index"},
                                        self.config, index)
                for index, batch in enumerate(batches)]

    def translations(self, params: Any) -> list[str]:
        """Greedy outputs for the first eval_examples validation sources, in order, batched
        by decode.py's function (decode.tokens_per_batch source tokens, data's buckets)."""
        data_config = self.config.data
        rows = translate.translate_all(
            self.translate_fn, params, self.sources,
            buckets=batching.bucket_lengths(data_config.bucket_lengths, data_config.max_length),
            tokens_per_batch=self.config.decode.tokens_per_batch, pad_id=self.tokenizer.pad_id)
        return [self.tokenizer.decode(found.tokens[0]) for found in rows]

    def loss_metrics(self, state: Any) -> dict:
        """Loss, NLL, perplexity and accuracy over ``loss_batches`` (no decoding)."""
        metrics = None
        for batch in self.loss_batches:
            metrics = training.add_metrics(
                metrics, self.strategy.eval_step(state, self.strategy.put_batch(batch)))
        results = training.summarize(jax.device_get(metrics))
        results["loss_batches"] = len(self.loss_batches)
        if self.config.model.kind == "encoder_only":
            results["baseline_accuracy"] = most_frequent_token_accuracy(self.loss_batches)
        return results

    def evaluate(self, state: Any) -> dict:
        """Loss metrics, and for translation BLEU, chrF and exact match (greedy)."""
        results = self.loss_metrics(state)
        if self.translate_fn is None:
            return results
        params = self.strategy.get_params(state)
        hypotheses = self.translations(params)
        results["bleu"], signature = bleu(hypotheses, self.references)
        results["chrf"], _ = chrf(hypotheses, self.references)
        results["exact_match"] = exact_match(hypotheses, self.references)
        if not self.signature_printed and jax.process_index() == 0:
            print(f"BLEU signature: {signature}")
            self.signature_printed = True
        return results


LOWER_IS_BETTER = ("loss", "perplexity")


def score(results: dict, metric: str) -> float:
    """The checkpoint score of ``results`` for train.best_metric: higher is better."""
    value = float(results[metric])
    return -value if metric in LOWER_IS_BETTER else value

"""The test report after training: the best checkpoint on the test split, printed.

Translation runs decode the test split greedily and print sacreBLEU, chrF, exact match
and examples (number_words: exact match per digit count); decoder_only/encoder_only runs
print their loss metrics. ``loop.main`` calls ``report_test`` once training is done.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from flax_transformer import checkpoint, data, evaluation, parallel, training
from flax_transformer.config import Config


def report_test(config: Config, workdir: str, splits: dict, tokenizer: data.Tokenizer,
                examples: int = 5, verbose: bool = True) -> dict:
    """Decodes the test split (eval.test_report: all or its first N) with the best
    checkpoint; prints scores and examples. decoder_only/encoder_only: loss metrics.

    For number_words it also prints (and returns) exact match per digit count 1 … 6, over
    all of 0 … 999 and per ending of the numbers from 1,000 up, saying which of those
    numbers training saw.

    Args:
      splits, tokenizer: the run's data, as ``loop.load_data`` returns them.
    """
    if not len(splits["test"]):
        if verbose:
            print("\nno test split (data.test_files is empty): no test report.")
        return {}
    if config.model.monolingual:
        return _report_test_text(config, workdir, splits, tokenizer, verbose)
    test = evaluation.first_examples(splits["test"], config.eval.test_examples)
    params, _, what = checkpoint.restore_params(workdir, training.param_shapes(config.model),
                                                "best")
    strategy = parallel.make_strategy(dataclasses.replace(
        config, train=dataclasses.replace(config.train, parallelism="pmap")))
    evaluator = evaluation.Evaluator(config, test, tokenizer, strategy, max_examples=0)
    hypotheses = evaluator.translations(params)
    references = evaluator.references
    sources = [pair["source"]
               for pair in evaluation.first_examples(test, len(hypotheses))]
    results = {"test_bleu": evaluation.bleu(hypotheses, references)[0],
               "test_chrf": evaluation.chrf(hypotheses, references)[0],
               "test_exact_match": evaluation.exact_match(hypotheses, references)}
    rows = []
    if config.data.dataset == "number_words":
        rows = evaluation.digit_classes(sources, hypotheses, references,
                                        {pair["source"] for pair in splits["train"]})
        results.update({f"test_exact_match_{row['key']}": row["exact_match"]
                        for row in rows})
    if verbose:
        _print_test_report(sources, hypotheses, references, what, rows, examples)
    return results


def _print_test_report(sources: list[str], hypotheses: list[str], references: list[str],
                       what: str, rows: list[dict], examples: int) -> None:
    print(f"\ntest split ({len(hypotheses)} sentences, greedy, {what}):")
    for line in evaluation.score_lines(hypotheses, references):
        print(f"  {line}")
    if rows:
        print("  exact match by digit count, and from 1,000 up by the last three digits "
              "(held out = never in the training split):")
        for line in evaluation.digit_class_lines(rows):
            print(f"    {line}")
    wrong = [index for index, (hypothesis, reference) in enumerate(
        zip(hypotheses, references, strict=True)) if hypothesis.strip() != reference.strip()]
    spread = np.linspace(0, len(hypotheses) - 1, min(examples, len(hypotheses))).astype(int)
    for title, indices in (("examples", spread.tolist()), ("wrong", wrong[:examples])):
        if indices:
            print(f"  {title}{f' ({len(wrong)} in all)' if title == 'wrong' else ''}:")
        for index in indices:
            verdict = ("" if hypotheses[index].strip() == references[index].strip()
                       else f"  (reference: {references[index]!r})")
            print(f"    {sources[index]!r} -> {hypotheses[index]!r}{verdict}")


def _report_test_text(config: Config, workdir: str, splits: dict, tokenizer: data.Tokenizer,
                      verbose: bool) -> dict:
    """The test report of a decoder_only/encoder_only run: loss metrics of the best
    checkpoint on the test split (all of it, or its first eval.test_report examples)."""
    test = evaluation.first_examples(splits["test"], config.eval.test_examples)
    # The restore target needs shapes only, and the evaluation the parameters only: no
    # initial state is built (op by op, seconds at larger presets) to be thrown away.
    shapes = training.train_state_shapes(config)
    params, _, what = checkpoint.restore_params(workdir, shapes, "best")
    strategy = parallel.make_strategy(config)
    evaluator = evaluation.Evaluator(config, test, tokenizer, strategy, max_batches=0)
    state = shapes.replace(step=np.zeros((), np.int32), params=params, opt_state=(),
                           ema_params=None)
    results = evaluator.loss_metrics(strategy.put_state(state))
    if verbose:
        print(f"\ntest split ({len(test)} sentences, {what}): " + ", ".join(
            f"{name} {value:.4g}" for name, value in results.items()))
    return {f"test_{name}": value for name, value in results.items()}

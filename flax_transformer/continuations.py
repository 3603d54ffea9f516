"""Measures a decoder_only run on number_words: are its continuations German numbers?

A continuation is valid when the whole output (prompt + continuation, up to EOS) is the
German word of some number in 0 … 999,999 (``data.number_text.german``). The
continuations come from the cached decoder, as decode.py makes them
(``language_model.continue_lines``). From the command line, score decode.py's output:

    printf 'drei\\nsieben\\n' | python decode.py --workdir runs/lm \\
        | python -m flax_transformer.continuations
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np

from flax_transformer import language_model
from flax_transformer.config import DecodeConfig
from flax_transformer.data import number_text

PROMPTS = ("ein", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn")


@functools.cache
def german_numbers() -> dict[str, int]:
    """German word → number for all of 0 … 999,999 (built once, ~1 s)."""
    return {number_text.german(n): n for n in range(number_text.LARGEST + 1)}


def valid_share(texts: list[str]) -> float:
    """Fraction of ``texts`` that are the German word of a number."""
    numbers = german_numbers()
    return sum(text in numbers for text in texts) / max(len(texts), 1)


def number_words_report(model: Any, params: Any, tokenizer: Any, samples: int = 20,
                        seed: int = 1) -> dict[str, Any]:
    """Greedy and sampled (temperature 1) continuations of ``PROMPTS``, scored.

    Args:
      model: a ``DecoderOnly``; params: its "params" collection.
      samples: sampled continuations per prompt.

    Returns:
      greedy_valid, sampled_valid (fractions), sampled_extended (fraction of samples longer
      than their prompt), sampled_distinct (distinct valid numbers), and the greedy texts
      under "greedy:PROMPT".
    """
    max_length = model.config.max_length

    def outputs(prompts, decode_config):
        return language_model.continue_lines(model, params, tokenizer, prompts, decode_config,
                                             max_length).outputs
    greedy = outputs(list(PROMPTS), DecodeConfig(method="greedy", max_extra_length=max_length))
    prompts = [prompt for prompt in PROMPTS for _ in range(samples)]
    sampled = outputs(prompts, DecodeConfig(method="sample", max_extra_length=max_length,
                                            seed=seed))
    numbers = german_numbers()
    return {"greedy_valid": valid_share(greedy), "sampled_valid": valid_share(sampled),
            "sampled_extended": float(np.mean([len(text) > len(prompt) for text, prompt
                                               in zip(sampled, prompts, strict=True)])),
            "sampled_distinct": float(len({numbers[t] for t in sampled if t in numbers})),
            **{f"greedy:{prompt}": text for prompt, text in zip(PROMPTS, greedy, strict=True)}}


def main() -> None:
    """Reads outputs (one a line) on stdin; prints how many are German numbers."""
    texts = sys.stdin.read().split("\n")   # lines as decode.py writes them: "\n" ends one
    texts = [text.removesuffix("\r") for text in texts[:-1 if texts[-1] == "" else None]]
    valid = sum(text in german_numbers() for text in texts)
    print(f"{valid} of {len(texts)} outputs are German number words "
          f"({100 * valid_share(texts):.1f} %)")


if __name__ == "__main__":
    main()

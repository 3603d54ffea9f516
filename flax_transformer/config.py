"""Frozen configuration dataclasses and their validation.

Every field carries a one-line doc (``field(..., metadata={"help": ...})``) that
``train.py --help`` prints. The named presets are in ``presets.py``; dotted overrides,
JSON and comparisons of configs in ``config_fields.py``. This module imports nothing
else of ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


def _field(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


_MAX_VOCABULARY = 2**24


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or impossible."""


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shapes and options of the Transformer."""

    kind: str = _field("encoder_decoder", "architecture: 'encoder_decoder' (translation, the "
                       "paper), 'decoder_only' (GPT-like language model on the target side's "
                       "text) or 'encoder_only' (BERT-like masked-token model on that text)")
    vocab_size: int = _field(37000, "size of the shared source/target subword vocabulary")
    d_model: int = _field(512, "width of embeddings and every residual stream")
    num_heads: int = _field(8, "attention heads h; d_model must be divisible by it")
    d_ff: int = _field(2048, "hidden width of the position-wise feed-forward network")
    num_encoder_layers: int = _field(6, "encoder layers N")
    num_decoder_layers: int = _field(6, "decoder layers N")
    dropout_rate: float = _field(0.1, "dropout on embeddings and every sub-layer output")
    max_length: int = _field(512, "longest sequence the positional table covers")
    share_embeddings: bool = _field(True, "one embedding matrix for source and target")
    tie_output: bool = _field(True, "output projection reuses the target embedding")
    norm: str = _field("post_ln", "'post_ln' (the paper) or 'pre_ln'")
    layer_norm_epsilon: float = _field(1e-6, "epsilon inside every LayerNorm")
    dtype: str = _field("float32", "compute dtype: 'float32' or 'bfloat16'")
    param_dtype: str = _field("float32", "parameter dtype (keep float32 for training)")
    pad_id: int = _field(0, "token id of padding; keys with it are masked")
    attention: str = _field("reference", "'reference' (the paper's equation, vmapped; "
                                         "records attention weights), 'xla' or 'cudnn' "
                                         "(jax.nn.dot_product_attention; cudnn: flash "
                                         "attention on NVIDIA GPUs, bfloat16)")
    scan_layers: bool = _field(False, "run each stack's N identical layers as one nn.scan "
                                      "(parameters stacked [N, ...]): one layer to compile "
                                      "instead of N, steps ~10% slower on CPU (README)")
    transposed_weight_gradients: bool = _field(
        True, "compute each Dense layer's weight gradient as (dY^T X)^T and the tied "
              "output projection's as (X^T dY)^T (linear.py): products YNNPACK takes on a "
              "CPU without copying dY (XLA's form of autodiff's runs on Eigen at a third "
              "of the rate); the same values up to rounding")

    kernel_layout: str = _field(
        "out_in", "how Dense kernels are stored: 'out_in' [O, I] (as torch.nn.Linear: the "
                  "weight gradient comes out in the kernel's layout, ~10% faster base steps "
                  "on CPU) or 'in_out' [I, O] (flax.linen.Dense's; runs saved before "
                  "2026-12-03). A run keeps the layout it was started with")

    def validate(self) -> None:
        _one_of(self, "kind", KINDS)
        _positive(self, "vocab_size", "d_model", "num_heads", "d_ff", "max_length")
        _non_negative(self, "num_encoder_layers", "num_decoder_layers")
        _positive(self, *_LAYERS_USED[self.kind])
        if self.d_model % self.num_heads:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.num_heads="
                f"{self.num_heads}; choose a head count that divides d_model."
            )
        _in_unit_interval(self, "dropout_rate")
        _one_of(self, "norm", ("post_ln", "pre_ln"))
        _one_of(self, "kernel_layout", KERNEL_LAYOUTS)
        _one_of(self, "dtype", ("float32", "bfloat16"))
        _one_of(self, "param_dtype", ("float32", "bfloat16"))
        _positive(self, "layer_norm_epsilon")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ConfigError(f"model.pad_id={self.pad_id} must be a token id in [0, "
                              f"model.vocab_size={self.vocab_size}).")
        if self.vocab_size > _MAX_VOCABULARY:
            raise ConfigError(f"model.vocab_size={self.vocab_size} is larger than "
                              f"{_MAX_VOCABULARY:,} (token ids are int32 and SentencePiece "
                              "needs far fewer); choose a smaller vocabulary.")
        _one_of(self, "attention", ("reference", "xla", "cudnn"))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def monolingual(self) -> bool:
        """Whether the model reads one text (the target side) rather than pairs."""
        return self.kind != "encoder_decoder"


KINDS = ("encoder_decoder", "decoder_only", "encoder_only")
KERNEL_LAYOUTS = ("out_in", "in_out")
_LAYERS_USED = {"encoder_decoder": (), "decoder_only": ("num_decoder_layers",),
                "encoder_only": ("num_encoder_layers",)}


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which text to read and how to cut it into batches."""

    dataset: str = _field(
        "number_words",
        "'number_words' (built in), 'parallel_text' (local aligned files), 'text' (local "
        "monolingual files PREFIX.TARGET_LANGUAGE, for decoder_only/encoder_only) or a TFDS "
        "name such as 'wmt14_translate/de-en'",
    )
    source_language: str = _field("en", "source side: language key or file suffix")
    target_language: str = _field("de", "target side: language key or file suffix; the "
                                        "text of decoder_only/encoder_only runs (a TFDS "
                                        "field name, e.g. 'text')")
    train_files: str = _field("", "parallel_text: path prefix of training files (PREFIX.src)")
    validation_files: str = _field("", "parallel_text: path prefix of validation files")
    test_files: str = _field("", "parallel_text: path prefix of test files")
    data_dir: str = _field("", "where prepared datasets live; '' = WORKDIR/data")
    vocab_size: int = _field(37000, "SentencePiece vocabulary size (shared source/target)")
    tokenizer_type: str = _field("unigram", "SentencePiece model type: 'unigram', 'bpe' or "
                                            "'char'")
    tokenizer_sentences: int = _field(1_000_000, "at most this many sentences train it")
    max_length: int = _field(256, "longest tokenized side; longer pairs are handled below")
    overlong: str = _field("drop", "pairs longer than max_length: 'drop' or 'truncate'")
    tokens_per_batch: int = _field(25000, "budget of source+target tokens in one global batch "
                                          "(decoder_only/encoder_only: of text tokens)")
    bucket_lengths: tuple[int, ...] = _field((), "padded lengths to use; () = powers of 2")
    packing: bool = _field(False, "pack several short pairs into one row")
    shuffle_seed: int = _field(0, "seed of the per-epoch shuffle")
    num_workers: int = _field(0, "grain worker processes (0 = in the main process)")
    eval_examples: int = _field(1000, "validation pairs decoded for BLEU (0 = all)")

    def validate(self) -> None:
        _positive(self, "vocab_size", "max_length", "tokens_per_batch", "tokenizer_sentences")
        _non_negative(self, "num_workers", "eval_examples")
        _one_of(self, "tokenizer_type", ("unigram", "bpe", "char"))
        _one_of(self, "overlong", ("drop", "truncate"))
        if self.tokens_per_batch < 2 * self.max_length:
            raise ConfigError(
                f"data.tokens_per_batch={self.tokens_per_batch} cannot hold one pair of "
                f"data.max_length={self.max_length}; raise it to at least "
                f"{2 * self.max_length}."
            )
        if any(length <= 0 for length in self.bucket_lengths):
            raise ConfigError("data.bucket_lengths must all be positive.")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The optimisation recipe, its schedule, evaluation and checkpoints."""

    num_steps: int = _field(100_000, "optimizer steps to train for")
    learning_rate_scale: float = _field(1.0, "multiplies the paper's d_model^-0.5 schedule")
    warmup_steps: int = _field(4000, "linear warm-up steps of the schedule")
    cooldown_steps: int = _field(0, "anneal the rate linearly to 0 over the last N steps "
                                    "(0 = the paper's schedule to the end)")
    adam_beta1: float = _field(0.9, "Adam beta1")
    adam_beta2: float = _field(0.98, "Adam beta2")
    adam_epsilon: float = _field(1e-9, "Adam epsilon")
    weight_decay: float = _field(0.0, "decoupled weight decay (AdamW); 0 = plain Adam")
    label_smoothing: float = _field(0.1, "label smoothing epsilon_ls")
    gradient_clip_norm: float = _field(0.0, "clip gradients to this global norm; 0 = off")
    gradient_accumulation: int = _field(1, "micro-batches per optimizer step")
    ema_decay: float = _field(0.0, "exponential moving average of parameters; 0 = off")
    parallelism: str = _field("pmap", "'pmap' (one replica per device; over a single "
                              "device, jit with pmap's numbers) or 'mesh' (jit+sharding)")
    reuse_host_memory: bool = _field(True, "CPU, glibc: a step's freed buffers stay mapped "
                                           "for the next (one step in flight); false = defaults")
    seed: int = _field(0, "root random seed (init, dropout)")
    log_every: int = _field(50, "steps between logged metrics")
    eval_every: int = _field(1000, "steps between evaluations (loss and BLEU)")
    checkpoint_every: int = _field(1000, "steps between checkpoints")
    keep_checkpoints: int = _field(5, "most recent checkpoints kept (plus the best)")
    average_last: int = _field(0, "at the end, average the last N checkpoints (paper: 5)")
    peak_flops: float = _field(0.0, "device peak FLOP/s for the MFU estimate; 0 = unknown")
    max_eval_length_extra: int = _field(50, "greedy eval decodes up to source length + this")
    best_metric: str = _field("bleu", "validation metric that picks the best checkpoint: "
                                      "'bleu', 'chrf', 'exact_match' (translation only), "
                                      "'accuracy', 'loss' or 'perplexity'")

    def validate(self) -> None:
        _positive(self, "num_steps", "warmup_steps", "log_every", "eval_every")
        _positive(self, "checkpoint_every", "keep_checkpoints", "gradient_accumulation")
        _positive(self, "learning_rate_scale", "adam_epsilon")
        _non_negative(self, "weight_decay", "gradient_clip_norm", "average_last",
                      "cooldown_steps")
        if self.cooldown_steps > self.num_steps:
            raise ConfigError(
                f"train.cooldown_steps={self.cooldown_steps} exceeds train.num_steps="
                f"{self.num_steps}; the cool-down is part of the run, choose at most "
                f"{self.num_steps}.")
        _non_negative(self, "peak_flops", "max_eval_length_extra")
        _in_unit_interval(self, "label_smoothing", "ema_decay", "adam_beta1", "adam_beta2")
        _one_of(self, "parallelism", ("pmap", "mesh"))
        _one_of(self, "best_metric", (*TRANSLATION_METRICS, "accuracy", "loss", "perplexity"))
        _seed_range(self, "seed")


TRANSLATION_METRICS = ("bleu", "chrf", "exact_match")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """How much of the validation and test splits each evaluation reads.

    Per preset: ``tiny``, ``default``, ``base``, ``big``, ``multi30k`` read the whole
    validation split for the loss (BLEU on its first ``data.eval_examples``) and the whole
    test split at the end; ``lm`` and ``mlm`` cap validation at 20 loss batches.
    """

    max_examples: int = _field(0, "validation uses only its first N examples, for loss and "
                                  "BLEU alike (0 = the whole split)")
    max_batches: int = _field(0, "validation loss covers at most N batches (0 = all)")
    test_report: str = _field("full", "after training: 'full' test split, 'off', or a number "
                                      "N = its first N examples")

    def validate(self) -> None:
        _non_negative(self, "max_examples", "max_batches")
        if self.test_report not in ("full", "off") and not (
                self.test_report.isdigit() and int(self.test_report) > 0):
            raise ConfigError(f"eval.test_report={self.test_report!r} must be 'full', 'off' "
                              "or a positive number of test examples.")

    @property
    def test_examples(self) -> int:
        """Test examples the final report reads: 0 = all (only meaningful unless 'off')."""
        return int(self.test_report) if self.test_report.isdigit() else 0


@dataclass(frozen=True, kw_only=True)
class DecodeConfig:
    """How decode.py and the evaluation search for outputs."""

    method: str = _field("beam", "search: 'greedy', 'beam' or 'sample'")
    beam_size: int = _field(4, "hypotheses kept per sentence by beam search")
    length_penalty: float = _field(0.6, "beam search: GNMT length penalty alpha, "
                                        "((5+|Y|)/6)^alpha")
    max_extra_length: int = _field(50, "outputs stop at source length + this many tokens")
    temperature: float = _field(1.0, "sampling: divide the logits by this")
    top_k: int = _field(0, "sampling: keep the k likeliest tokens; 0 = all")
    top_p: float = _field(1.0, "sampling: keep the smallest set of tokens with this "
                               "probability mass")
    seed: int = _field(0, "sampling: random seed (same seed, same samples)")
    tokens_per_batch: int = _field(4096, "source tokens per decoding batch (padding "
                                         "included; also the validation BLEU's batches)")
    nbest: int = _field(1, "beam search: output the N best hypotheses (N <= beam_size)")
    num_samples: int = _field(1, "sampling: output this many independent samples per input")
    min_length: int = _field(0, "EOS forbidden before this many output tokens (every "
                                "method; a translation has at least 1 token)")
    no_repeat_ngram_size: int = _field(0, "no n-gram of this size twice in an output "
                                          "(every method); 0 = off")

    def validate(self) -> None:
        _one_of(self, "method", ("greedy", "beam", "sample"))
        _positive(self, "beam_size", "tokens_per_batch", "temperature", "nbest",
                  "num_samples")
        _non_negative(self, "length_penalty", "max_extra_length", "top_k", "min_length",
                      "no_repeat_ngram_size")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"decode.top_p={self.top_p} must be in (0, 1].")
        _seed_range(self, "seed")
        if self.nbest > 1 and self.method != "beam":
            raise ConfigError(f"decode.nbest={self.nbest} needs method 'beam', not "
                              f"{self.method!r}; for several samples use num_samples.")
        if self.nbest > self.beam_size:
            raise ConfigError(f"decode.nbest={self.nbest} exceeds decode.beam_size="
                              f"{self.beam_size}; ask for at most beam_size hypotheses or "
                              "raise beam_size.")
        if self.num_samples > 1 and self.method != "sample":
            raise ConfigError(f"decode.num_samples={self.num_samples} needs method 'sample', "
                              f"not {self.method!r}; for several beam hypotheses use nbest.")


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything a run needs; saved as config.json in its workdir."""

    name: str = _field("base", "preset this config started from")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> Config:
        for section in (self.model, self.data, self.train, self.decode, self.eval):
            section.validate()
        _check_kind(self)
        if self.data.vocab_size != self.model.vocab_size:
            raise ConfigError(
                f"data.vocab_size={self.data.vocab_size} differs from model.vocab_size="
                f"{self.model.vocab_size}; set both to the same value."
            )
        if self.data.max_length + 1 > self.model.max_length:
            raise ConfigError(
                f"data.max_length={self.data.max_length} (+1 for EOS) exceeds "
                f"model.max_length={self.model.max_length}; raise model.max_length."
            )
        return self


def _check_kind(config: Config) -> None:
    """Refuses the combinations a model kind cannot run."""
    kind = config.model.kind
    if config.model.monolingual and config.train.best_metric in TRANSLATION_METRICS:
        raise ConfigError(
            f"train.best_metric={config.train.best_metric!r} needs translations, which a "
            f"model.kind={kind!r} run does not make; choose 'accuracy', 'loss' or "
            "'perplexity'.")
    if not config.model.monolingual and config.data.dataset == "text":
        raise ConfigError(
            "data.dataset='text' is monolingual text; train it with model.kind="
            "'decoder_only' or 'encoder_only', or give aligned files with "
            "data.dataset='parallel_text'.")
    if kind == "encoder_only" and config.data.packing:
        raise ConfigError(
            "data.packing=true is not available for model.kind='encoder_only' (its "
            "positions would not restart in each packed sentence); set data.packing=false.")


def _check(section: Any, names: tuple[str, ...], ok, requirement: str) -> None:
    section_name = type(section).__name__.replace("Config", "").lower()
    for name in names:
        value = getattr(section, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{section_name}.{name}={value!r} must be a number.")
        if not math.isfinite(value):
            raise ConfigError(f"{section_name}.{name}={value!r} must be a finite number.")
        if not ok(value):
            raise ConfigError(f"{section_name}.{name}={value!r} must be {requirement}.")


def _positive(section: Any, *names: str) -> None:
    _check(section, names, lambda v: v > 0, "positive")


def _non_negative(section: Any, *names: str) -> None:
    _check(section, names, lambda v: v >= 0, "zero or positive")


def _in_unit_interval(section: Any, *names: str) -> None:
    _check(section, names, lambda v: 0 <= v < 1, "in [0, 1)")


def _seed_range(section: Any, name: str) -> None:
    _check(section, (name,), lambda v: 0 <= v < 2**32, "in [0, 2**32)")


def _one_of(section: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(section, name)
    if value not in choices:
        section_name = type(section).__name__.replace("Config", "").lower()
        raise ConfigError(f"{section_name}.{name}={value!r} must be one of {choices}.")


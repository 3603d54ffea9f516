"""Frozen configuration dataclasses, named presets and dotted command-line overrides.

Every field carries a one-line doc (``field(..., metadata={"help": ...})``) that
``train.py --help`` prints. This module imports nothing else of ours.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
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
    parallelism: str = _field("pmap", "'pmap' (one replica per device) or 'mesh' (jit+sharding)")
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
                                "method)")
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


# --------------------------------------------------------------------------- presets


def _base() -> Config:
    return Config(name="base")


def _big() -> Config:
    model = ModelConfig(d_model=1024, num_heads=16, d_ff=4096, dropout_rate=0.3)
    return Config(name="big", model=model)


def _tiny() -> Config:
    """A model for tests and CPU runs on number_words (0.96 M parameters)."""
    model = ModelConfig(
        vocab_size=256, d_model=128, num_heads=4, d_ff=512,
        num_encoder_layers=2, num_decoder_layers=2, max_length=64, dropout_rate=0.1,
    )
    # Packed rows: a number is 2-12 pieces, so a padded row would be mostly padding.
    data = DataConfig(vocab_size=256, max_length=40, tokens_per_batch=4096,
                      bucket_lengths=(16, 24, 32, 40), packing=True, eval_examples=500,
                      tokenizer_sentences=20_000)
    train = TrainConfig(
        num_steps=500, learning_rate_scale=0.5, warmup_steps=100, log_every=50,
        eval_every=250, checkpoint_every=250, keep_checkpoints=3, best_metric="exact_match",
    )
    decode = DecodeConfig(tokens_per_batch=2048)
    return Config(name="tiny", model=model, data=data, train=train, decode=decode)


def _default() -> Config:
    """What ``python train.py`` runs: tiny on the built-in number_words task, 1,000 steps.

    500 steps (tiny's) leave the 6-digit class at 96–99 % exact match; 1,000 reach at least
    99.7 % in every digit class in about 2 min 10 s on two quiet CPU cores (README).
    """
    tiny = _tiny()
    train = dataclasses.replace(tiny.train, num_steps=1000, eval_every=500,
                                checkpoint_every=500)
    return dataclasses.replace(tiny, name="default", train=train)


def _multi30k() -> Config:
    """A small Transformer for Multi30k EN→DE, sized for one hour on a 2-core CPU.

    Set data.{train,validation,test}_files. The recipe: packed 4,000-token batches, the
    paper's schedule with an 800-step linear cool-down to 0, checkpoints every 100 steps
    and the average of the last 5, scored on validation (README: command and result).
    """
    model = ModelConfig(
        vocab_size=8000, d_model=256, num_heads=4, d_ff=1024,
        num_encoder_layers=3, num_decoder_layers=3, max_length=128, dropout_rate=0.1,
    )
    data = DataConfig(
        dataset="parallel_text", vocab_size=8000, max_length=64, tokens_per_batch=4000,
        bucket_lengths=(16, 24, 32, 48, 64), packing=True, eval_examples=300,
    )
    train = TrainConfig(num_steps=2200, learning_rate_scale=1.0, warmup_steps=800,
                        cooldown_steps=800, eval_every=550, checkpoint_every=100,
                        average_last=5)
    return Config(name="multi30k", model=model, data=data, train=train)


def _lm() -> Config:
    """A GPT-like decoder-only language model on the German side of number_words.

    Characters as tokens (tokenizer_type='char'): a prompt such as "drei" is then cut into
    tokens exactly as the same letters are inside "dreihundert…", so the model can continue
    any prefix (a subword vocabulary would cut "drei" differently on its own). Packed rows,
    no label smoothing; validation loss and perplexity. Measured (README): validation
    perplexity 1.41 per character after 400 steps (157 s of CPU time); decode.py's greedy
    continuations of ten prompts ("ein" … "zehn") all valid German numbers, 77 % of 200
    samples at temperature 1 (``continuations`` scores them).
    """
    model = ModelConfig(
        kind="decoder_only", vocab_size=64, d_model=128, num_heads=4, d_ff=512,
        num_encoder_layers=0, num_decoder_layers=3, max_length=80, dropout_rate=0.0,
    )
    data = DataConfig(vocab_size=64, tokenizer_type="char", max_length=72,
                      tokens_per_batch=4608, packing=True, tokenizer_sentences=20_000)
    train = TrainConfig(
        num_steps=400, learning_rate_scale=0.7, warmup_steps=100, label_smoothing=0.0,
        log_every=50, eval_every=200, checkpoint_every=200, keep_checkpoints=3,
        best_metric="perplexity",
    )
    evaluation = EvalConfig(max_batches=20)
    # A continuation may fill every position the model knows (a prompt "drei" may become
    # a 60-letter number); greedy by default, as language models are usually decoded.
    decode = DecodeConfig(method="greedy", max_extra_length=80)
    return Config(name="lm", model=model, data=data, train=train, eval=evaluation,
                  decode=decode)


def _mlm() -> Config:
    """A BERT-like encoder-only masked-token model on the German side of number_words.

    15 % of the tokens are chosen (80 % become <mask>, 10 % a random piece, 10 % stay);
    metrics: masked-token loss and accuracy, and the accuracy of always answering the
    most frequent token on the same positions. The numbers are drawn at random, so most
    masked pieces (a digit's word) cannot be known from their context: the model can learn
    the grammar around them, not the digits, and its accuracy stays far below 100 %.
    Measured (README): 12.6 % validation masked accuracy against 7.8 % for the commonest
    token (600 steps, 144 s of CPU time).
    """
    model = ModelConfig(
        kind="encoder_only", vocab_size=256, d_model=128, num_heads=4, d_ff=512,
        num_encoder_layers=3, num_decoder_layers=0, max_length=32, dropout_rate=0.1,
    )
    data = DataConfig(vocab_size=256, max_length=24, tokens_per_batch=2048,
                      bucket_lengths=(8, 16, 24), tokenizer_sentences=20_000)
    train = TrainConfig(
        num_steps=600, learning_rate_scale=0.5, warmup_steps=100, label_smoothing=0.0,
        log_every=50, eval_every=300, checkpoint_every=300, keep_checkpoints=3,
        best_metric="accuracy",
    )
    evaluation = EvalConfig(max_batches=20)
    return Config(name="mlm", model=model, data=data, train=train, eval=evaluation)


PRESETS = {
    "tiny": _tiny, "base": _base, "big": _big, "default": _default, "multi30k": _multi30k,
    "lm": _lm, "mlm": _mlm,
}


def get_config(name: str = "default") -> Config:
    """Returns the preset called ``name`` (one of PRESETS)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    return PRESETS[name]().validate()


# --------------------------------------------------------------------------- overrides


def _sections(config: Config) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if dataclasses.is_dataclass(getattr(config, f.name))}


def iter_fields(config: Config):
    """Yields (dotted_name, type, default, help) for every leaf field."""
    for section_name, section in _sections(config).items():
        hints = typing.get_type_hints(type(section))
        for f in dataclasses.fields(section):
            yield (f"{section_name}.{f.name}", hints[f.name], getattr(section, f.name),
                   f.metadata.get("help", ""))


def _parse_value(dotted: str, kind: Any, text: str) -> Any:
    """Parses ``text`` as a value of ``kind`` or raises ConfigError naming the field."""
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        if kind in (int, float, str):
            return kind(text)
        if typing.get_origin(kind) is tuple:
            parts = [p for p in text.replace("(", "").replace(")", "").split(",") if p.strip()]
            return tuple(int(p) for p in parts)
    except ValueError:
        pass
    name = getattr(kind, "__name__", str(kind))
    raise ConfigError(f"--config.{dotted}={text!r} is not a valid {name}.")


def override(config: Config, assignments: dict[str, str]) -> Config:
    """Applies ``{"train.num_steps": "300"}``-style string overrides and validates."""
    known = {name: kind for name, kind, _, _ in iter_fields(config)}
    sections = _sections(config)
    for dotted, text in assignments.items():
        if dotted not in known:
            raise ConfigError(
                f"unknown config key {dotted!r}; see --help for the list of fields."
            )
        section_name, field_name = dotted.split(".", 1)
        value = _parse_value(dotted, known[dotted], text)
        sections[section_name] = dataclasses.replace(
            sections[section_name], **{field_name: value}
        )
    return dataclasses.replace(config, **sections).validate()


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(values: dict[str, Any]) -> Config:
    """Rebuilds a Config from ``to_dict`` output (e.g. a run's config.json).

    Values are checked as strictly as the command line checks them: of the field's type,
    and valid.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"a config is a JSON object of sections, not {type(values).__name__}.")
    sections = {}
    for f in dataclasses.fields(Config):
        if f.name == "name":
            continue
        section_type = typing.get_type_hints(Config)[f.name]
        hints = typing.get_type_hints(section_type)
        raw = values.get(f.name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"config section {f.name!r} is {json.dumps(raw)}, not an object "
                              "of fields.")
        raw = dict(raw)
        unknown = set(raw) - set(hints)
        if unknown:
            raise ConfigError(f"unknown keys in config section {f.name!r}: {sorted(unknown)}")
        for key in raw:
            raw[key] = _typed(f"{f.name}.{key}", hints[key], raw[key])
        sections[f.name] = section_type(**raw)
    return Config(name=str(values.get("name", "custom")), **sections).validate()


def _typed(dotted: str, kind: Any, value: Any) -> Any:
    """``value`` from JSON as a value of ``kind``, or a ConfigError naming the field."""
    if typing.get_origin(kind) is tuple:
        if isinstance(value, (list, tuple)) and all(_is_int(item) for item in value):
            return tuple(value)
    elif kind is float and (_is_int(value) or isinstance(value, float)):
        return float(value)
    elif (kind is int and _is_int(value)) or (kind in (bool, str) and type(value) is kind):
        return value
    name = getattr(kind, "__name__", "list of ints")
    raise ConfigError(f"{dotted}={json.dumps(value)} is not a valid {name}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def to_json(config: Config) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


def from_json(text: str) -> Config:
    return from_dict(json.loads(text))


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


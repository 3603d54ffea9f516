"""The paper's training recipe as pure functions: schedule, optimizer, state, train/eval steps.

Nothing here knows about devices: ``parallel.py`` compiles these steps with pmap or with
jit over a mesh, and ``loop.py`` drives them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flax_transformer import losses, masking
from flax_transformer.config import Config, ModelConfig, TrainConfig
from flax_transformer.data.tokenizer import MASK_ID
from flax_transformer.model import DecoderOnly, EncoderOnly, Transformer, stack_layers

Batch = dict[str, jnp.ndarray]
Metrics = dict[str, tuple[jnp.ndarray, jnp.ndarray]]
_MASK_STREAM = 0x4D41534B  # folded into a step's key for the masking draws ("MASK")


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree of arrays), and the optimizer.

    ``tx`` is built once by create_train_state and kept, as in Flax's TrainState, as a
    static field: it is part of the tree's structure, never a leaf, so checkpoints hold
    the arrays only.
    """

    step: jnp.ndarray                 # int32 [], optimizer steps taken
    params: Any
    opt_state: Any
    ema_params: Any                   # same tree as params, or None when EMA is off
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def learning_rate_schedule(train: TrainConfig, d_model: int) -> optax.Schedule:
    """lrate = scale · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5), step counted from 1.

    With ``train.cooldown_steps = C > 0`` the rate is further multiplied by
    min(1, (num_steps - step + 1) / C): it falls linearly to 0 over the last C steps (not in
    the paper; a common choice for a run cut short of convergence, such as the multi30k
    preset's hour on a CPU).
    """
    def schedule(count):
        step = jnp.asarray(count, jnp.float32) + 1.0
        rate = (train.learning_rate_scale * d_model ** -0.5
                * jnp.minimum(step ** -0.5, step * train.warmup_steps ** -1.5))
        if train.cooldown_steps:
            remaining = train.num_steps - step + 1.0
            rate = rate * jnp.clip(remaining / train.cooldown_steps, 0.0, 1.0)
        return rate
    return schedule


def make_optimizer(train: TrainConfig, d_model: int) -> optax.GradientTransformation:
    """Adam(β1, β2, ε) on the paper's schedule; optional clipping, weight decay, accumulation."""
    schedule = learning_rate_schedule(train, d_model)
    if train.weight_decay > 0:
        adam = optax.adamw(schedule, train.adam_beta1, train.adam_beta2, train.adam_epsilon,
                           weight_decay=train.weight_decay)
    else:
        adam = optax.adam(schedule, train.adam_beta1, train.adam_beta2, train.adam_epsilon)
    if train.gradient_clip_norm > 0:
        adam = optax.chain(optax.clip_by_global_norm(train.gradient_clip_norm), adam)
    if train.gradient_accumulation > 1:
        adam = optax.MultiSteps(adam, every_k_schedule=train.gradient_accumulation)
    return adam


def _encoder_decoder_logits(model, params, batch, deterministic, rngs):
    return model.apply({"params": params}, **_model_inputs(batch), deterministic=deterministic,
                       rngs=rngs)


def _decoder_only_logits(model, params, batch, deterministic, rngs):
    return model.apply({"params": params}, batch["target_input"], batch.get("target_segments"),
                       batch.get("target_positions"), deterministic=deterministic, rngs=rngs)


def _encoder_only_logits(model, params, batch, deterministic, rngs):
    logits, _ = model.apply({"params": params}, batch["masked_input"],
                            batch.get("target_segments"), deterministic=deterministic,
                            rngs=rngs)
    return logits


def _next_token_targets(batch, config, key, row_offset):
    """Translation and language modelling: every non-pad token of target_output."""
    del key, row_offset
    targets = batch["target_output"]
    return batch, targets, (targets != config.model.pad_id).astype(jnp.float32)


def _masked_token_targets(batch, config, key, row_offset):
    """Masked-token model: target_output corrupted by ``masking`` (unless the batch already
    carries fixed "masked_input"/"mask_weights", as validation batches do)."""
    targets = batch["target_output"]                                          # [B, T]
    if "masked_input" not in batch:
        if key is None:
            raise ValueError("an encoder_only evaluation batch needs 'masked_input' and "
                             "'mask_weights' (see training.add_eval_masks).")
        inputs, weights = masking.mask_tokens(
            key, targets, targets > MASK_ID, mask_id=MASK_ID, random_low=MASK_ID + 1,
            random_high=config.model.vocab_size, row_offset=row_offset)
        batch = {**batch, "masked_input": inputs, "mask_weights": weights}
    return batch, targets, batch["mask_weights"].astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Kind:
    """What differs between the model kinds; everything else is shared.

    Attributes:
      module: the Flax module class (model.py).
      init_inputs: positional token arguments of ``module.init`` for a dummy [1, L] batch.
      logits: (module, params, batch, deterministic, rngs) -> logits [B, T, V].
      targets: (batch, config, key, row_offset) -> (batch, targets [B, T], weights [B, T]);
        the key (None in evaluation) feeds the masked-token corruption.
    """

    module: type
    init_inputs: Callable[[jnp.ndarray], tuple]
    logits: Callable[..., jnp.ndarray]
    targets: Callable[..., tuple[Batch, jnp.ndarray, jnp.ndarray]]


KINDS = {
    "encoder_decoder": Kind(Transformer, lambda tokens: (tokens, tokens),
                            _encoder_decoder_logits, _next_token_targets),
    "decoder_only": Kind(DecoderOnly, lambda tokens: (tokens,), _decoder_only_logits,
                         _next_token_targets),
    "encoder_only": Kind(EncoderOnly, lambda tokens: (tokens,), _encoder_only_logits,
                         _masked_token_targets),
}


def init_params(model_config: ModelConfig, rng: jax.Array, length: int = 8) -> Any:
    """Initial parameters of the model of ``model_config.kind`` (shapes do not depend on
    length).

    A ``scan_layers`` model starts from the same numbers as its unrolled twin: the layers
    are initialised one by one and stacked.
    """
    if model_config.scan_layers:
        unrolled = dataclasses.replace(model_config, scan_layers=False)
        return stack_layers(init_params(unrolled, rng, length), unrolled)
    kind = KINDS[model_config.kind]
    tokens = jnp.ones((1, length), jnp.int32)
    return kind.module(model_config).init(rng, *kind.init_inputs(tokens))["params"]


def create_train_state(config: Config, rng: jax.Array) -> TrainState:
    """A fresh state: initial parameters, optimizer state, step 0."""
    params = init_params(config.model, rng)
    optimizer = make_optimizer(config.train, config.model.d_model)
    ema = params if config.train.ema_decay > 0 else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), ema_params=ema, tx=optimizer)


def train_state_shapes(config: Config) -> TrainState:
    """The TrainState's tree, shapes and dtypes, computing nothing: a restore target
    (building real initial parameters op by op costs seconds of start-up)."""
    return jax.eval_shape(functools.partial(create_train_state, config), jax.random.key(0))


def param_shapes(model_config: ModelConfig) -> Any:
    """The parameters' tree, shapes and dtypes, computing nothing: inference's restore
    target (no optimizer state is traced, and none is read)."""
    return jax.eval_shape(functools.partial(init_params, model_config), jax.random.key(0))


def _model_inputs(batch: Batch) -> dict[str, jnp.ndarray | None]:
    return {
        "source_tokens": batch["source"], "target_tokens": batch["target_input"],
        "source_segments": batch.get("source_segments"),
        "target_segments": batch.get("target_segments"),
        "source_positions": batch.get("source_positions"),
        "target_positions": batch.get("target_positions"),
    }


def _psum(tree: Any, axis_name: str | None) -> Any:
    # Over one device (pmap on a machine with one CPU or GPU) the sum is the tree itself;
    # XLA:CPU would still run the all-reduce, with a copy of every gradient (+0.2 GB of
    # temporaries at base). The axis size is global: it counts every process's devices.
    if axis_name is None or jax.lax.axis_size(axis_name) == 1:
        return tree
    return jax.lax.psum(tree, axis_name)


def _row_offset(batch: Batch, axis_name: str | None) -> jnp.ndarray | int:
    """Index of this device's first row in the global batch (0 without pmap)."""
    if axis_name is None:
        return 0
    return jax.lax.axis_index(axis_name) * batch["target_output"].shape[0]


def train_step(state: TrainState, batch: Batch, rng: jax.Array, *, config: Config,
               axis_name: str | None = None,
               pmap_replica: bool = False) -> tuple[TrainState, Metrics]:
    """One optimizer step on label-smoothed cross-entropy per target token, any model kind.

    Under pmap (``axis_name`` set) every device holds a slice of the global batch; the
    loss is normalised by the GLOBAL token count and the per-device gradients are summed,
    so the update equals the single-device update on the whole batch.

    Args:
      state: the TrainState (replicated under pmap).
      batch: int32 arrays "source" [B, S], "target_input" [B, T], "target_output" [B, T]
        (+ optional segments/positions for packed rows). decoder_only reads the target
        side only; encoder_only reads "target_output" and corrupts it (``masking``).
      rng: PRNG key of this step (folded by device here under pmap for dropout; the
        masking key is folded by global row instead, see ``masking``).
      pmap_replica: without ``axis_name``, fold the dropout key as pmap's replica 0 does:
        the one-device stand-in for pmap (``parallel.make_strategy``) computes pmap's
        numbers.

    Returns:
      the new state and metrics as (sum, weight) pairs.
    """
    kind = KINDS[config.model.kind]
    model = kind.module(config.model)
    batch, targets, weights = kind.targets(batch, config, jax.random.fold_in(rng, _MASK_STREAM),
                                           _row_offset(batch, axis_name))
    if axis_name is not None:
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    elif pmap_replica:
        rng = jax.random.fold_in(rng, 0)
    global_weight = _psum(jnp.sum(weights), axis_name)

    def loss_fn(params):
        logits = kind.logits(model, params, batch, False, {"dropout": rng})   # [B, T, V]
        loss_sum, weight = losses.label_smoothed_cross_entropy(
            logits, targets, weights, config.train.label_smoothing)
        return loss_sum / jnp.maximum(global_weight, 1.0), (logits, loss_sum, weight)

    grads, (logits, loss_sum, weight) = jax.grad(loss_fn, has_aux=True)(state.params)
    grads = _psum(grads, axis_name)         # a sum of per-device shares of one global mean
    grad_norm = optax.global_norm(grads)
    old_params = _after(state.params, grad_norm)
    updates, opt_state = state.tx.update(grads, state.opt_state, old_params)
    params = optax.apply_updates(old_params, updates)
    metrics = {"loss": (loss_sum, weight), **losses.token_metrics(logits, targets, weights),
               "grad_norm": (grad_norm, jnp.float32(1.0))}
    metrics = _psum(metrics, axis_name)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=_ema(state.ema_params, params, config.train.ema_decay))
    return new_state, metrics


def _after(params: Any, grad_norm: jnp.ndarray) -> Any:
    """``params`` unchanged, read only once every gradient exists.

    The state is donated, so each parameter's update is written into the parameter's own
    buffer. XLA may do that in place only when it can see that every other read of the
    old value comes first; it sees data dependencies, and a layer's input gradient reads
    its weights without leading to that layer's update. So XLA copied every weight
    matrix at the start of each step (96 copies, 176 MB at base). Subtracting a zero
    computed from the global gradient norm, which every backward matmul leads to, makes
    the update wait for all of them. ``isnan(·) · 0`` is +0 for any norm, even inf or
    NaN, and ``p − (+0) = p`` bit for bit, -0 included (tests/test_training.py).
    """
    zero = jnp.isnan(grad_norm).astype(jnp.float32) * 0.0
    return jax.tree.map(lambda leaf: leaf - zero.astype(leaf.dtype), params)


def _ema(ema_params: Any, params: Any, decay: float) -> Any:
    if ema_params is None:
        return None
    return jax.tree.map(lambda ema, new: decay * ema + (1.0 - decay) * new, ema_params, params)


def eval_step(params: Any, batch: Batch, *, config: Config,
              axis_name: str | None = None) -> Metrics:
    """Validation loss, NLL and accuracy of a batch (no dropout), as (sum, weight) pairs.

    For encoder_only the batch must carry its fixed corruption (``add_eval_masks``), so
    that every evaluation scores the same masked positions.
    """
    kind = KINDS[config.model.kind]
    batch, targets, weights = kind.targets(batch, config, None, 0)
    logits = kind.logits(kind.module(config.model), params, batch, True, None)
    loss = losses.label_smoothed_cross_entropy(logits, targets, weights,
                                               config.train.label_smoothing)
    return _psum({"loss": loss, **losses.token_metrics(logits, targets, weights)}, axis_name)


def add_eval_masks(batch: dict, config: Config, index: int) -> dict:
    """A validation batch of an encoder_only run with its fixed corruption added.

    The key depends on train.seed and the batch's index only, so the same positions are
    scored at every evaluation and on any number of devices.
    """
    if config.model.kind != "encoder_only":
        return batch
    key = jax.random.fold_in(jax.random.key(config.train.seed), index)
    masked, _, _ = _masked_token_targets({"target_output": jnp.asarray(batch["target_output"])},
                                         config, key, 0)
    return {**batch, "masked_input": np.asarray(masked["masked_input"]),
            "mask_weights": np.asarray(masked["mask_weights"])}


def summarize(metrics: Metrics) -> dict[str, float]:
    """(sum, weight) pairs -> plain floats; adds perplexity from the NLL."""
    summary = {name: float(total) / max(float(weight), 1e-9)
               for name, (total, weight) in metrics.items()}
    if "nll" in summary:
        summary["perplexity"] = float(jnp.exp(jnp.minimum(summary["nll"], 50.0)))
    return summary


def add_metrics(left: Metrics | None, right: Metrics) -> Metrics:
    """Sums two metric dicts of (sum, weight) pairs."""
    if left is None:
        return right
    return jax.tree.map(jnp.add, left, right)


@functools.cache
def parameter_count(model_config: ModelConfig) -> int:
    """Number of parameters, computed from shapes only (no memory, no compute)."""
    shapes = jax.eval_shape(lambda: init_params(model_config, jax.random.key(0)))
    return sum(leaf.size for leaf in jax.tree.leaves(shapes))


def train_flops_per_step(model_config: ModelConfig, batch_size: int, source_length: int,
                         target_length: int) -> float:
    """Model FLOPs of one training step (forward + backward = 3 × forward matmuls).

    Counts every matmul of the model (projections, attention scores and mixing, FFN and the
    output projection) at 2 FLOPs per multiply-add; ignores softmax, norms and the optimizer.
    decoder_only and encoder_only read target_length tokens a row (source_length unused).
    """
    d, f, v = model_config.d_model, model_config.d_ff, model_config.vocab_size
    s, t = source_length, target_length
    layer = t * (4 * d * d + 2 * d * f) + 2 * t * t * d        # self-attention + FFN, T tokens
    if model_config.kind == "decoder_only":
        forward = model_config.num_decoder_layers * layer + t * d * v
    elif model_config.kind == "encoder_only":                 # + head transform and output
        forward = model_config.num_encoder_layers * layer + t * (d * d + d * v)
    else:
        encoder = model_config.num_encoder_layers * (s * (4 * d * d + 2 * d * f) + 2 * s * s * d)
        decoder = model_config.num_decoder_layers * (
            layer + t * 2 * d * d + s * 2 * d * d + 2 * t * s * d)  # cross Q/O, K/V, scores
        forward = encoder + decoder + t * d * v
    return 3.0 * 2 * batch_size * forward

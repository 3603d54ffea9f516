"""Parity with PyTorch: torch.nn.Transformer's weights copied into ours, same function.

``TorchSeq2Seq`` is a post-LN, ReLU ``torch.nn.Transformer`` (batch_first, LayerNorm
epsilon 1e-6) without the final encoder/decoder LayerNorms torch adds (the paper's post-LN
has none), with embeddings × √d_model + interleaved sinusoidal positions, an output
projection, our dropout sites and our tying. ``check_logits`` copies every weight into our
``Transformer`` and compares eval-mode logits at non-pad target positions;
``check_training`` trains both for a few steps with our loss, Adam and schedule
(``torch_train_step``, also what ``train_step.py`` times) and compares the losses. The
script runs both on a small model, untied and tied, and exits non-zero if any differs.

Needs the ``bench`` extra; on a CPU-only machine ``pip install torch==2.13.0`` (or
``pip install torch --index-url https://download.pytorch.org/whl/cpu``) avoids the
multi-GB CUDA build. Run: ``python benchmarks/torch_parity.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn

from flax_transformer import training
from flax_transformer.config import Config, DataConfig, ModelConfig
from flax_transformer.model import Transformer, stack_layers
from flax_transformer.training import learning_rate_schedule

PAD_ID, BOS_ID = 0, 2


class TorchSeq2Seq(nn.Module):
    """torch.nn.Transformer plus the paper's embeddings, positions and output projection.

    Built as our model is: embeddings shared and the output projection tied when the
    config says so, dropout only where ours has it (embeddings, every sub-layer output),
    and torch's attention biases, which ours lacks, zero and frozen.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        d_model = self.d_model = config.d_model
        self.source_embedding = nn.Embedding(config.vocab_size, d_model)
        self.target_embedding = (self.source_embedding if config.share_embeddings
                                 else nn.Embedding(config.vocab_size, d_model))
        self.embedding_dropout = nn.Dropout(config.dropout_rate)
        self.transformer = nn.Transformer(
            d_model=d_model, nhead=config.num_heads,
            num_encoder_layers=config.num_encoder_layers,
            num_decoder_layers=config.num_decoder_layers, dim_feedforward=config.d_ff,
            dropout=config.dropout_rate, activation="relu",
            layer_norm_eps=config.layer_norm_epsilon, batch_first=True, norm_first=False)
        self.transformer.encoder.norm = nn.Identity()
        self.transformer.decoder.norm = nn.Identity()
        self.projection = nn.Linear(d_model, config.vocab_size, bias=not config.tie_output)
        if config.tie_output:
            self.projection.weight = self.target_embedding.weight
        self.register_buffer("positions", torch_sinusoidal(config.max_length, d_model))
        for module in self.modules():
            if isinstance(module, nn.MultiheadAttention):
                module.dropout = 0.0            # ours drops sub-layer outputs only
                for bias in (module.in_proj_bias, module.out_proj.bias):
                    bias.requires_grad_(False)  # ours has none: zero and frozen
                    nn.init.zeros_(bias)
            elif isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
                module.dropout.p = 0.0          # nor the FFN hidden

    def embed(self, embedding: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, L] -> embedding × √D + PE[:L], [B, L, D]."""
        scaled = embedding(tokens) * math.sqrt(self.d_model)
        return self.embedding_dropout(scaled + self.positions[: tokens.shape[1]])

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """source [B, S], target [B, T] -> logits [B, T, V]."""
        length = target.shape[1]
        # torch masks say True = may NOT attend, the opposite of ours.
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=target.device),
                            diagonal=1)
        hidden = self.transformer(
            self.embed(self.source_embedding, source),
            self.embed(self.target_embedding, target),
            tgt_mask=causal,
            src_key_padding_mask=source == PAD_ID,
            tgt_key_padding_mask=target == PAD_ID,
            memory_key_padding_mask=source == PAD_ID)
        return self.projection(hidden)


def torch_sinusoidal(length: int, d_model: int) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/D)), PE[pos, 2i+1] = cos(same), [length, D]."""
    positions = torch.arange(length, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)
    angles = positions / torch.pow(10000.0, two_i / d_model)                # [L, D/2]
    table = torch.zeros(length, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return table.float()


def randomize_norms_and_biases(model: nn.Module, generator: torch.Generator) -> None:
    """torch starts LayerNorms at (1, 0) and MHA biases at 0; draw them so each is checked."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and ("norm" in name or name.endswith("bias")):
                noise = 0.2 * torch.randn(parameter.shape, generator=generator)
                parameter.copy_((1.0 if name.endswith("weight") else 0.0) + noise)


def attention_params(attention: nn.MultiheadAttention) -> dict:
    """torch in_proj [3D, D] / out_proj -> our bias-free query/key/value/output kernels
    ([O, I], as torch stores them; ``copy_weights`` transposes them for "in_out")."""
    weights = attention.in_proj_weight.chunk(3)
    return {"query": {"kernel": weights[0]}, "key": {"kernel": weights[1]},
            "value": {"kernel": weights[2]}, "output": {"kernel": attention.out_proj.weight}}


def dense_params(linear: nn.Linear) -> dict:
    return {"kernel": linear.weight, "bias": linear.bias}


def norm_params(norm: nn.LayerNorm) -> dict:
    return {"norm": {"scale": norm.weight, "bias": norm.bias}}


def encoder_layer_params(layer: nn.TransformerEncoderLayer) -> dict:
    return {
        "self_attention": attention_params(layer.self_attn),
        "attention_residual": norm_params(layer.norm1),
        "feed_forward": {"hidden": dense_params(layer.linear1),
                         "output": dense_params(layer.linear2)},
        "feed_forward_residual": norm_params(layer.norm2),
    }


def decoder_layer_params(layer: nn.TransformerDecoderLayer) -> dict:
    return {
        "self_attention": attention_params(layer.self_attn),
        "self_residual": norm_params(layer.norm1),
        "encoder_attention": attention_params(layer.multihead_attn),
        "cross_residual": norm_params(layer.norm2),
        "feed_forward": {"hidden": dense_params(layer.linear1),
                         "output": dense_params(layer.linear2)},
        "feed_forward_residual": norm_params(layer.norm3),
    }


def copy_weights(torch_model: TorchSeq2Seq, shapes: dict, kernel_layout: str) -> dict:
    """Our params (same tree and shapes as ``shapes``) holding the torch model's weights;
    Dense kernels [O, I] as torch's, or [I, O] for ``kernel_layout`` "in_out"."""
    transformer = torch_model.transformer
    params = {
        "source_embedder": {"embedding": {"embedding": torch_model.source_embedding.weight}},
        "target_embedder": {"embedding": {"embedding": torch_model.target_embedding.weight}},
        "encoder": {f"layer_{i}": encoder_layer_params(layer)
                    for i, layer in enumerate(transformer.encoder.layers)},
        "decoder": {f"layer_{i}": decoder_layer_params(layer)
                    for i, layer in enumerate(transformer.decoder.layers)},
        "output_projection": {"projection": dense_params(torch_model.projection)},
    }
    params = {name: tree for name, tree in params.items() if name in shapes}   # tied ones
    params = jax.tree_util.tree_map_with_path(
        lambda path, t: jnp.asarray(t.detach().numpy().T if kernel_layout == "in_out" and
                                    jax.tree_util.keystr(path).endswith("['kernel']")
                                    else t.detach().numpy()), params)
    expected = jax.tree_util.tree_structure(shapes)
    if jax.tree_util.tree_structure(params) != expected:
        raise SystemExit(f"parameter trees differ:\n ours  {expected}\n torch "
                         f"{jax.tree_util.tree_structure(params)}")
    for ours, copied in zip(jax.tree_util.tree_leaves(shapes),
                            jax.tree_util.tree_leaves(params), strict=True):
        assert ours.shape == copied.shape, (ours.shape, copied.shape)
    return params


def random_batch(rng: np.random.Generator, batch: int, source_length: int,
                 target_length: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded source [B, S] and BOS-first target [B, T]; row 0 is unpadded."""
    source = rng.integers(4, vocab_size, size=(batch, source_length))
    target = rng.integers(4, vocab_size, size=(batch, target_length))
    target[:, 0] = BOS_ID
    for row in range(1, batch):
        source[row, rng.integers(1, source_length):] = PAD_ID
        target[row, rng.integers(1, target_length):] = PAD_ID
    return source.astype(np.int64), target.astype(np.int64)


def torch_loss(logits: torch.Tensor, targets: torch.Tensor, smoothing: float):
    """Our losses.label_smoothed_cross_entropy in torch: (sum over tokens, token count)."""
    vocab_size = logits.shape[-1]
    confidence, low = 1.0 - smoothing, smoothing / (vocab_size - 1)
    normalizer = -(confidence * math.log(confidence)
                   + (vocab_size - 1) * low * math.log(low + 1e-20))
    weights = (targets != PAD_ID).float()
    log_probs = logits.float().log_softmax(-1)                               # [B, T, V]
    target_log_probs = log_probs.gather(-1, targets[..., None])[..., 0]      # [B, T]
    per_token = (-(confidence - low) * target_log_probs - low * log_probs.sum(-1)
                 - normalizer)
    return (per_token * weights).sum(), weights.sum()


def torch_train_step(config: Config, model: TorchSeq2Seq, batch: dict, total_steps: int,
                     device: torch.device, compiled: bool = False):
    """A closure running one step of our recipe per call (returns the loss sum).

    Label-smoothed loss per non-pad token, Adam(β1, β2, ε) with our schedule's rates
    (evaluated once for every step); ``compiled`` wraps the forward and loss in
    torch.compile. bfloat16 compute (``config.model.dtype``) is torch.autocast.
    """
    model = model.to(device).train()
    tensors = {key: torch.from_numpy(np.asarray(value, np.int64)).to(device)
               for key, value in batch.items()}
    train = config.train
    rates = np.asarray(jax.vmap(learning_rate_schedule(train, config.model.d_model))(
        np.arange(total_steps + 1)))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1.0,
                                 betas=(train.adam_beta1, train.adam_beta2),
                                 eps=train.adam_epsilon)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda count: float(rates[min(count, total_steps)]))
    autocast = config.model.dtype == "bfloat16"

    def loss_fn(source, target_input, target_output):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(source, target_input)
        return torch_loss(logits, target_output, train.label_smoothing)
    loss_fn = torch.compile(loss_fn) if compiled else loss_fn

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_sum, weight = loss_fn(tensors["source"], tensors["target_input"],
                                   tensors["target_output"])
        (loss_sum / weight.clamp(min=1.0)).backward()
        optimizer.step()
        scheduler.step()
        return loss_sum.detach()
    return step


def copied_models(config: Config, rows: int, length: int, seed: int = 0):
    """A torch model, our params holding its weights, and a padded random batch."""
    torch.manual_seed(seed)
    model = TorchSeq2Seq(config.model)
    randomize_norms_and_biases(model, torch.Generator().manual_seed(seed))
    source, target = random_batch(np.random.default_rng(seed), rows, length, length,
                                  config.model.vocab_size)
    ours = Transformer(config.model)
    unrolled = dataclasses.replace(config.model, scan_layers=False)    # torch's own layout
    shapes = jax.eval_shape(Transformer(unrolled).init, jax.random.key(0), source,
                            target)["params"]
    params = copy_weights(model, shapes, config.model.kernel_layout)
    if config.model.scan_layers:
        params = stack_layers(params, unrolled)
    return model, ours, params, source, target


def check_logits(config: Config, tolerance: float = 1e-5, rows: int = 3,
                 length: int = 12) -> dict:
    """Eval-mode logits at non-pad target positions: max |difference| < tolerance · max |logit|."""
    model, ours, params, source, target = copied_models(config, rows, length)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(source), torch.from_numpy(target)).numpy()
    with jax.default_matmul_precision("highest"):
        logits = np.asarray(jax.jit(ours.apply)({"params": params}, source.astype(np.int32),
                                                target.astype(np.int32)))
    non_pad = target != PAD_ID
    difference = float(np.max(np.abs(logits[non_pad] - expected[non_pad])))
    scale = float(np.max(np.abs(expected[non_pad])))
    return {"check": "eval logits", "max_abs_diff": difference,
            "tolerance": tolerance * scale, "scale": scale,
            "ok": difference < tolerance * scale}


def check_training(config: Config, steps: int = 3, rows: int = 4, length: int = 12) -> dict:
    """Losses of a few steps without dropout (warm-up 50) from the same weights and batch.

    The short warm-up makes the updates large enough that a wrong loss, optimizer or
    schedule shows as a gap far above float32 rounding; the tolerance is 1e-4 of how
    much the loss fell.
    """
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, dropout_rate=0.0),
        train=dataclasses.replace(config.train, warmup_steps=50))
    model, _, params, source, target = copied_models(config, rows, length)
    batch = {"source": source, "target_input": target,
             "target_output": np.concatenate([target[:, 1:], 0 * target[:, :1]], 1)}
    torch_step = torch_train_step(config, model, batch, steps, torch.device("cpu"))
    optimizer = training.make_optimizer(config.train, config.model.d_model)
    state = training.create_train_state(config, jax.random.key(0)).replace(
        params=params, opt_state=optimizer.init(params))
    our_step = jax.jit(lambda state, batch: training.train_step(
        state, batch, jax.random.key(0), config=config))
    batch32 = jax.tree.map(lambda array: array.astype(np.int32), batch)
    weight = float((batch["target_output"] != PAD_ID).sum())
    ours, theirs = [], []
    with jax.default_matmul_precision("highest"):
        for _ in range(steps):
            state, metrics = our_step(state, batch32)
            ours.append(float(metrics["loss"][0]) / weight)
            theirs.append(float(torch_step()) / weight)
    gap = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
    change = abs(ours[-1] - ours[0])
    return {"check": f"train losses, {steps} steps", "max_abs_diff": gap,
            "tolerance": 1e-4 * change, "scale": change, "ok": gap < 1e-4 * change}


def small_config(share: bool) -> Config:
    model = ModelConfig(vocab_size=50, d_model=32, num_heads=4, d_ff=64,
                        num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0,
                        max_length=32, share_embeddings=share, tie_output=share,
                        layer_norm_epsilon=1e-6)
    return Config(model=model, data=DataConfig(vocab_size=50, max_length=16))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="largest |logit difference| relative to the largest |logit|")
    args = parser.parse_args(argv)
    torch.backends.mha.set_fastpath_enabled(False)    # the plain math path is the reference
    print(f"torch {torch.__version__} vs flax_transformer")
    checks = []
    for share in (False, True):
        config = small_config(share)
        for check in (check_logits(config, args.tolerance), check_training(config)):
            checks.append(check)
            print(f"{'tied' if share else 'untied'} {check['check']}: max |diff| "
                  f"{check['max_abs_diff']:.3e}, tolerance {check['tolerance']:.3e} "
                  f"(scale {check['scale']:.3g}): {'OK' if check['ok'] else 'FAIL'}")
    return 0 if all(check["ok"] for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

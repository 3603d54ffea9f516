"""Parity with PyTorch: a small torch.nn.Transformer's weights copied into ours, same logits.

Builds a post-LN, ReLU ``torch.nn.Transformer`` (batch_first, dropout 0, LayerNorm epsilon
1e-6) without the final encoder/decoder LayerNorms torch adds (the paper's post-LN has
none), wraps it with separate source/target embeddings × √d_model + interleaved sinusoidal
positions and an output projection, copies every weight into our ``Transformer``
(``share_embeddings=False``, ``tie_output=False``), runs both on random padded inputs and
compares the logits at non-pad target positions. Exits non-zero unless the largest
absolute difference is below ``--tolerance``.

Needs the ``bench`` extra; on a CPU-only machine ``pip install torch==2.13.0`` (or
``pip install torch --index-url https://download.pytorch.org/whl/cpu``) avoids the
multi-GB CUDA build. Run: ``python benchmarks/torch_parity.py``.
"""

from __future__ import annotations

import argparse
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn

from flax_transformer.config import ModelConfig
from flax_transformer.model import Transformer

PAD_ID, BOS_ID = 0, 2


class TorchSeq2Seq(nn.Module):
    """torch.nn.Transformer plus the paper's embeddings, positions and output projection."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d_model = config.d_model
        self.d_model = d_model
        self.source_embedding = nn.Embedding(config.vocab_size, d_model)
        self.target_embedding = nn.Embedding(config.vocab_size, d_model)
        self.transformer = nn.Transformer(
            d_model=d_model, nhead=config.num_heads,
            num_encoder_layers=config.num_encoder_layers,
            num_decoder_layers=config.num_decoder_layers, dim_feedforward=config.d_ff,
            dropout=0.0, activation="relu", layer_norm_eps=config.layer_norm_epsilon,
            batch_first=True, norm_first=False)
        self.transformer.encoder.norm = nn.Identity()
        self.transformer.decoder.norm = nn.Identity()
        self.projection = nn.Linear(d_model, config.vocab_size)
        self.register_buffer("positions", torch_sinusoidal(config.max_length, d_model))

    def embed(self, embedding: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, L] -> embedding × √D + PE[:L], [B, L, D]."""
        scaled = embedding(tokens) * math.sqrt(self.d_model)
        return scaled + self.positions[: tokens.shape[1]]

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
            if "norm" in name or name.endswith("bias"):
                noise = 0.2 * torch.randn(parameter.shape, generator=generator)
                parameter.copy_((1.0 if name.endswith("weight") else 0.0) + noise)


def attention_params(attention: nn.MultiheadAttention, ours: dict) -> dict:
    """torch in_proj [3D, D] / out_proj -> our query/key/value/output Dense params.

    Our projections are bias-free (the paper's W^Q, W^K, W^V, W^O) unless our parameter
    tree has biases; torch's biases are zeroed when ours have none, so that both compute
    the same function.
    """
    weights = attention.in_proj_weight.chunk(3)
    biases = attention.in_proj_bias.chunk(3)
    pairs = {"query": (weights[0], biases[0]), "key": (weights[1], biases[1]),
             "value": (weights[2], biases[2]),
             "output": (attention.out_proj.weight, attention.out_proj.bias)}
    result = {}
    for name, (weight, bias) in pairs.items():
        result[name] = {"kernel": weight.T}
        if "bias" in ours[name]:
            result[name]["bias"] = bias
        else:
            with torch.no_grad():
                bias.zero_()
    return result


def dense_params(linear: nn.Linear) -> dict:
    return {"kernel": linear.weight.T, "bias": linear.bias}


def norm_params(norm: nn.LayerNorm) -> dict:
    return {"norm": {"scale": norm.weight, "bias": norm.bias}}


def encoder_layer_params(layer: nn.TransformerEncoderLayer, ours: dict) -> dict:
    return {
        "self_attention": attention_params(layer.self_attn, ours["self_attention"]),
        "attention_residual": norm_params(layer.norm1),
        "feed_forward": {"hidden": dense_params(layer.linear1),
                         "output": dense_params(layer.linear2)},
        "feed_forward_residual": norm_params(layer.norm2),
    }


def decoder_layer_params(layer: nn.TransformerDecoderLayer, ours: dict) -> dict:
    return {
        "self_attention": attention_params(layer.self_attn, ours["self_attention"]),
        "self_residual": norm_params(layer.norm1),
        "encoder_attention": attention_params(layer.multihead_attn,
                                              ours["encoder_attention"]),
        "cross_residual": norm_params(layer.norm2),
        "feed_forward": {"hidden": dense_params(layer.linear1),
                         "output": dense_params(layer.linear2)},
        "feed_forward_residual": norm_params(layer.norm3),
    }


def copy_weights(torch_model: TorchSeq2Seq, shapes: dict) -> dict:
    """Our params (same tree and shapes as ``shapes``) holding the torch model's weights."""
    transformer = torch_model.transformer
    params = {
        "source_embedder": {"embedding": {"embedding": torch_model.source_embedding.weight}},
        "target_embedder": {"embedding": {"embedding": torch_model.target_embedding.weight}},
        "encoder": {f"layer_{i}": encoder_layer_params(layer, shapes["encoder"][f"layer_{i}"])
                    for i, layer in enumerate(transformer.encoder.layers)},
        "decoder": {f"layer_{i}": decoder_layer_params(layer, shapes["decoder"][f"layer_{i}"])
                    for i, layer in enumerate(transformer.decoder.layers)},
        "output_projection": {"projection": dense_params(torch_model.projection)},
    }
    params = jax.tree_util.tree_map(lambda t: jnp.asarray(t.detach().numpy()), params)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args(argv)
    config = ModelConfig(vocab_size=50, d_model=32, num_heads=4, d_ff=64,
                         num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0,
                         max_length=32, share_embeddings=False, tie_output=False,
                         layer_norm_epsilon=1e-6)
    config.validate()
    torch.manual_seed(args.seed)
    torch.backends.mha.set_fastpath_enabled(False)    # the plain math path is the reference
    torch_model = TorchSeq2Seq(config).eval()
    randomize_norms_and_biases(torch_model, torch.Generator().manual_seed(args.seed))
    ours = Transformer(config)
    source, target = random_batch(np.random.default_rng(args.seed), 4, 9, 7, config.vocab_size)
    shapes = jax.eval_shape(ours.init, jax.random.key(0), source, target)["params"]
    params = copy_weights(torch_model, shapes)      # zeroes torch biases we do not have
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(source), torch.from_numpy(target)).numpy()
    logits = np.asarray(jax.jit(ours.apply)({"params": params}, source.astype(np.int32),
                                            target.astype(np.int32)))
    non_pad = target != PAD_ID
    max_diff = float(np.max(np.abs(logits[non_pad] - expected[non_pad])))
    print(f"torch {torch.__version__} vs flax_transformer: max |logit diff| at "
          f"{int(non_pad.sum())} non-pad positions = {max_diff:.3e} "
          f"(logit scale {np.max(np.abs(expected[non_pad])):.2f}, tolerance {args.tolerance})")
    if not max_diff < args.tolerance:
        print("FAIL: outputs differ", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

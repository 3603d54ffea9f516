"""Attention heatmaps with matplotlib: one panel per layer and head, tokens as tick labels.

    x_labels, y_labels, axes_text = plots.attention_labels("cross", source_pieces,
                                                           output_pieces, "<s>")
    matrices = plots.save_attention_grid("attention.png", cross,      # [L, H, T, S]
                                         x_labels=x_labels, y_labels=y_labels,
                                         title=f"cross-attention, {axes_text}")

Drawn with the Agg backend, so no display is needed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

PANEL_INCHES = 0.22   # per token along each axis
MIN_PANEL_INCHES = 2.0


@functools.cache
def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, imported on first use (it takes a second)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; must precede pyplot's import
    import matplotlib.pyplot as plt

    return plt


def attention_labels(kind: str, source_pieces: Sequence[str], output_pieces: Sequence[str],
                     bos_piece: str) -> tuple[list[str], list[str], str]:
    """Tick labels for one kind of attention of a decoder teacher-forced on its output.

    The decoder reads [BOS, y0, …, y(T-2)] and row t is the position that outputs y(t), so
    rows are labelled by the outputs y0 … y(T-1), and the keys of decoder self-attention
    by what the decoder read there: BOS, then the outputs one step behind.

    Args:
      kind: "cross", "encoder_self" or "decoder_self".
      source_pieces: the S source pieces, EOS included.
      output_pieces: the T output pieces y0 … y(T-1), EOS included.
      bos_piece: the piece of the BOS token.

    Returns:
      (x labels: K keys, y labels: Q queries, a phrase saying what the axes show).
    """
    decoder_inputs = [bos_piece, *output_pieces[:-1]]
    choices = {
        "cross": (source_pieces, output_pieces,
                  "rows: the position that outputs each piece; columns: source pieces"),
        "encoder_self": (source_pieces, source_pieces, "source pieces attending to source "
                                                       "pieces"),
        "decoder_self": (decoder_inputs, output_pieces,
                         "rows: the position that outputs each piece; columns: what the "
                         "decoder read (BOS, then the outputs so far)"),
    }
    if kind not in choices:
        raise ValueError(f"attention kind {kind!r} is not one of {sorted(choices)}.")
    x_labels, y_labels, text = choices[kind]
    return list(x_labels), list(y_labels), text


def _panel_size(x_count: int, y_count: int) -> tuple[float, float]:
    return (max(MIN_PANEL_INCHES, PANEL_INCHES * x_count + 0.8),
            max(MIN_PANEL_INCHES, PANEL_INCHES * y_count + 0.8))


def _draw_panel(axes, matrix: np.ndarray, x_labels: Sequence[str],
                y_labels: Sequence[str], title: str, labelled: tuple[bool, bool]):
    image = axes.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto",
                        interpolation="nearest")
    axes.set_title(title, fontsize=9)
    axes.set_xticks(range(len(x_labels)))
    axes.set_yticks(range(len(y_labels)))
    axes.set_xticklabels(x_labels if labelled[0] else [], rotation=90, fontsize=7)
    axes.set_yticklabels(y_labels if labelled[1] else [], fontsize=7)
    return image


def attention_grid(weights: np.ndarray, x_labels: Sequence[str], y_labels: Sequence[str],
                   title: str, row_name: str = "layer"):
    """A figure of heatmaps, one row per layer and one column per head.

    Args:
      weights: float [L, H, Q, K] attention probabilities (rows sum to 1).
      x_labels: K pieces attended to (keys), drawn along x.
      y_labels: Q pieces attending (queries), drawn along y.
      title: figure title.
      row_name: what a row is called in panel titles.

    Returns:
      the matplotlib Figure (caller saves and closes it).
    """
    layers, heads, queries, keys = weights.shape
    if (queries, keys) != (len(y_labels), len(x_labels)):
        raise ValueError(f"weights of {queries}×{keys} queries×keys do not match "
                         f"{len(y_labels)} y labels and {len(x_labels)} x labels.")
    width, height = _panel_size(keys, queries)
    figure, grid = _pyplot().subplots(layers, heads, squeeze=False,
                                      figsize=(width * heads, height * layers + 0.6))
    image = None
    for layer in range(layers):
        for head in range(heads):
            image = _draw_panel(grid[layer, head], weights[layer, head], x_labels, y_labels,
                                f"{row_name} {layer + 1}, head {head + 1}",
                                labelled=(layer == layers - 1, head == 0))
    figure.suptitle(title)
    figure.colorbar(image, ax=grid, shrink=0.6, label="attention weight")
    return figure


def tick_labels(figure) -> tuple[list[str], list[str]]:
    """The labels drawn along x (bottom-left panel) and y (top-left panel) of a figure."""
    panels = [axes for axes in figure.axes if axes.images]
    columns = len({axes.get_subplotspec().colspan.start for axes in panels})
    return ([label.get_text() for label in panels[-columns].get_xticklabels()],
            [label.get_text() for label in panels[0].get_yticklabels()])


def plotted_matrices(figure) -> np.ndarray:
    """The matrices drawn in a figure's panels, read back from its images: [L·H, Q, K]."""
    return np.stack([np.asarray(axes.images[0].get_array()) for axes in figure.axes
                     if axes.images])


def save_attention_grid(path: str, weights: np.ndarray, *, x_labels: Sequence[str],
                        y_labels: Sequence[str], title: str) -> np.ndarray:
    """Draws attention_grid into a PNG at ``path``.

    Returns:
      the plotted matrices, float [L·H, Q, K] (layer-major), as read back from the figure.
    """
    figure = attention_grid(np.asarray(weights, np.float32), x_labels, y_labels, title)
    try:
        figure.savefig(path, dpi=100, bbox_inches="tight")
        return plotted_matrices(figure)
    finally:
        _pyplot().close(figure)

"""Attention heatmaps with matplotlib: one panel per layer and head, tokens as tick labels.

    matrices = plots.save_attention_grid("attention.png", cross,      # [L, H, T, S]
                                         x_labels=source_pieces, y_labels=output_pieces,
                                         title="cross-attention")

Drawn with the Agg backend, so no display is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; must precede pyplot's import
import matplotlib.pyplot as plt
import numpy as np

PANEL_INCHES = 0.22   # per token along each axis
MIN_PANEL_INCHES = 2.0


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
    figure, grid = plt.subplots(layers, heads, figsize=(width * heads, height * layers + 0.6),
                                squeeze=False)
    image = None
    for layer in range(layers):
        for head in range(heads):
            image = _draw_panel(grid[layer, head], weights[layer, head], x_labels, y_labels,
                                f"{row_name} {layer + 1}, head {head + 1}",
                                labelled=(layer == layers - 1, head == 0))
    figure.suptitle(title)
    figure.colorbar(image, ax=grid, shrink=0.6, label="attention weight")
    return figure


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
        plt.close(figure)

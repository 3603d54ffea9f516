"""plots.py: axis labels name what each kind of attention shows; figures draw them."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from flax_transformer import plots

SOURCE = ["▁forty", "-", "two", "</s>"]          # S = 4
OUTPUT = ["▁zwei", "und", "vierzig", "</s>"]     # T = 4: y0 … y3


def test_cross_attention_rows_are_outputs_and_columns_source_pieces():
    x_labels, y_labels, text = plots.attention_labels("cross", SOURCE, OUTPUT, "<s>")
    assert x_labels == SOURCE
    assert y_labels == OUTPUT
    assert "source" in text


def test_decoder_self_attention_keys_are_what_the_decoder_read():
    x_labels, y_labels, text = plots.attention_labels("decoder_self", SOURCE, OUTPUT, "<s>")
    # Row t outputs y(t) having read BOS, y0 … y(t-1): column t is the input at step t.
    assert x_labels == ["<s>", "▁zwei", "und", "vierzig"]
    assert y_labels == OUTPUT
    # The diagonal pairs each output with the piece read just before it (never itself).
    assert [(y_labels[t], x_labels[t]) for t in range(2)] == [("▁zwei", "<s>"),
                                                              ("und", "▁zwei")]
    assert "BOS" in text


def test_encoder_self_attention_has_source_pieces_on_both_axes():
    assert plots.attention_labels("encoder_self", SOURCE, OUTPUT, "<s>")[:2] == (SOURCE,
                                                                                 SOURCE)
    with pytest.raises(ValueError, match="not one of"):
        plots.attention_labels("self", SOURCE, OUTPUT, "<s>")


@pytest.mark.parametrize("kind", ["cross", "decoder_self", "encoder_self"])
def test_figure_draws_the_labels_and_the_matrices(kind, tmp_path):
    x_labels, y_labels, _ = plots.attention_labels(kind, SOURCE[:3], OUTPUT, "<s>")
    rng = np.random.default_rng(0)
    weights = rng.dirichlet(np.ones(len(x_labels)), size=(2, 3, len(y_labels)))  # [L, H, Q, K]
    figure = plots.attention_grid(weights, x_labels, y_labels, kind)
    try:
        assert plots.tick_labels(figure) == (x_labels, y_labels)
        np.testing.assert_allclose(plots.plotted_matrices(figure),
                                   weights.reshape(6, len(y_labels), len(x_labels)), rtol=1e-6)
    finally:
        plt.close(figure)
    matrices = plots.save_attention_grid(str(tmp_path / "a.png"), weights, x_labels=x_labels,
                                         y_labels=y_labels, title=kind)
    assert matrices.shape == (6, len(y_labels), len(x_labels))
    with pytest.raises(ValueError, match="do not match"):
        plots.attention_grid(weights, x_labels[1:], y_labels, kind)

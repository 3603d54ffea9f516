"""Sinusoidal positional encodings against the paper's formula in float64 NumPy."""

import jax
import numpy as np
import pytest

from flax_transformer.positions import positions_from_segments, sinusoidal_positions


def reference_positions(length: int, d_model: int) -> np.ndarray:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""
    table = np.zeros((length, d_model), dtype=np.float64)
    for pos in range(length):
        for dim in range(d_model):
            two_i = dim - dim % 2
            angle = pos / 10000.0 ** (two_i / d_model)
            table[pos, dim] = np.sin(angle) if dim % 2 == 0 else np.cos(angle)
    return table


@pytest.mark.parametrize("length, d_model", [(50, 16), (7, 6), (33, 9), (4, 1)])
def test_sinusoidal_positions_match_paper_formula(length, d_model):
    table = np.asarray(sinusoidal_positions(length, d_model))
    expected = reference_positions(length, d_model)
    assert table.shape == (length, d_model)
    assert table.dtype == np.float32
    max_diff = np.max(np.abs(table - expected))
    print(f"positions max |diff| vs float64 reference ({length}x{d_model}): {max_diff:.3e}")
    assert max_diff < 1e-6


def test_sinusoidal_positions_are_interleaved_not_concatenated():
    table = np.asarray(sinusoidal_positions(10, 8))
    # Position 0: every sine is 0 and every cosine 1, alternating along the dimensions.
    np.testing.assert_array_equal(table[0], [0, 1, 0, 1, 0, 1, 0, 1])
    # Dimensions 0/1 are the same frequency (1): sin(pos) and cos(pos).
    np.testing.assert_allclose(table[:, 0], np.sin(np.arange(10)), atol=1e-6)
    np.testing.assert_allclose(table[:, 1], np.cos(np.arange(10)), atol=1e-6)


def test_sinusoidal_positions_odd_width_ends_with_sine():
    table = np.asarray(sinusoidal_positions(12, 5))
    angle = np.arange(12) / 10000.0 ** (4 / 5)
    np.testing.assert_allclose(table[:, 4], np.sin(angle), atol=1e-6)


def test_positions_from_segments_restart_per_segment():
    segments = np.array([[1, 1, 1, 2, 2, 0],
                         [1, 2, 2, 2, 3, 3],
                         [1, 1, 1, 1, 1, 1]])
    expected = np.array([[0, 1, 2, 0, 1, 0],
                         [0, 0, 1, 2, 0, 1],
                         [0, 1, 2, 3, 4, 5]])
    result = positions_from_segments(segments)
    assert result.dtype == np.int32
    np.testing.assert_array_equal(result, expected)
    np.testing.assert_array_equal(jax.jit(positions_from_segments)(segments), expected)


def test_positions_from_segments_non_pad_positions_match_loop():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 5, size=(3, 4))            # 4 segments per row, then padding
    rows = []
    for row_lengths in lengths:
        row = np.concatenate([np.full(n, s + 1) for s, n in enumerate(row_lengths)])
        rows.append(np.pad(row, (0, 20 - len(row))))
    segments = np.stack(rows)
    result = np.asarray(positions_from_segments(segments))
    for b, row in enumerate(segments):
        for t, segment in enumerate(row):
            if segment:
                assert result[b, t] == np.sum(row[:t] == segment)

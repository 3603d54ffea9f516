"""Every mask builder against literal matrices (True = may attend)."""

import jax
import numpy as np

from flax_transformer import masks


def test_causal_mask_is_lower_triangular_with_diagonal():
    expected = np.array([[1, 0, 0, 0],
                         [1, 1, 0, 0],
                         [1, 1, 1, 0],
                         [1, 1, 1, 1]], dtype=bool)
    result = masks.causal_mask(4)
    assert result.dtype == np.bool_
    np.testing.assert_array_equal(result, expected)


def test_padding_mask_hides_pad_keys_for_every_query():
    tokens = np.array([[5, 7, 0], [4, 0, 0]])
    result = masks.padding_mask(tokens)
    assert result.shape == (2, 1, 1, 3)
    np.testing.assert_array_equal(result[:, 0, 0], [[1, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(masks.padding_mask(tokens, pad_id=7)[:, 0, 0],
                                  [[1, 0, 1], [1, 1, 1]])


def test_segment_mask_keeps_packed_pairs_apart():
    query_segments = np.array([[1, 1, 2]])
    key_segments = np.array([[1, 2, 2]])
    result = masks.segment_mask(query_segments, key_segments)
    assert result.shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(result[0, 0], [[1, 0, 0],
                                                 [1, 0, 0],
                                                 [0, 1, 1]])


def test_segment_mask_hides_padding_segment():
    segments = np.array([[1, 1, 0, 0]])
    np.testing.assert_array_equal(masks.segment_mask(segments, segments)[0, 0],
                                  [[1, 1, 0, 0],
                                   [1, 1, 0, 0],
                                   [0, 0, 0, 0],
                                   [0, 0, 0, 0]])


def test_decoder_mask_is_causal_and_non_pad():
    tokens = np.array([[2, 9, 0], [2, 5, 6]])
    result = masks.decoder_mask(tokens)
    assert result.shape == (2, 1, 3, 3)
    np.testing.assert_array_equal(result[0, 0], [[1, 0, 0],
                                                 [1, 1, 0],
                                                 [1, 1, 0]])
    np.testing.assert_array_equal(result[1, 0], [[1, 0, 0],
                                                 [1, 1, 0],
                                                 [1, 1, 1]])


def test_decoder_mask_with_segments_is_block_causal():
    tokens = np.array([[2, 9, 2, 7, 0]])
    segments = np.array([[1, 1, 2, 2, 0]])
    np.testing.assert_array_equal(masks.decoder_mask(tokens, 0, segments)[0, 0],
                                  [[1, 0, 0, 0, 0],
                                   [1, 1, 0, 0, 0],
                                   [0, 0, 1, 0, 0],
                                   [0, 0, 1, 1, 0],
                                   [0, 0, 0, 0, 0]])


def test_encoder_and_cross_masks():
    source = np.array([[5, 6, 0]])
    np.testing.assert_array_equal(masks.encoder_mask(source)[0, 0], [[1, 1, 0]])
    np.testing.assert_array_equal(masks.cross_mask(source)[0, 0], [[1, 1, 0]])
    source_segments = np.array([[1, 2, 0]])
    target_segments = np.array([[1, 2]])
    np.testing.assert_array_equal(
        masks.cross_mask(source, 0, target_segments, source_segments)[0, 0],
        [[1, 0, 0],
         [0, 1, 0]])


def test_cache_mask_sees_slots_up_to_position():
    result = masks.cache_mask(np.array([1, 0, 3]), 4)
    assert result.shape == (3, 1, 1, 4)
    np.testing.assert_array_equal(result[:, 0, 0], [[1, 1, 0, 0],
                                                    [1, 0, 0, 0],
                                                    [1, 1, 1, 1]])
    jitted = jax.jit(masks.cache_mask, static_argnums=1)(np.array([1, 0, 3]), 4)
    np.testing.assert_array_equal(jitted, result)


def test_cache_mask_row_equals_decoder_mask_row():
    length = 5
    full = masks.causal_mask(length)
    for position in range(length):
        np.testing.assert_array_equal(
            masks.cache_mask(np.array([position]), length)[0, 0, 0], full[position])


def test_cache_mask_of_a_block_equals_the_rows_of_the_decoder_mask():
    length = 6
    full = masks.causal_mask(length)
    for start in range(length):
        block = masks.cache_mask(np.array([start]), length, length - start)
        assert block.shape == (1, 1, length - start, length)
        np.testing.assert_array_equal(block[0, 0], full[start:])

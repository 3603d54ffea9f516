"""fill_mask.py and decode.py on an encoder_only run: each <mask> filled with the
likeliest piece (checked against the model's own logits), the --top_k listing, lines
without <mask>, and the flags that only fit other kinds.

The run is a few steps of the micro model (module fixture): mechanics, not quality.
"""

import os
import shutil

import jax.numpy as jnp
import numpy as np

from flax_transformer import fill_mask
from flax_transformer.data import MASK_ID, MASK_PIECE
from tests.helpers import decode_fails, kind_run_fixtures, run_decode

LINES = ["drei<mask>zwanzig", "sieben", "<mask>hundert<mask>", ""]


run_dir, restored = kind_run_fixtures("encoder_only")


def _expected_fill(restored, line):
    """The line's ids with each <mask> replaced by the argmax of the model's logits over
    the pieces that can fill it, computed on the unpadded line alone."""
    tokenizer = restored.tokenizer
    ids = [*tokenizer.encode(line), tokenizer.eos_id]
    logits, _ = restored.model.apply({"params": restored.params}, jnp.asarray([ids]))
    allowed = np.arange(logits.shape[-1])
    allowed = (allowed > MASK_ID) & (allowed < tokenizer.vocab_size)
    best = np.argmax(np.where(allowed, np.asarray(logits[0]), -np.inf), axis=-1)   # [S]
    return [int(best[i]) if token == MASK_ID else token for i, token in enumerate(ids)]


def test_the_mask_piece_is_one_token_inside_words(restored):
    ids = restored.tokenizer.encode("drei<mask>zwanzig")
    assert ids.count(MASK_ID) == 1 and restored.tokenizer.mask_id == MASK_ID


def test_each_mask_gets_the_likeliest_piece_in_any_batch(restored):
    filled = fill_mask.fill_lines(restored.model, restored.params, restored.tokenizer, LINES,
                                  max_length=restored.config.model.max_length,
                                  tokens_per_batch=64)
    tokenizer = restored.tokenizer
    assert filled.outputs[0] == tokenizer.decode(_expected_fill(restored, LINES[0]))
    assert filled.outputs[2] == tokenizer.decode(_expected_fill(restored, LINES[2]))
    assert MASK_PIECE not in filled.outputs[0] + filled.outputs[2]
    assert filled.outputs[1] == "sieben" and filled.outputs[3] == ""
    assert [len(found) for found in filled.candidates] == [1, 0, 2, 0]
    assert filled.without_mask == 1 and filled.truncated == 0


def test_top_k_lists_candidates_best_first_with_probabilities(restored):
    filled = fill_mask.fill_lines(restored.model, restored.params, restored.tokenizer,
                                  LINES[:3], max_length=restored.config.model.max_length,
                                  tokens_per_batch=4096, top_k=3)
    one = fill_mask.fill_lines(restored.model, restored.params, restored.tokenizer,
                               LINES[:3], max_length=restored.config.model.max_length,
                               tokens_per_batch=4096)
    assert filled.outputs == one.outputs   # the listing does not change the fill
    for found in filled.candidates[0] + filled.candidates[2]:
        ids, probabilities = zip(*found, strict=True)
        assert len(set(ids)) == 3 and all(token > MASK_ID for token in ids)
        assert list(probabilities) == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-5
    blocks = fill_mask.format_candidates(filled, restored.tokenizer)
    assert blocks[1] == "sieben"
    lines = blocks[2].split("\n")
    assert lines[0] == filled.outputs[2] and len(lines) == 3
    assert lines[1].startswith(f"  {MASK_PIECE} 1: ") and lines[2].startswith(
        f"  {MASK_PIECE} 2: ")
    first_piece = restored.tokenizer.id_to_piece([filled.candidates[2][0][0][0]])[0]
    probability = 100 * filled.candidates[2][0][0][1]
    assert lines[1].split(": ", 1)[1].split(" | ")[0] == f"{first_piece} {probability:.1f}%"


def test_decode_fills_masks_from_the_command_line(run_dir, restored, tmp_path, capsys):
    status, outputs, err = run_decode(capsys, "--workdir", run_dir, "--input", "\n".join(LINES))
    assert status == 0 and "filling <mask> (likeliest piece)" in err
    assert "warning: 1 line(s) hold no <mask> and are written unchanged." in err
    expected = fill_mask.fill_lines(restored.model, restored.params, restored.tokenizer,
                                    LINES, max_length=restored.config.model.max_length,
                                    tokens_per_batch=4096).outputs
    assert outputs == expected
    _, listed, err = run_decode(capsys, "--workdir", run_dir, "--input", LINES[0], "--top_k", "2")
    assert "top 2 listed" in err
    assert listed[0] == expected[0] and listed[1].startswith("  <mask> 1: ")
    assert listed[1].count(" | ") == 1 and len(listed) == 2
    references = tmp_path / "r.txt"
    references.write_text("dreiundzwanzig\nsieben\nzweihunderteins\n\n", encoding="utf-8")
    source = tmp_path / "s.txt"
    source.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    _, _, err = run_decode(capsys, "--workdir", run_dir, "--input_file", str(source),
                        "--reference_file", str(references))
    assert "exact match = " in err and "of 4 lines" in err


def test_requests_for_other_kinds_exit_2(run_dir, capsys):
    err = decode_fails(capsys, "--workdir", run_dir, "--input", "drei", "--input", "")
    assert "no input line holds <mask>" in err
    for flag, value in (("--method", "beam"), ("--beam_size", "2"), ("--temperature", "0.5"),
                        ("--max_extra_length", "3")):
        err = decode_fails(capsys, "--workdir", run_dir, "--input", LINES[0], flag, value)
        assert f"{flag} controls a search, but this encoder_only run fills" in err
    err = decode_fails(capsys, "--workdir", run_dir, "--input", LINES[0], "--attention_plot",
                 "a.png")
    assert "cross-attention, which this encoder_only run does not have" in err


def test_refusals_come_before_the_checkpoint_is_read(run_dir, tmp_path, capsys):
    copy = tmp_path / "no_checkpoints"
    copy.mkdir()
    for name in ("config.json", "tokenizer.model"):
        shutil.copy(os.path.join(run_dir, name), copy / name)
    err = decode_fails(capsys, "--workdir", str(copy), "--input", LINES[0], "--beam_size", "2")
    assert "--beam_size controls a search" in err and "checkpoints" not in err
    err = decode_fails(capsys, "--workdir", str(copy), "--input", "sieben")
    assert "no input line holds <mask>" in err

"""metrics_writer: the JSON lines and the TensorBoard scalars of a run, read back."""

import glob
import json
import os
import struct

import pytest
from tensorboardX.proto import event_pb2

from flax_transformer.metrics_writer import MetricsWriter


def _events(folder):
    """(tag, step, value) of every scalar in the event files under ``folder``, read as
    TFRecords: length (u64), its CRC (u32), the Event proto, its CRC (u32)."""
    scalars = []
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        with open(path, "rb") as handle:
            data = handle.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            scalars += [(value.tag, event.step, value.simple_value)
                        for value in event.summary.value]
    return scalars


def test_writes_json_lines_and_tensorboard_scalars(tmp_path):
    writer = MetricsWriter(str(tmp_path))
    writer.write(10, "train", {"loss": 2.5, "learning_rate": 1e-3, "note": "text"})
    writer.write(20, "validation", {"bleu": 31.25})
    writer.close()

    with open(tmp_path / "metrics.jsonl") as handle:
        records = [json.loads(line) for line in handle]
    assert [(r["step"], r["split"]) for r in records] == [(10, "train"), (20, "validation")]
    assert records[0]["loss"] == 2.5 and records[0]["note"] == "text"
    assert all(isinstance(r["time"], float) for r in records)

    scalars = _events(str(tmp_path / "tensorboard"))
    assert sorted(scalars) == sorted([("train/loss", 10, 2.5),
                                      ("train/learning_rate", 10, pytest.approx(1e-3)),
                                      ("validation/bleu", 20, 31.25)])   # no "note"


def test_a_resumed_run_appends(tmp_path):
    for step in (1, 2):
        writer = MetricsWriter(str(tmp_path))
        writer.write(step, "train", {"loss": float(step)})
        writer.close()
    with open(tmp_path / "metrics.jsonl") as handle:
        assert [json.loads(line)["step"] for line in handle] == [1, 2]
    assert sorted(step for _, step, _ in _events(str(tmp_path / "tensorboard"))) == [1, 2]


def test_a_disabled_writer_writes_nothing(tmp_path):
    writer = MetricsWriter(str(tmp_path / "run"), enabled=False)   # not the main process
    writer.write(1, "train", {"loss": 1.0})
    writer.close()
    assert not os.path.exists(tmp_path / "run")

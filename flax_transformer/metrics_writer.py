"""Writes metrics to WORKDIR/metrics.jsonl and TensorBoard event files (tensorboardX, no TF)."""

from __future__ import annotations

import json
import os
import time
import uuid


class MetricsWriter:
    """Appends one JSON line per (step, split) and mirrors scalars to TensorBoard.

    Only the main process writes (``enabled``); other processes get a silent writer.
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tensorboard = None
        if enabled:
            from tensorboardX import SummaryWriter  # imported lazily: a slow import

            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
            # tensorboardX names its event file by the second and the host only: a run
            # resumed within the same second would truncate the last one's file.
            self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                              filename_suffix=f".{uuid.uuid4().hex[:8]}")

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, "time": time.time(), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            if isinstance(value, (int, float)):
                self._tensorboard.add_scalar(f"{split}/{name}", value, int(step))

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tensorboard.close()

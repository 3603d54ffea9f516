"""The DatasetInfo of the builders made here (``number_words``, ``parallel_text``)."""

from __future__ import annotations

import tensorflow_datasets as tfds


class LocalDatasetInfo(tfds.core.DatasetInfo):
    """A DatasetInfo that does not look for precomputed info on the TFDS bucket.

    A builder whose data is not prepared yet calls ``initialize_from_bucket``. TFDS's
    version makes a temporary directory before it finds that GCS is off, and never removes
    it: one empty ``/tmp/tmp…tfds`` for every fresh run or test. Our datasets are made from
    local files or code, so they are never on the bucket.
    """

    def initialize_from_bucket(self) -> None:
        return None

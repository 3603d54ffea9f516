"""chunked: whole passes and samples over a split read many records per call."""

import pytest

from flax_transformer import evaluation
from flax_transformer.data import chunked, sources, tokenizer


class _Records(list):
    """Stored records that count reads: one __getitems__ call per batched read."""

    def __init__(self, records, batched=True):
        super().__init__(records)
        self.reads, self.batched = [], batched

    def __getitem__(self, index):
        self.reads.append(1)
        return super().__getitem__(index)

    def __getitems__(self, indices):
        if not self.batched:      # as tfds.testing.mock_data's sources: no batched reads
            raise TypeError("__getitems__() missing 1 required positional argument")
        self.reads.append(len(indices))
        return [super(_Records, self).__getitem__(index) for index in indices]


@pytest.mark.parametrize("count", [0, 1, 1024, 2500])
@pytest.mark.parametrize("batched", [True, False])
def test_iterating_a_split_reads_it_in_chunks_in_order(count, batched):
    records = _Records([{"en": f"e{n}".encode(), "de": f"d{n}"} for n in range(count)], batched)
    pairs = sources.TextPairs(records, "en", "de")
    assert list(pairs) == [{"source": f"e{n}", "target": f"d{n}"} for n in range(count)]
    if batched:   # 2500 records: 1024 + 1024 + 452, never past the end
        assert records.reads == [min(1024, count - start) for start in range(0, count, 1024)]
    else:
        assert records.reads == [1] * count
    plain = list(pairs)
    records.reads.clear()
    sentences = list(tokenizer.training_sentences(pairs, limit=4000, seed=3))
    sampled = list(tokenizer.training_sentences(plain, limit=4000, seed=3))
    assert sentences == sampled and len(sentences) == 2 * min(count, 2000)
    if batched and count > 1:    # the seeded sample, read a chunk at a time
        assert len(records.reads) == -(-min(count, 2000) // 1024)
    assert list(evaluation.first_examples(pairs, 3)) == list(pairs)[:3]


def test_iterate_stops_at_count_or_the_end_and_read_keeps_the_order():
    records = _Records(list(range(10)))
    assert list(chunked.iterate(records, 4)) == [0, 1, 2, 3]
    assert list(chunked.iterate(records, 99)) == list(range(10))
    assert chunked.read(records, [7, 2, 7]) == [7, 2, 7]
    assert chunked.read(list(range(10)), range(3)) == [0, 1, 2]   # no __getitems__

"""builder_info: preparing our datasets leaves nothing behind in the temporary directory."""

import tempfile

import pytest

from flax_transformer import data
from flax_transformer.config import DataConfig
from tests.data.test_parallel_text import corpus


@pytest.mark.parametrize("dataset", ["number_words", "parallel_text"])
def test_preparing_a_dataset_leaves_no_temporary_directory(dataset, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    workdir = tmp_path / "run"
    if dataset == "number_words":
        config = DataConfig(data_dir=str(workdir / "data"))
    else:
        config = corpus(tmp_path)
    splits = data.load_splits(config, str(workdir))  # builds twice: unprepared, prepared
    assert len(splits["validation"]) > 0
    assert sorted(path.name for path in scratch.iterdir()) == []

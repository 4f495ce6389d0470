"""TFDS sources: a dataset that is not prepared names `tfds build NAME` / the data_dir instead of a raw KeyError,
and README's `tfds:tiny_shakespeare` source reads once the data is there (TFDS mock data)."""

import pytest

from modernlm_jax.data.sources import load_documents

tfds = pytest.importorskip("tensorflow_datasets")


def test_unprepared_dataset_names_the_build_command_and_data_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "empty"))
  with pytest.raises(
    ValueError, match=r"not prepared in data_dir .*empty.*`tfds build tiny_shakespeare --file_format=array_record`"
  ) as info:
    load_documents("tfds:tiny_shakespeare", "train")
  assert "TFDS_DATA_DIR" in str(info.value)
  assert not isinstance(info.value.__cause__, ValueError)  # it wraps TFDS's own KeyError / not-found error


def test_unknown_dataset_is_named(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  with pytest.raises(ValueError, match="'no_such_corpus_xyz' is not a TFDS dataset"):
    load_documents("tfds:no_such_corpus_xyz", "train")


def test_readme_tiny_shakespeare_source_reads_with_mock_data():
  with tfds.testing.mock_data(num_examples=3):
    docs = load_documents("tfds:tiny_shakespeare", "train")
  assert 1 <= len(docs) <= 3 and all(isinstance(d, str) and d for d in docs)

"""Document sources: builtin corpus, text/jsonl/tfds, holdout split, mixtures, bad input."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from modernlm_jax.data import builtin_corpus, sources
from modernlm_jax.data.sources import load_documents, read_source


def _write(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, encoding="utf-8")
  return path


def _many_docs(n: int, tag: str = "doc") -> list[str]:
  return [f"{tag} number {i} says something about item {i * 7 % 13}." for i in range(n)]


# ----------------------------------------------------------------------------- builtin


def test_builtin_corpus_is_large_english_and_split_deterministically():
  train = load_documents("builtin", "train")
  validation = load_documents("builtin", "validation")
  everything = load_documents("builtin", "all")
  assert sum(len(t.encode("utf-8")) for t in everything) >= 1_000_000
  assert len(validation) >= 3 and len(train) > 10 * len(validation)
  assert not set(train) & set(validation)
  assert sorted(train + validation) == sorted(everything)
  assert load_documents("builtin", "validation") == validation  # same split every call
  assert " the " in everything[0] and builtin_corpus.corpus_version().startswith("builtin-v1-py3.")


# ----------------------------------------------------------------------------- text


def test_text_document_modes(tmp_path):
  _write(tmp_path / "a.txt", "one\ntwo\n\n  \nthree<|endoftext|>")  # auto: has EOT -> eot mode
  _write(tmp_path / "b.txt", "para one\nline two\n\npara two\n")
  spec = f"text:{tmp_path}/*.txt"
  assert load_documents(spec, "all") == ["one\ntwo\n\n  \nthree", "para one\nline two", "para two"]
  assert load_documents(f"text@file:{tmp_path}/b.txt", "all") == ["para one\nline two\n\npara two"]
  assert load_documents(f"text@line:{tmp_path}/b.txt", "all") == ["para one", "line two", "para two"]
  assert load_documents(f"text@blank:{tmp_path}/a.txt", "all") == ["one\ntwo", "three<|endoftext|>"]


def test_text_reads_gzip_and_crlf(tmp_path):
  with gzip.open(tmp_path / "c.txt.gz", "wt", encoding="utf-8") as f:
    f.write("first doc\r\nstill first\r\n\r\nsecond doc\r\n")
  assert load_documents(f"text:{tmp_path}/*.gz", "all") == ["first doc\nstill first", "second doc"]


def test_holdout_is_one_percent_deterministic_and_disjoint(tmp_path):
  docs = _many_docs(2000)
  _write(tmp_path / "d.txt", "\n\n".join(docs))
  spec = f"text:{tmp_path}/d.txt"
  train, val = load_documents(spec, "train"), load_documents(spec, "validation")
  assert 5 <= len(val) <= 40  # ~1% of 2000
  assert not set(train) & set(val) and len(train) + len(val) == 2000
  assert load_documents(spec, "validation") == val
  # The split follows the text, not the file layout: reordering the files keeps it.
  _write(tmp_path / "e.txt", "\n\n".join(reversed(docs)))
  assert sorted(load_documents(f"text:{tmp_path}/e.txt", "validation")) == sorted(val)


def test_holdout_keeps_at_least_one_document(tmp_path):
  _write(tmp_path / "f.txt", "alpha\n\nbeta\n\ngamma")
  spec = f"text:{tmp_path}/f.txt"
  assert len(load_documents(spec, "validation")) == 1
  assert len(load_documents(spec, "train")) == 2
  _write(tmp_path / "g.txt", "just one document")
  with pytest.raises(ValueError, match="val_source"):
    load_documents(f"text:{tmp_path}/g.txt", "train")


# ----------------------------------------------------------------------------- jsonl


def test_jsonl_fields_and_bad_rows(tmp_path):
  rows = [{"text": "first", "body": "b1"}, {"text": "second", "body": "b2"}]
  good = _write(tmp_path / "good.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
  assert load_documents(f"jsonl:{good}", "all") == ["first", "second"]
  assert load_documents(f"jsonl:{good}", "all", jsonl_field="body") == ["b1", "b2"]
  assert load_documents(f"jsonl@body:{good}", "all") == ["b1", "b2"]
  bad = _write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"text": broken\n[1, 2]\n{"other": "x"}\n{"text": "fine"}\n')
  with pytest.raises(ValueError, match=r"bad\.jsonl:2: malformed JSONL row.*skip_bad_rows"):
    load_documents(f"jsonl:{bad}", "all")
  loaded = read_source(f"jsonl:{bad}", "all", skip_bad_rows=True)
  assert loaded.texts == ["ok", "fine"] and loaded.skipped_rows == 3


def test_jsonl_missing_field_names_the_setting(tmp_path):
  path = _write(tmp_path / "x.jsonl", '{"content": "a"}\n')
  with pytest.raises(ValueError, match=r"x\.jsonl:1.*no field 'text'.*data.jsonl_field"):
    load_documents(f"jsonl:{path}", "all")


# ----------------------------------------------------------------------------- tfds


def _fake_tfds_source(self, split, decoders=None, deserialize_method=None, **kwargs):
  del decoders, deserialize_method, kwargs
  n = {"train": 300, "validation": 4}[split]
  return [{"text": f"{self.name} {split} example {i}".encode()} for i in range(n)]


def test_tfds_source_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(as_data_source_fn=_fake_tfds_source):
    train = load_documents("tfds:lm1b", "train")
    validation = load_documents("tfds:lm1b", "validation")
    assert len(train) == 300 and train[0] == "lm1b train example 0"
    assert validation == [f"lm1b validation example {i}" for i in range(4)]
    # An explicit split is carved into train/validation by the 1% holdout.
    held_train = load_documents("tfds:lm1b:train", "train")
    held_val = load_documents("tfds:lm1b:train", "validation")
    assert len(held_train) + len(held_val) == 300 and 1 <= len(held_val) <= 12
    with pytest.raises(ValueError, match="no feature 'body'"):
      load_documents("tfds@body:lm1b", "train")


def test_tfds_random_mock_examples_are_decoded():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=5):
    docs = load_documents("tfds:lm1b", "train")
  assert 1 <= len(docs) <= 5 and all(isinstance(d, str) for d in docs)


# ----------------------------------------------------------------------------- mixtures


def test_parse_mixture():
  parts = sources.parse_mixture("mix:0.7=text:/a/*.txt, 0.3=builtin")
  assert parts == [(0.7, "text:/a/*.txt"), (0.3, "builtin")]
  for bad in ["mix:builtin", "mix:", "mix:0=builtin", "mix:x=builtin", "mix:1=mix:1=builtin", "mix:1=nope"]:
    with pytest.raises(ValueError):
      sources.parse_mixture(bad)


def test_mixture_weights_by_length_and_seed():
  big = np.full(1000, 10)  # 10,000 units
  small = np.full(50, 20)  # 1,000 units
  picks = sources.mixture_doc_indices([big, small], [0.5, 0.5], seed=3)
  units = [int(big[picks[0]].sum()), int(small[picks[1]].sum())]
  assert abs(units[0] - 5500) <= 10 and abs(units[1] - 5500) <= 20  # equal shares of 11,000
  assert len(set(picks[0].tolist())) == len(picks[0])  # the big one is subsampled, no repeats
  np.testing.assert_array_equal(picks[1][:50], picks[1][50:100])  # the small one repeats whole passes
  same = sources.mixture_doc_indices([big, small], [0.5, 0.5], seed=3)
  other = sources.mixture_doc_indices([big, small], [0.5, 0.5], seed=4)
  np.testing.assert_array_equal(picks[0], same[0])
  assert not np.array_equal(np.sort(picks[0]), np.sort(other[0]))


def test_mixture_documents(tmp_path):
  _write(tmp_path / "a.txt", "\n\n".join(_many_docs(300, "alpha")))
  _write(tmp_path / "b.txt", "\n\n".join(_many_docs(100, "beta")))
  docs = load_documents(f"mix:3=text:{tmp_path}/a.txt,1=text:{tmp_path}/b.txt", "train", seed=0)
  chars = {tag: sum(len(d) for d in docs if d.startswith(tag)) for tag in ("alpha", "beta")}
  assert chars["alpha"] / (chars["alpha"] + chars["beta"]) == pytest.approx(0.75, abs=0.02)


# ----------------------------------------------------------------------------- bad input and fingerprints


def test_bad_specs_and_paths(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nothing-here/\*\.txt"):
    load_documents(f"text:{tmp_path}/nothing-here/*.txt", "train")
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):
    load_documents(f"jsonl:{tmp_path}/missing.jsonl", "train")
  with pytest.raises(ValueError, match="is a directory"):
    load_documents(f"text:{tmp_path}", "train")
  with pytest.raises(ValueError, match="unknown data source"):
    load_documents("csv:/x.csv", "train")
  with pytest.raises(ValueError, match="text mode"):
    load_documents(f"text@pages:{tmp_path}/*.txt", "train")
  with pytest.raises(ValueError, match="split must be"):
    load_documents("builtin", "test")
  _write(tmp_path / "empty.txt", "  \n\n \n")
  with pytest.raises(ValueError, match="no documents"):
    load_documents(f"text@file:{tmp_path}/empty.txt", "all")
  (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
  with pytest.raises(ValueError, match="not valid UTF-8"):
    load_documents(f"text@file:{tmp_path}/latin1.txt", "all")
  assert load_documents(f"text@file:{tmp_path}/latin1.txt", "all", skip_bad_rows=True) == ["caf\ufffd"]


def test_fingerprint_tracks_files(tmp_path):
  path = _write(tmp_path / "a.txt", "one\n\ntwo")
  spec = f"text:{tmp_path}/*.txt"
  first = sources.source_fingerprint(spec, "train")
  assert sources.source_fingerprint(spec, "train") == first
  assert sources.source_fingerprint(spec, "validation") != first
  path.write_text("one\n\ntwo\n\nthree", encoding="utf-8")
  assert sources.source_fingerprint(spec, "train") != first


def test_seeded_permutation_is_a_fixed_permutation():
  perm = sources.seeded_permutation(1000, 7, 1)
  assert sorted(perm.tolist()) == list(range(1000))
  np.testing.assert_array_equal(perm, sources.seeded_permutation(1000, 7, 1))
  assert not np.array_equal(perm, sources.seeded_permutation(1000, 8, 1))
  # Pinned values: the order must not drift with numpy versions.
  assert sources.seeded_permutation(8, 0).tolist() == PINNED_PERMUTATION


PINNED_PERMUTATION = [0, 2, 1, 5, 6, 4, 3, 7]


# ----------------------------------------------------------------------------- shared data


@pytest.mark.shared_data
def test_tinystories_loads_through_text(shared_data_dir):
  folder = shared_data_dir / "tinystories"
  if not folder.is_dir():
    pytest.skip("no tinystories folder")
  v2 = load_documents(f"text:{folder}/tinystoriesV2_gpt4_train_first10000lines.txt", "all")
  assert 1700 <= len(v2) <= 1730  # 1,727 complete stories + the cut last one (per MANIFEST)
  assert all("<|endoftext|>" not in d for d in v2)
  val = load_documents(f"text:{folder}/tinystories_val.txt", "validation")
  assert val and all(isinstance(d, str) and d for d in val)


@pytest.mark.shared_data
def test_wikitext2_loads_through_text(shared_data_dir):
  folder = shared_data_dir / "wikitext2"
  if not folder.is_dir():
    pytest.skip("no wikitext2 folder")
  whole = load_documents(f"text@file:{folder}/valid.txt", "all")
  assert len(whole) == 1 and whole[0].startswith("= Homarus gammarus =")
  paragraphs = load_documents(f"text:{folder}/train.txt", "train")
  assert len(paragraphs) > 10_000

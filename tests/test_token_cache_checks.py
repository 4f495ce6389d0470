"""A damaged token cache entry is noticed on open, named in a warning and rebuilt; temp leftovers are removed."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from modernlm_jax.data import token_cache
from modernlm_jax.data.tokenizers import ByteTokenizer

DOCS = [f"document {i}: " + "lorem ipsum dolor " * (i % 5 + 1) for i in range(40)]


def build(tmp_path, tokenizer=None, calls=None):
  def documents():
    if calls is not None:
      calls.append(1)
    return DOCS

  return token_cache.load_or_build(
    fingerprint="fp-1",
    split="train",
    tokenizer=tokenizer or ByteTokenizer(),
    documents=documents,
    cache_dir=str(tmp_path / "cache"),
    name="docs",
  )


@pytest.fixture
def entry(tmp_path):
  corpus = build(tmp_path)
  return corpus.path, np.array(corpus.tokens), corpus.doc_offsets.copy()


def truncate_tokens(folder):
  path = folder / "tokens.bin"
  os.truncate(path, path.stat().st_size // 2)


def delete_offsets(folder):
  (folder / "doc_offsets.npy").unlink()


def change_one_id(folder):  # valid-but-wrong: still inside the vocabulary
  data = np.fromfile(folder / "tokens.bin", dtype=np.uint16)
  data[len(data) // 2] = (int(data[len(data) // 2]) + 1) % 256
  data.tofile(folder / "tokens.bin")


def garbage_meta(folder):
  (folder / "meta.json").write_text("{not json")


def other_tokenizer(folder):
  meta = json.loads((folder / "meta.json").read_text())
  (folder / "meta.json").write_text(json.dumps({**meta, "tokenizer": "sentencepiece-257-abc"}))


def out_of_range_in_old_entry(folder):
  """An entry written before fingerprints existed, holding an id the tokenizer cannot produce."""
  meta = json.loads((folder / "meta.json").read_text())
  for k in ("content", "ids_below"):
    meta.pop(k)
  (folder / "meta.json").write_text(json.dumps(meta))
  data = np.fromfile(folder / "tokens.bin", dtype=np.uint16)
  data[3] = 300
  data.tofile(folder / "tokens.bin")


DAMAGE = {  # damage -> what the warning must say
  "truncated_tokens_bin": (truncate_tokens, r"tokens\.bin has \d+ bytes, expected \d+ .*truncated"),
  "deleted_doc_offsets": (delete_offsets, r"doc_offsets\.npy is missing"),
  "valid_but_wrong_id": (change_one_id, r"content fingerprint mismatch"),
  "garbage_meta_json": (garbage_meta, r"meta\.json is unreadable"),
  "other_tokenizer_in_meta": (other_tokenizer, r"holds tokens of tokenizer 'sentencepiece-257-abc', not 'bytes-v1'"),
  "out_of_range_id": (out_of_range_in_old_entry, r"holds id 300, outside the tokenizer's vocabulary \[0, 257\)"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_entry_is_named_and_rebuilt(damage, entry, tmp_path, caplog):
  folder, tokens, offsets = entry
  fn, pattern = DAMAGE[damage]
  fn(folder)
  calls = []
  with caplog.at_level(logging.WARNING):
    corpus = build(tmp_path, calls=calls)
  assert f"token cache entry {folder} is damaged" in caplog.text and "rebuilding it" in caplog.text
  import re

  assert re.search(pattern, caplog.text), caplog.text
  assert corpus.built and calls == [1] and corpus.path == folder
  np.testing.assert_array_equal(np.array(corpus.tokens), tokens)
  np.testing.assert_array_equal(corpus.doc_offsets, offsets)
  assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tmp-")]


def test_intact_entry_is_reused_and_its_ids_checked_once(entry, tmp_path, monkeypatch):
  folder, tokens, _ = entry
  meta = json.loads((folder / "meta.json").read_text())
  assert meta["ids_below"] == 257 and len(meta["content"]) == 32
  calls = []
  corpus = build(tmp_path, calls=calls)
  assert not corpus.built and not calls
  np.testing.assert_array_equal(np.array(corpus.tokens), tokens)
  out_of_range_in_old_entry(folder)  # now make it an old entry whose ids were never checked ...
  data = np.fromfile(folder / "tokens.bin", dtype=np.uint16)
  data[3] = tokens[3]
  data.tofile(folder / "tokens.bin")  # ... with valid ids: checked once, then recorded
  assert not build(tmp_path).built
  assert json.loads((folder / "meta.json").read_text())["ids_below"] == 257
  monkeypatch.setattr(np.memmap, "max", lambda self, *a, **k: pytest.fail("ids checked twice"), raising=False)
  assert not build(tmp_path).built


def test_leftover_temp_folders_of_dead_builds_are_removed(tmp_path, caplog):
  root = tmp_path / "cache" / "tokens"
  root.mkdir(parents=True)
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  gone = root / f".tmp-docs-train-abc-{dead.pid}-deadbeef"
  live = root / f".tmp-docs-train-abc-{os.getpid()}-0badf00d"  # a build still running (here: this process)
  for d in (gone, live):
    d.mkdir()
    (d / "tokens.bin").write_bytes(b"\0" * 10)
  with caplog.at_level(logging.WARNING):
    build(tmp_path)
  assert not gone.exists() and live.exists()
  assert f"removing {gone}, left by an interrupted tokenisation" in caplog.text

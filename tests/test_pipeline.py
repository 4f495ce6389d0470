"""The batch pipeline: packing semantics, determinism, resume, host sharding, cache, eval."""

from __future__ import annotations

import json
from pathlib import Path

import chex
import numpy as np
import pytest

from modernlm_jax.data import pipeline, token_cache
from modernlm_jax.data.pipeline import (
  default_data_config,
  load_doc_table,
  make_eval_batches,
  make_train_iterator,
  parse_seq_len_schedule,
  seq_len_at_step,
)
from modernlm_jax.data.tokenizers import ByteTokenizer, GPT2Tokenizer

DOC_STRIDE = 100  # token id = doc * DOC_STRIDE + offset: every token names its document and offset


class IntTokenizer:
  """Whitespace-separated integers -> ids, so tests can trace every token to (doc, offset)."""

  def __init__(self, vocab_size: int = 10_001):
    self.vocab_size = vocab_size
    self.eos_id = vocab_size - 1
    self.identity = f"ints-{vocab_size}"
    self.encode_batch_calls = 0

  def encode(self, text):
    return [int(w) for w in text.split()]

  def encode_batch(self, texts):
    self.encode_batch_calls += 1
    return [self.encode(t) for t in texts]

  def decode(self, ids):
    return " ".join(str(i) for i in ids)


def _doc_len(d: int) -> int:
  return 3 + (d * 7) % 11


def _write_docs(path: Path, docs: range) -> Path:
  text = "\n\n".join(" ".join(str(d * DOC_STRIDE + k) for k in range(_doc_len(d))) for d in docs)
  path.write_text(text, encoding="utf-8")
  return path


@pytest.fixture
def cfg(tmp_path, token_cache_dir):
  """60 training documents (546 tokens with EOS) and a separate 8-document validation file."""
  config = default_data_config()
  config.source = f"text:{_write_docs(tmp_path / 'train.txt', range(60))}"
  config.val_source = f"text:{_write_docs(tmp_path / 'val.txt', range(60, 68))}"
  config.seq_len = 16
  config.cache_dir = str(token_cache_dir)
  config.prefetch = 0
  return config


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    chex.assert_trees_all_close(x, y, rtol=0, atol=0)


def _doc(tokens, eos):
  return np.where(tokens == eos, -1, tokens // DOC_STRIDE)


# ----------------------------------------------------------------------------- config and schedule


def test_default_config_fields():
  config = default_data_config()
  for name in (
    "source",
    "val_source",
    "jsonl_field",
    "seq_len",
    "seq_len_schedule",
    "isolate_documents",
    "cache_dir",
    "skip_bad_rows",
    "val_tokens",
    "num_epochs",
  ):
    assert name in config
  settings = pipeline.DataSettings.from_config(config)
  assert settings.source == "builtin" and settings.seq_len == config.seq_len
  config.seq_len = 0
  with pytest.raises(ValueError, match="seq_len"):
    pipeline.DataSettings.from_config(config)


def test_seq_len_schedule_parsing():
  assert parse_seq_len_schedule("64:200,128:400,512", 512) == ((200, 64), (400, 128), (-1, 512))
  assert parse_seq_len_schedule("", 256) == ((-1, 256),)
  config = default_data_config()
  config.update(seq_len=512, seq_len_schedule="64:200,128:400,512")
  assert [seq_len_at_step(config, s) for s in (0, 199, 200, 399, 400, 10**6)] == [64, 64, 128, 128, 512, 512]
  for bad, match in [
    ("64:200,128:100,512", "increase"),
    ("1024:10,512", r"\[1, data.seq_len"),
    ("64:200,256", "must end at"),
    ("64:200,128:400", "last entry"),
    ("64,512", "last entry"),
    ("a:5,512", "not a number"),
  ]:
    with pytest.raises(ValueError, match=match):
      parse_seq_len_schedule(bad, 512)


# ----------------------------------------------------------------------------- packing semantics


def test_batch_format_and_next_token_targets(cfg):
  tok = IntTokenizer()
  it = make_train_iterator(cfg, tok, seed=0, global_batch_size=4)
  for batch in _take(it, 10):
    assert set(batch) == {"inputs", "targets", "positions", "segment_ids", "loss_mask"}
    for key in ("inputs", "targets", "positions", "segment_ids"):
      chex.assert_shape(batch[key], (4, 16))
      assert batch[key].dtype == np.int32
    assert batch["loss_mask"].dtype == np.float32 and np.all(batch["loss_mask"] == 1)
    np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
    inputs, targets = batch["inputs"], batch["targets"]
    real = inputs != tok.eos_id
    # Inside a document the target is the next offset; a document's last token predicts EOS.
    last = (inputs % DOC_STRIDE) == np.vectorize(_doc_len)(inputs // DOC_STRIDE) - 1
    assert np.all(np.where(real & ~last, targets == inputs + 1, True))
    assert np.all(np.where(real & last, targets == tok.eos_id, True))
    # After EOS comes the first token of some document.
    assert np.all(np.where(~real, targets % DOC_STRIDE == 0, True))


def test_isolated_documents_never_see_each_other(cfg):
  tok = IntTokenizer()
  it = make_train_iterator(cfg, tok, seed=1, global_batch_size=4)
  for batch in _take(it, 10):
    inputs, targets = batch["inputs"], batch["targets"]
    seg, pos = batch["segment_ids"], batch["positions"]
    for r in range(inputs.shape[0]):
      starts = np.flatnonzero(np.diff(seg[r])) + 1
      # A new segment begins exactly at an EOS input (it acts as the next document's BOS).
      assert np.all(inputs[r, starts] == tok.eos_id)
      assert set(np.flatnonzero(inputs[r, 1:] == tok.eos_id) + 1) == set(starts.tolist())
      assert seg[r, 0] == 1 and np.all(np.diff(seg[r]) >= 0)
      for s in np.unique(seg[r]):
        cols = seg[r] == s
        docs = set(_doc(inputs[r, cols], tok.eos_id)) | set(_doc(targets[r, cols], tok.eos_id))
        assert len(docs - {-1}) == 1, "a segment mixes documents"
        np.testing.assert_array_equal(pos[r, cols], np.arange(cols.sum()))
      # Where a segment starts at EOS, a token's position is its offset in the document + 1.
      if len(starts):
        tail = slice(starts[0], None)
        own = inputs[r, tail] != tok.eos_id
        np.testing.assert_array_equal(pos[r, tail][own], inputs[r, tail][own] % DOC_STRIDE + 1)


def test_without_isolation_a_row_is_one_segment(cfg):
  cfg.isolate_documents = False
  batch = next(make_train_iterator(cfg, IntTokenizer(), seed=0, global_batch_size=2))
  np.testing.assert_array_equal(batch["segment_ids"], np.ones((2, 16), np.int32))
  np.testing.assert_array_equal(batch["positions"], np.tile(np.arange(16, dtype=np.int32), (2, 1)))


def test_one_epoch_uses_every_token_once(cfg):
  tok = IntTokenizer()
  cfg.num_epochs = 1
  it = make_train_iterator(cfg, tok, seed=3, global_batch_size=1)
  n_tokens = sum(_doc_len(d) + 1 for d in range(60))
  blocks = (n_tokens - 1) // 16
  assert it.num_steps == blocks
  seen = np.concatenate([b["inputs"].ravel() for b in it])
  assert len(seen) == blocks * 16
  words = seen[seen != tok.eos_id]
  assert len(np.unique(words)) == len(words)  # no token twice within an epoch
  assert n_tokens - 60 - len(words) <= 16  # only the dropped tail block is missing


# ----------------------------------------------------------------------------- determinism and resume


def test_same_seed_same_batches_new_order_per_epoch(cfg):
  first = _take(make_train_iterator(cfg, IntTokenizer(), seed=5, global_batch_size=4), 20)
  # Built again (now from the warm cache) with a fresh tokenizer object: identical batches.
  again = _take(make_train_iterator(cfg, IntTokenizer(), seed=5, global_batch_size=4), 20)
  _assert_batches_equal(first, again)
  other = _take(make_train_iterator(cfg, IntTokenizer(), seed=6, global_batch_size=4), 20)
  assert not np.array_equal(first[0]["inputs"], other[0]["inputs"])
  # 34 blocks per epoch: steps 0-7 are epoch 0, steps 9-16 epoch 1, each in its own order.
  epoch0 = np.concatenate([b["inputs"] for b in first[:8]])
  epoch1 = np.concatenate([b["inputs"] for b in first[9:17]])
  assert not np.array_equal(epoch0, epoch1)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_restored_state_continues_exactly(cfg, prefetch):
  cfg.prefetch = prefetch
  cfg.seq_len_schedule = "8:6,16"
  tok = IntTokenizer()
  uninterrupted = _take(make_train_iterator(cfg, tok, seed=2, global_batch_size=4), 15)
  it = make_train_iterator(cfg, tok, seed=2, global_batch_size=4)
  _take(it, 5)
  state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
  assert state["step"] == 5 and len(json.dumps(state)) < 400
  _take(it, 3)  # the run goes on past the checkpoint and then dies
  it.close()
  restored = make_train_iterator(cfg, tok, seed=2, global_batch_size=4)
  restored.set_state(state)
  _assert_batches_equal(_take(restored, 10), uninterrupted[5:])
  restored.close()
  from_step = make_train_iterator(cfg, tok, seed=2, global_batch_size=4, start_step=5)
  _assert_batches_equal(_take(from_step, 10), uninterrupted[5:])
  from_step.close()


def test_set_state_rejects_a_different_pipeline(cfg):
  state = make_train_iterator(cfg, IntTokenizer(), seed=2, global_batch_size=4).get_state()
  other = make_train_iterator(cfg, IntTokenizer(), seed=3, global_batch_size=4)
  with pytest.raises(ValueError, match="seed"):
    other.set_state(state)
  with pytest.raises(ValueError, match="version"):
    other.set_state({"step": 3})


def test_two_processes_union_is_the_single_host_batch(cfg):
  tok = IntTokenizer()
  single = _take(make_train_iterator(cfg, tok, seed=4, global_batch_size=6), 8)
  hosts = [
    _take(make_train_iterator(cfg, tok, seed=4, global_batch_size=6, process_index=p, process_count=2), 8)
    for p in range(2)
  ]
  for step, full in enumerate(single):
    for key in full:
      chex.assert_shape(hosts[0][step][key], (3, 16))
      np.testing.assert_array_equal(np.concatenate([hosts[0][step][key], hosts[1][step][key]]), full[key])
  with pytest.raises(ValueError, match="not divisible by process_count=4"):
    make_train_iterator(cfg, tok, seed=4, global_batch_size=6, process_count=4)
  with pytest.raises(ValueError, match="process_index"):
    make_train_iterator(cfg, tok, seed=4, global_batch_size=6, process_index=2, process_count=2)


def test_seq_len_schedule_truncates_blocks(cfg):
  tok = IntTokenizer()
  full = _take(make_train_iterator(cfg, tok, seed=0, global_batch_size=2), 6)
  cfg.seq_len_schedule = "4:2,8:4,16"
  it = make_train_iterator(cfg, tok, seed=0, global_batch_size=2)
  scheduled = _take(it, 6)
  assert [b["inputs"].shape[1] for b in scheduled] == [4, 4, 8, 8, 16, 16]
  assert [it.seq_len_at(s) for s in range(6)] == [4, 4, 8, 8, 16, 16]
  for short, long in zip(scheduled, full):
    length = short["inputs"].shape[1]
    for key in ("inputs", "targets", "segment_ids", "positions"):
      np.testing.assert_array_equal(short[key], long[key][:, :length])


# ----------------------------------------------------------------------------- token cache


def test_cache_is_reused_not_retokenized(cfg, token_cache_dir):
  tok = IntTokenizer()
  first = load_doc_table(cfg, tok, "train")
  assert first.built and tok.encode_batch_calls > 0
  tok.encode_batch_calls = 0
  second = load_doc_table(cfg, tok, "train")
  assert not second.built and tok.encode_batch_calls == 0
  make_train_iterator(cfg, tok, seed=0, global_batch_size=2)
  assert tok.encode_batch_calls == 0
  np.testing.assert_array_equal(first.lengths, second.lengths)
  (folder,) = [Path(p) for p in second.cache_paths]
  assert folder.parent == token_cache_dir / "tokens"
  assert json.loads((folder / "meta.json").read_text())["dtype"] == "uint16"
  # Another tokenizer identity is another cache entry; a vocab beyond uint16 is stored as uint32.
  wide = IntTokenizer(vocab_size=70_000)
  table = load_doc_table(cfg, wide, "train")
  assert table.built and table.store.arrays[0].dtype == np.uint32
  assert int(table.store.gather(np.array([0]))[0]) == 0


def test_interrupted_build_is_never_trusted(cfg, token_cache_dir, monkeypatch):
  real = token_cache.tokenize_to_files

  def dies_halfway(documents, tokenizer, folder, meta):
    (folder / "tokens.bin").write_bytes(b"\x00" * 10)
    raise KeyboardInterrupt

  monkeypatch.setattr(token_cache, "tokenize_to_files", dies_halfway)
  with pytest.raises(KeyboardInterrupt):
    load_doc_table(cfg, IntTokenizer(), "train")
  assert not list((token_cache_dir / "tokens").iterdir())  # no entry, no leftovers
  monkeypatch.setattr(token_cache, "tokenize_to_files", real)
  tok = IntTokenizer()
  assert load_doc_table(cfg, tok, "train").built and tok.encode_batch_calls > 0


# ----------------------------------------------------------------------------- validation batches


def test_eval_batches_fixed_budget_and_padding(cfg):
  tok = IntTokenizer()
  val_tokens = sum(_doc_len(d) + 1 for d in range(60, 68))
  batches = make_eval_batches(cfg, tok, batch_size=4)
  _assert_batches_equal(batches, make_eval_batches(cfg, IntTokenizer(), batch_size=4))
  for b in batches:
    chex.assert_shape(b["inputs"], (4, 16))
  assert sum(b["loss_mask"].sum() for b in batches) == val_tokens - 1
  last = batches[-1]
  pad = last["loss_mask"] == 0
  assert pad.any() and np.all(last["segment_ids"][pad] == 0) and np.all(last["inputs"][pad] == 0)
  words = np.concatenate([b["inputs"][b["loss_mask"] > 0] for b in batches])
  assert set(_doc(words, tok.eos_id)) - {-1} == set(range(60, 68))
  cfg.val_tokens = 20
  capped = make_eval_batches(cfg, tok, batch_size=2, seq_len=8)
  assert sum(b["loss_mask"].sum() for b in capped) == 20 and capped[0]["inputs"].shape == (2, 8)
  halves = [make_eval_batches(cfg, tok, batch_size=2, seq_len=8, process_index=p, process_count=2) for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([halves[0][0]["inputs"], halves[1][0]["inputs"]]), capped[0]["inputs"])


def test_holdout_validation_is_disjoint_from_training(cfg):
  cfg.val_source = ""
  tok = IntTokenizer()
  cfg.num_epochs = 1
  train_docs = set()
  for batch in make_train_iterator(cfg, tok, seed=0, global_batch_size=1):
    train_docs |= set(_doc(batch["inputs"].ravel(), tok.eos_id)) - {-1}
  val = make_eval_batches(cfg, tok, batch_size=2)
  val_docs = set(np.concatenate([_doc(b["inputs"][b["loss_mask"] > 0], tok.eos_id) for b in val])) - {-1}
  assert val_docs and not val_docs & train_docs


# ----------------------------------------------------------------------------- mixtures and bad input


def test_mixture_weights_by_tokens(cfg, tmp_path):
  a = _write_docs(tmp_path / "a.txt", range(0, 60))
  b = _write_docs(tmp_path / "b.txt", range(60, 80))
  cfg.source = f"mix:1=text:{a},3=text:{b}"
  tok = IntTokenizer()
  table = load_doc_table(cfg, tok, "train", mix_seed=0)
  tokens = table.store.gather(np.concatenate([np.arange(s, s + n) for s, n in zip(table.starts, table.lengths)]))
  from_b = np.count_nonzero((tokens != tok.eos_id) & (tokens >= 60 * DOC_STRIDE))
  words = np.count_nonzero(tokens != tok.eos_id)
  assert from_b / words == pytest.approx(0.75, abs=0.03)
  batch = next(make_train_iterator(cfg, tok, seed=0, global_batch_size=2))
  chex.assert_shape(batch["inputs"], (2, 16))


def test_bad_input_errors(cfg, tmp_path):
  tok = IntTokenizer()
  cfg.seq_len = 4096
  with pytest.raises(ValueError, match="fewer than data.seq_len"):
    make_train_iterator(cfg, tok, seed=0, global_batch_size=2)
  cfg.seq_len = 16
  cfg.source = f"text:{tmp_path}/nope/*.txt"
  with pytest.raises(FileNotFoundError, match=r"nope/\*\.txt"):
    make_train_iterator(cfg, tok, seed=0, global_batch_size=2)
  (tmp_path / "blank.txt").write_text("\n\n   \n")
  cfg.source = f"text:{tmp_path}/blank.txt"
  with pytest.raises(ValueError, match="no documents"):
    make_train_iterator(cfg, tok, seed=0, global_batch_size=2)
  cfg.source = f"text:{tmp_path}/train.txt"
  cfg.num_epochs = 1
  with pytest.raises(ValueError, match="num_epochs"):
    make_train_iterator(cfg, tok, seed=0, global_batch_size=64)


# ----------------------------------------------------------------------------- real corpora


@pytest.mark.slow
def test_builtin_source_works_offline(token_cache_dir):
  config = default_data_config()
  config.update(seq_len=64, prefetch=0)
  batch = next(make_train_iterator(config, ByteTokenizer(), seed=0, global_batch_size=2))
  text = ByteTokenizer().decode(batch["inputs"][0])
  assert len(text) > 20 and batch["inputs"].max() <= 256
  val = make_eval_batches(config, ByteTokenizer(), batch_size=8)
  available = load_doc_table(config, ByteTokenizer(), "validation").n_tokens - 1
  assert sum(b["loss_mask"].sum() for b in val) == min(config.val_tokens, available)


@pytest.mark.shared_data
def test_tinystories_through_the_pipeline_with_gpt2(shared_data_dir, token_cache_dir):
  path = shared_data_dir / "tinystories" / "tinystoriesV2_gpt4_train_first10000lines.txt"
  if not path.is_file():
    pytest.skip("TinyStories file absent")
  config = default_data_config()
  config.update(source=f"text:{path}", seq_len=128, prefetch=0)
  tok = GPT2Tokenizer()
  batch = next(make_train_iterator(config, tok, seed=0, global_batch_size=4))
  chex.assert_shape(batch["inputs"], (4, 128))
  assert " the" in tok.decode(batch["inputs"].ravel().tolist())
  assert len(make_eval_batches(config, tok, batch_size=4)) >= 1

"""Deterministic, resumable SFT and DPO batches (the post-training counterpart of ``pipeline``).

Rows. Every example becomes ``[EOS] + ids``: EOS opens it as a BOS, exactly as in pretraining where a
document's segment starts at the EOS ending the previous one. ``inputs`` are ``[EOS] + ids[:-1]``,
``targets`` are ``ids``, ``loss_mask`` is the example's response mask, ``positions`` restart at 0
per example and ``segment_ids`` count examples 1, 2, ... within a row; padding has segment 0 and
mask 0 (the ``isolate_documents`` semantics of pretraining, so attention never crosses examples).

SFT rows pack several examples (``data.pack_sft=True``: first fit over the epoch's shuffled order,
searching the most recent open rows) or hold one example each. DPO rows hold one pair: the batch has
the five keys twice, prefixed ``chosen_`` and ``rejected_``; both sequences start with the shared
prompt and only the responses (+EOS) are in the masks.

Order. Epoch ``e`` shuffles the training examples with a permutation keyed by ``(seed, e)``; its
rows follow. Global row ``g`` is row ``g - start(e)`` of the epoch containing it; step ``s`` takes
global rows ``s*B .. s*B+B-1`` and process ``p`` of ``P`` its contiguous share, so the hosts'
batches together are the single-host batch. Epochs repeat forever, each reshuffled. The iterator
state is ``{"step": s, ...}`` plus what the order depends on (checked on restore).

Held-out split. Examples are ranked by a hash of their content; the first
``max(round(val_fraction·N), val_min_records)`` (at most half) are validation, the same in every run
and for every tokenizer. ``data.val_source`` replaces the split with a separate file.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import ml_collections
import numpy as np

from modernlm_jax.data import formats, posttrain_cache
from modernlm_jax.data.files import content_hash
from modernlm_jax.data.iterator import StepIndexedIterator
from modernlm_jax.data.sources import seeded_permutation
from modernlm_jax.data.tokenizers import Tokenizer

log = logging.getLogger(__name__)

_ORDER_KEY = 0x70747261  # "ptra": example order within an epoch
PACK_WINDOW = 256  # open rows first fit searches; bounds packing cost at O(N * PACK_WINDOW) per epoch
_KEYS = ("inputs", "targets", "positions", "segment_ids", "loss_mask")


def shared_data_root() -> Path:
  """``../shared/data`` next to the repository (or ``$MODERNLM_SHARED_DATA``)."""
  default = Path(__file__).resolve().parents[3] / "shared" / "data"
  return Path(os.environ.get("MODERNLM_SHARED_DATA", default))


def default_posttrain_data_config(kind: str) -> ml_collections.ConfigDict:
  """``cfg.data`` of an SFT (``kind="sft"``) or DPO (``"dpo"``) config."""
  if kind not in ("sft", "dpo"):
    raise ValueError(f"kind must be 'sft' or 'dpo', got {kind!r}")
  root = shared_data_root()
  source = root / "alpaca" / "alpaca_5000.json" if kind == "sft" else root / "hh_rlhf" / "*" / "test.jsonl.gz"
  return ml_collections.ConfigDict(
    {
      "source": f"jsonl:{source}",  # [jsonl:|json:]GLOB of JSON-array or JSON-lines files (.gz ok)
      "val_source": "",  # "" -> hold out val_fraction of source
      "format": "auto",  # auto | alpaca | prompt_response | chat (SFT); auto | hh | prompt_chosen_rejected (DPO)
      "seq_len": 512,  # tokens per row (one pair's longer sequence for DPO)
      "pack_sft": True,  # SFT only: several examples per row (False: one per row, padded)
      "truncation": "prompt_left",  # prompt_left | right | skip (see data/formats.py)
      "min_prompt_tokens": 32,  # prompt_left keeps at least this many prompt tokens
      "skip_bad_rows": False,  # True: skip and count malformed records instead of failing
      "val_fraction": 0.05,
      "val_min_records": 64,
      "cache_dir": "",  # tokenized examples are cached here; "" -> $MODERNLM_CACHE or ~/.cache/modernlm_jax
    }
  )


@dataclasses.dataclass
class PostTrainData:
  """Tokenized training and held-out examples of one stage, plus what happened to the records."""

  kind: str  # "sft" | "dpo"
  train: list  # EncodedSFT or EncodedPair
  val: list
  seq_len: int
  eos_id: int
  stats: dict[str, Any]
  data_id: str  # what the order depends on: changes when the examples or their tokens change


def _held_out(examples: Sequence, fraction: float, minimum: int) -> tuple[list, list]:
  n = len(examples)
  if n < 2:
    raise ValueError(
      f"only {n} usable record(s): too few to hold out a validation split; add records or set data.val_source"
    )
  n_val = min(max(int(round(fraction * n)), minimum, 1), n // 2)
  rank = sorted(range(n), key=lambda i: (content_hash(examples[i].content_key()), i))
  is_val = np.zeros(n, dtype=bool)
  is_val[rank[:n_val]] = True
  # Validation keeps the hash order (stable across runs); training keeps file order (shuffled later).
  return [examples[i] for i in range(n) if not is_val[i]], [examples[i] for i in rank[:n_val]]


def load_posttrain_data(data_cfg: Any, tokenizer: Tokenizer, kind: str, *, use_cache: bool = True) -> PostTrainData:
  """Reads, splits and tokenizes ``data_cfg.source`` for SFT or DPO (from the on-disk cache when the same
  files, settings and tokenizer were seen before: ``posttrain_cache``)."""
  if not use_cache:
    return _read_and_tokenize(data_cfg, tokenizer, kind)
  return posttrain_cache.load_or_build(
    data_cfg, tokenizer.identity, kind, lambda: _read_and_tokenize(data_cfg, tokenizer, kind)
  )


def _read_and_tokenize(data_cfg: Any, tokenizer: Tokenizer, kind: str) -> PostTrainData:
  seq_len = int(data_cfg.seq_len)
  if seq_len < 2:
    raise ValueError(f"data.seq_len must be >= 2, got {seq_len}")
  truncation = formats.Truncation(str(data_cfg.truncation), int(data_cfg.min_prompt_tokens))
  read = dict(fmt=str(data_cfg.format), skip_bad_rows=bool(data_cfg.skip_bad_rows))
  train_stats, val_stats = formats.FormatStats(), formats.FormatStats()
  examples = formats.load_examples(str(data_cfg.source), kind, stats=train_stats, **read)
  if str(data_cfg.get("val_source", "")):
    train_ex = examples
    val_ex = formats.load_examples(str(data_cfg.val_source), kind, stats=val_stats, **read)
  else:
    train_ex, val_ex = _held_out(examples, float(data_cfg.val_fraction), int(data_cfg.val_min_records))
  encode = formats.encode_sft if kind == "sft" else formats.encode_preferences
  train = encode(train_ex, tokenizer, seq_len, truncation, train_stats)
  val = encode(val_ex, tokenizer, seq_len, truncation, val_stats)
  if not train or not val:
    raise ValueError(
      f"no usable {'training' if not train else 'validation'} examples in {data_cfg.source!r} "
      f"(stats: {train_stats.as_dict()}); check data.source, data.format and data.seq_len"
    )
  total = formats.FormatStats()
  total.add(train_stats)
  total.add(val_stats)
  stats = {**total.as_dict(), "train_examples": len(train), "val_examples": len(val)}
  digest = hashlib.sha256(
    json.dumps(
      [kind, str(data_cfg.source), str(data_cfg.get("val_source", "")), tokenizer.identity, seq_len, stats]
    ).encode()
  )
  for enc in train:
    for f in dataclasses.fields(enc):
      digest.update(np.ascontiguousarray(getattr(enc, f.name)).tobytes())
  log.info("%s data from %s: %s", kind, data_cfg.source, stats)
  return PostTrainData(kind, train, val, seq_len, int(tokenizer.eos_id), stats, digest.hexdigest()[:16])


# ----------------------------------------------------------------------------- rows


def _empty_rows(n_rows: int, seq_len: int) -> dict[str, np.ndarray]:
  out = {k: np.zeros((n_rows, seq_len), np.int32) for k in _KEYS[:-1]}
  out["loss_mask"] = np.zeros((n_rows, seq_len), np.float32)
  return out


def _put(rows: dict, r: int, start: int, segment: int, targets: np.ndarray, mask: np.ndarray, eos_id: int) -> None:
  n = len(targets)
  sl = slice(start, start + n)
  rows["targets"][r, sl] = targets
  rows["inputs"][r, start] = eos_id
  rows["inputs"][r, start + 1 : start + n] = targets[:-1]
  rows["positions"][r, sl] = np.arange(n, dtype=np.int32)
  rows["segment_ids"][r, sl] = segment
  rows["loss_mask"][r, sl] = mask


def sft_rows(
  data: Sequence[formats.EncodedSFT], groups: Sequence[Sequence[int]], seq_len: int, eos_id: int
) -> dict[str, np.ndarray]:
  """One row per group of example indices (the examples packed in order)."""
  rows = _empty_rows(len(groups), seq_len)
  for r, group in enumerate(groups):
    start = 0
    for segment, i in enumerate(group, start=1):
      ex = data[i]
      _put(rows, r, start, segment, ex.ids, ex.mask, eos_id)
      start += len(ex.ids)
    if start > seq_len:
      raise AssertionError(f"packed row holds {start} > {seq_len} tokens")
  return rows


def pair_rows(
  data: Sequence[formats.EncodedPair], indices: Sequence[int], seq_len: int, eos_id: int
) -> dict[str, np.ndarray]:
  """``chosen_*``/``rejected_*`` rows, one pair each; index -1 is an all-zero padding pair."""
  out = {}
  for side in ("chosen", "rejected"):
    rows = _empty_rows(len(indices), seq_len)
    for r, i in enumerate(indices):
      if i < 0:
        continue
      pair = data[i]
      response = getattr(pair, side)
      targets = np.concatenate([pair.prompt, response])
      mask = np.concatenate([np.zeros(len(pair.prompt), bool), np.ones(len(response), bool)])
      _put(rows, r, 0, 1, targets, mask, eos_id)
    out.update({f"{side}_{k}": v for k, v in rows.items()})
  return out


def pack_first_fit(lengths: np.ndarray, seq_len: int, window: int = PACK_WINDOW) -> list[list[int]]:
  """Groups of positions into ``lengths`` whose sums fit ``seq_len``, in first-fit order.

  Each item goes into the first of the last ``window`` rows with room for it, else a new row.
  """
  room = np.zeros(len(lengths), dtype=np.int64)
  groups: list[list[int]] = []
  for k, n in enumerate(np.asarray(lengths, dtype=np.int64)):
    lo = max(0, len(groups) - window)
    fits = np.flatnonzero(room[lo : len(groups)] >= n)
    if fits.size:
      r = lo + int(fits[0])
    else:
      r = len(groups)
      groups.append([])
      room[r] = seq_len
    groups[r].append(k)
    room[r] -= n
  return groups


class EpochRows:
  """Row groups of every epoch (examples shuffled by ``(seed, epoch)``) and global-row lookup."""

  def __init__(self, lengths: np.ndarray, seq_len: int, seed: int, pack: bool):
    self.lengths = np.asarray(lengths, dtype=np.int64)
    self.seq_len, self.seed, self.pack = seq_len, seed, pack
    self._starts = [0]  # global row at which epoch e starts (grows lazily)
    self._cache: dict[int, list[list[int]]] = {}
    self._lock = threading.Lock()

  def groups(self, epoch: int) -> list[list[int]]:
    with self._lock:
      if epoch not in self._cache:
        order = seeded_permutation(len(self.lengths), self.seed, _ORDER_KEY, epoch)
        if self.pack:
          groups = [[int(order[k]) for k in g] for g in pack_first_fit(self.lengths[order], self.seq_len)]
        else:
          groups = [[int(i)] for i in order]
        self._cache[epoch] = groups
        while len(self._cache) > 3:  # a batch spans at most two adjacent epochs
          del self._cache[min(self._cache)]
      return self._cache[epoch]

  def _epoch_of(self, row: int) -> int:
    while self._starts[-1] <= row:
      e = len(self._starts) - 1
      self._starts.append(self._starts[-1] + len(self.groups(e)))
    return bisect.bisect_right(self._starts, row) - 1

  def rows(self, global_rows: Sequence[int]) -> list[list[int]]:
    out = []
    for g in global_rows:
      e = self._epoch_of(int(g))
      out.append(self.groups(e)[int(g) - self._starts[e]])
    return out

  def rows_in_epoch(self, epoch: int) -> int:
    return len(self.groups(epoch))


class PostTrainIterator(StepIndexedIterator):
  """This process's rows of each global SFT/DPO batch; ``get_state``/``set_state`` for checkpoints."""

  RESUME_HINT = (
    "resume with the same seed, batch size, data files, tokenizer and data config, or start a new run "
    "in a new --workdir"
  )

  def __init__(
    self,
    data: PostTrainData,
    *,
    seed: int,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    pack: bool = True,
    start_step: int = 0,
  ):
    pack = pack and data.kind == "sft"
    super().__init__(
      global_batch_size=global_batch_size,
      process_index=process_index,
      process_count=process_count,
      fingerprint={
        "seed": seed,
        "global_batch_size": global_batch_size,
        "seq_len": data.seq_len,
        "pack": pack,
        "kind": data.kind,
        "data": data.data_id,
      },
    )
    self.data = data
    lengths = [len(e.ids) for e in data.train] if data.kind == "sft" else [0] * len(data.train)
    self._epochs = EpochRows(np.asarray(lengths), data.seq_len, seed, pack)
    self._step = start_step

  @property
  def steps_per_epoch(self) -> float:
    return self._epochs.rows_in_epoch(0) / self._global_batch_size

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    """This process's batch for ``step`` (pure: does not move the iterator)."""
    groups = self._epochs.rows(self.host_rows(step).tolist())
    if self.data.kind == "sft":
      return sft_rows(self.data.train, groups, self.data.seq_len, self.data.eos_id)
    return pair_rows(self.data.train, [g[0] for g in groups], self.data.seq_len, self.data.eos_id)


def make_posttrain_iterator(
  data: PostTrainData,
  *,
  seed: int,
  global_batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  pack: bool = True,
) -> PostTrainIterator:
  return PostTrainIterator(
    data,
    seed=seed,
    global_batch_size=global_batch_size,
    process_index=process_index,
    process_count=process_count,
    pack=pack,
  )


def make_posttrain_eval_batches(
  data: PostTrainData, *, batch_size: int, pack: bool = True, max_batches: int = 0
) -> list[dict[str, np.ndarray]]:
  """The held-out examples as fixed global batches (hash order; last batch padded with empty rows).

  Padding rows have all-zero masks, so they count neither as tokens (SFT) nor as pairs (DPO).
  """
  if data.kind == "sft":
    if pack:
      groups = pack_first_fit(np.asarray([len(e.ids) for e in data.val]), data.seq_len)
    else:
      groups = [[i] for i in range(len(data.val))]
  else:
    groups = [[i] for i in range(len(data.val))]
  n_batches = -(-len(groups) // batch_size)
  if max_batches > 0:
    n_batches = min(n_batches, max_batches)
  batches = []
  for b in range(n_batches):
    chunk = groups[b * batch_size : (b + 1) * batch_size]
    if data.kind == "sft":
      batches.append(sft_rows(data.val, chunk + [[]] * (batch_size - len(chunk)), data.seq_len, data.eos_id))
    else:
      batches.append(
        pair_rows(data.val, [g[0] for g in chunk] + [-1] * (batch_size - len(chunk)), data.seq_len, data.eos_id)
      )
  return batches


def batch_from_examples(data: Sequence, kind: str, seq_len: int, eos_id: int) -> dict[str, np.ndarray]:
  """One batch holding every example once (one per row): for tests and overfitting checks."""
  if kind == "sft":
    return sft_rows(data, [[i] for i in range(len(data))], seq_len, eos_id)
  return pair_rows(data, list(range(len(data))), seq_len, eos_id)

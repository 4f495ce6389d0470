"""Deterministic, resumable, host-sharded batches of packed token rows.

How a training batch is made (everything is a pure function of the seed and the step):

1. Tokenize: each document -> ids + EOS, cached on disk once per (source, split, tokenizer).
2. Epoch stream: for epoch ``e`` the documents are concatenated in a seeded order
   (permutation keyed by ``(seed, e)``), giving one long token stream of ``N`` tokens.
3. Blocks: the stream is cut into ``R = (N - 1) // seq_len`` blocks of ``seq_len`` tokens (the
   last partial block is dropped); block order within the epoch is a second seeded permutation.
   Global block ``b`` is block ``b % R`` of epoch ``b // R``; epochs repeat forever with fresh
   orders unless ``data.num_epochs`` bounds them.
4. Step ``s`` takes global blocks ``s*B .. s*B+B-1`` (``B`` = global batch size). Host ``p`` of
   ``P`` computes only its contiguous rows ``p*B/P .. (p+1)*B/P - 1``, so the union of the hosts'
   batches is exactly the single-host batch.
5. Sequence-length schedule: at a step whose scheduled length ``T`` is shorter than ``seq_len``,
   each row is the first ``T`` tokens of its block (truncation, as in sequence-length warmup);
   rows per batch stay constant.

Rows: ``inputs[t]`` is stream token ``t`` of the row and ``targets[t]`` the next stream token, so
the last target of a row is the first token after it (rows never need padding in training). With
``data.isolate_documents=True`` a position belongs to the document of its *target*: a document's
segment starts at the EOS that ends the previous document, which thereby acts as its BOS. The
cross-document target (EOS -> first token of the next document) therefore counts in the loss and
is predicted from the EOS alone, so no document's tokens ever need another document's tokens.
``positions`` restart at 0 with every segment (and at the start of every row). With
``isolate_documents=False`` a row is one segment (ids 1) with positions ``0..T-1``. ``loss_mask``
is 1 everywhere in training; it is 0 only on the padding of evaluation batches.

The iterator never looks at a model, so every model family sees identical batches for a seed.
grain supplies the step-indexed dataset, background prefetch and checkpointable iteration; the
iterator state saved by the training loop is a small JSON dict (the next step plus what the data
order depends on, checked on restore).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from typing import Any, Callable, Iterable, Sequence

import grain
import ml_collections
import numpy as np

from modernlm_jax.data import sources, token_cache
from modernlm_jax.data.iterator import StepIndexedIterator, check_batching
from modernlm_jax.data.tokenizers import Tokenizer

log = logging.getLogger(__name__)

_DOCS_KEY = 0x646F6373  # "docs": document order within an epoch
_BLOCKS_KEY = 0x626C6B73  # "blks": block order within an epoch
_EVAL_MIX_SEED = 0  # validation mixtures never depend on the training seed


def default_data_config() -> ml_collections.ConfigDict:
  """The ``cfg.data`` block (see the module docstrings of ``pipeline`` and ``sources``)."""
  return ml_collections.ConfigDict(
    {
      "source": "builtin",  # see sources.py for the spec syntax (text:, jsonl:, tfds:, mix:)
      "val_source": "",  # "" -> hold out ~1% of `source` (builtin: 5%) for validation
      "jsonl_field": "text",
      "seq_len": 512,  # block length and final training sequence length
      "seq_len_schedule": "",  # e.g. "64:200,128:400,512": 64 until step 200, 128 until 400, then 512
      "isolate_documents": True,  # segment ids per document (attention blocked across documents)
      "cache_dir": "",  # "" -> $MODERNLM_CACHE or ~/.cache/modernlm_jax
      "skip_bad_rows": False,
      "val_tokens": 65536,  # validation token budget (<= 0: the whole validation split)
      "num_epochs": 0,  # 0 -> repeat forever, a new order each epoch
      "prefetch": 2,  # batches prepared ahead in a background thread (0: synchronous)
    }
  )


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """A validated, typed copy of ``cfg.data``."""

  source: str = "builtin"
  val_source: str = ""
  jsonl_field: str = "text"
  seq_len: int = 512
  seq_len_schedule: str = ""
  isolate_documents: bool = True
  cache_dir: str = ""
  skip_bad_rows: bool = False
  val_tokens: int = 65536
  num_epochs: int = 0
  prefetch: int = 2

  @classmethod
  def from_config(cls, data_cfg: Any) -> "DataSettings":
    if isinstance(data_cfg, DataSettings):
      return data_cfg
    values = {}
    for field in dataclasses.fields(cls):
      if field.name in data_cfg:
        values[field.name] = type(field.default)(data_cfg[field.name])
    settings = cls(**values)
    if settings.seq_len < 1:
      raise ValueError(f"data.seq_len must be positive, got {settings.seq_len}")
    if settings.num_epochs < 0 or settings.prefetch < 0:
      raise ValueError("data.num_epochs and data.prefetch must be >= 0")
    parse_seq_len_schedule(settings.seq_len_schedule, settings.seq_len)
    return settings


def parse_seq_len_schedule(spec: str, seq_len: int) -> tuple[tuple[int, int], ...]:
  """``"64:200,128:400,512"`` -> ``((200, 64), (400, 128), (-1, 512))``: (until_step, length).

  The last entry has no step and must equal ``seq_len`` (the block length). "" means ``seq_len``
  throughout.
  """
  if not spec.strip():
    return ((-1, seq_len),)
  entries = []
  previous_step = 0
  items = [item.strip() for item in spec.split(",")]
  hint = "write it like '64:200,128:400,512' (length:until_step, ..., final length)"
  for i, item in enumerate(items):
    length_text, colon, until_text = item.partition(":")
    last = i == len(items) - 1
    try:
      length = int(length_text)
      until = int(until_text) if colon else -1
    except ValueError:
      raise ValueError(f"bad data.seq_len_schedule {spec!r}: {item!r} is not a number; {hint}") from None
    if last == bool(colon):
      raise ValueError(f"bad data.seq_len_schedule {spec!r}: only the last entry has no ':step'; {hint}")
    if not 0 < length <= seq_len:
      raise ValueError(f"data.seq_len_schedule length {length} must be in [1, data.seq_len={seq_len}]")
    if not last and until <= previous_step:
      raise ValueError(f"data.seq_len_schedule steps must increase: {spec!r}")
    previous_step = max(until, previous_step)
    entries.append((until, length))
  if entries[-1][1] != seq_len:
    raise ValueError(
      f"data.seq_len_schedule {spec!r} must end at data.seq_len={seq_len} (rows are cut from "
      f"blocks of seq_len tokens); end it with ',{seq_len}' or change data.seq_len"
    )
  return tuple(entries)


def seq_len_at_step(data_cfg: Any, step: int) -> int:
  """The training sequence length at ``step`` (batch shapes change only where this changes)."""
  settings = DataSettings.from_config(data_cfg)
  return _length_at(parse_seq_len_schedule(settings.seq_len_schedule, settings.seq_len), step)


def scheduled_tokens(data_cfg: Any, steps: int, global_batch_size: int) -> int:
  """Tokens in the first ``steps`` training batches: rows × each step's scheduled sequence length."""
  settings = DataSettings.from_config(data_cfg)
  total, done = 0, 0
  for until, length in parse_seq_len_schedule(settings.seq_len_schedule, settings.seq_len):
    end = steps if until < 0 else min(until, steps)
    total += max(end - done, 0) * length
    done = max(done, end)
    if done >= steps:
      break
  return total * int(global_batch_size)


def _length_at(schedule: tuple[tuple[int, int], ...], step: int) -> int:
  for until, length in schedule:
    if until < 0 or step < until:
      return length
  return schedule[-1][1]


# ----------------------------------------------------------------------------- corpora


class TokenStore:
  """Random access into one or more token arrays as if they were concatenated."""

  def __init__(self, arrays: Sequence[np.ndarray]):
    self.arrays = list(arrays)
    self.bounds = np.concatenate([[0], np.cumsum([len(a) for a in self.arrays])]).astype(np.int64)

  def gather(self, index: np.ndarray) -> np.ndarray:
    if len(self.arrays) == 1:
      return np.asarray(self.arrays[0][index])
    which = np.searchsorted(self.bounds, index, side="right") - 1
    out = np.empty(index.shape, dtype=np.int64)
    for c, array in enumerate(self.arrays):
      mask = which == c
      if mask.any():
        out[mask] = array[index[mask] - self.bounds[c]]
    return out


@dataclasses.dataclass(frozen=True)
class DocTable:
  """Documents as (start, length) spans of a ``TokenStore``; lengths include the EOS."""

  store: TokenStore
  starts: np.ndarray  # int64 [n_docs]
  lengths: np.ndarray  # int64 [n_docs]
  cache_paths: tuple[str, ...]
  built: bool  # True when some part was tokenized by this call (cache miss)

  @property
  def n_tokens(self) -> int:
    return int(self.lengths.sum())


def _split_for(settings: DataSettings, split: str) -> tuple[str, str]:
  """Which (spec, split) of the sources a pipeline split reads."""
  if split == "validation" and settings.val_source:
    return settings.val_source, "all"
  if split == "train" and settings.val_source:
    return settings.source, "all"
  return settings.source, split


def _cached_component(
  spec: str, split: str, settings: DataSettings, tokenizer: Tokenizer
) -> token_cache.TokenizedCorpus:
  kwargs = dict(jsonl_field=settings.jsonl_field, skip_bad_rows=settings.skip_bad_rows)
  return token_cache.load_or_build(
    fingerprint=sources.source_fingerprint(spec, split, **kwargs),
    split=split,
    tokenizer=tokenizer,
    documents=lambda: sources.load_documents(spec, split, **kwargs),
    cache_dir=settings.cache_dir,
    name=spec.split(":")[0] + "-" + spec.rsplit("/", 1)[-1],
  )


def load_doc_table(data_cfg: Any, tokenizer: Tokenizer, split: str, *, mix_seed: int = 0) -> DocTable:
  """The tokenized documents of the "train" or "validation" split (tokenizing on a cache miss)."""
  settings = DataSettings.from_config(data_cfg)
  spec, source_split = _split_for(settings, split)
  if sources.is_mixture(spec):
    parts = sources.parse_mixture(spec)
    corpora = [_cached_component(sub, source_split, settings, tokenizer) for _, sub in parts]
    picks = sources.mixture_doc_indices([c.doc_lengths for c in corpora], [w for w, _ in parts], mix_seed)
    store = TokenStore([c.tokens for c in corpora])
    starts = np.concatenate([store.bounds[i] + c.doc_offsets[:-1][p] for i, (c, p) in enumerate(zip(corpora, picks))])
    lengths = np.concatenate([c.doc_lengths[p] for c, p in zip(corpora, picks)])
  else:
    corpora = [_cached_component(spec, source_split, settings, tokenizer)]
    store = TokenStore([corpora[0].tokens])
    starts, lengths = corpora[0].doc_offsets[:-1].copy(), corpora[0].doc_lengths
  return DocTable(
    store=store,
    starts=starts.astype(np.int64),
    lengths=lengths.astype(np.int64),
    cache_paths=tuple(str(c.path) for c in corpora),
    built=any(c.built for c in corpora),
  )


def tokenizer_training_texts(data_cfg: Any) -> Callable[[], Iterable[str]]:
  """The ``train_texts`` callable for ``build_tokenizer``: the training split's documents."""
  settings = DataSettings.from_config(data_cfg)
  spec, split = _split_for(settings, "train")
  return lambda: sources.load_documents(
    spec, split, jsonl_field=settings.jsonl_field, skip_bad_rows=settings.skip_bad_rows
  )


# ----------------------------------------------------------------------------- packing


@dataclasses.dataclass(frozen=True)
class _StreamLayout:
  """One ordering of the documents as a stream: stream offset g -> store index g + shift[j]."""

  doc_ends: np.ndarray  # int64 [n_docs]: stream offset just past the j-th document
  shift: np.ndarray  # int64 [n_docs]: store index minus stream offset, per document


def _layout(docs: DocTable, order: np.ndarray) -> _StreamLayout:
  lengths = docs.lengths[order]
  ends = np.cumsum(lengths)
  return _StreamLayout(doc_ends=ends, shift=docs.starts[order] - (ends - lengths))


def _rows(
  docs: DocTable,
  layout: _StreamLayout,
  row_starts: np.ndarray,
  seq_len: int,
  isolate: bool,
  valid_until: int | None = None,
) -> dict[str, np.ndarray]:
  """Rows of ``seq_len`` inputs beginning at stream offsets ``row_starts`` (see module docstring)."""
  g_BT1 = row_starts[:, None] + np.arange(seq_len + 1, dtype=np.int64)[None, :]
  if valid_until is not None:
    g_BT1 = np.minimum(g_BT1, valid_until)
  doc_BT1 = np.searchsorted(layout.doc_ends, g_BT1, side="right")
  tokens_BT1 = docs.store.gather(g_BT1 + layout.shift[doc_BT1]).astype(np.int32)
  n_rows = len(row_starts)
  t_T = np.arange(seq_len, dtype=np.int64)
  if isolate:
    target_doc_BT = doc_BT1[:, 1:]
    starts_BT = np.ones((n_rows, seq_len), dtype=bool)
    starts_BT[:, 1:] = target_doc_BT[:, 1:] != target_doc_BT[:, :-1]
    segment_ids_BT = np.cumsum(starts_BT, axis=1, dtype=np.int32)
    segment_start_BT = np.maximum.accumulate(np.where(starts_BT, t_T[None, :], 0), axis=1)
    positions_BT = (t_T[None, :] - segment_start_BT).astype(np.int32)
  else:
    segment_ids_BT = np.ones((n_rows, seq_len), dtype=np.int32)
    positions_BT = np.broadcast_to(t_T.astype(np.int32), (n_rows, seq_len)).copy()
  batch = {
    "inputs": tokens_BT1[:, :-1],
    "targets": tokens_BT1[:, 1:],
    "positions": positions_BT,
    "segment_ids": segment_ids_BT,
    "loss_mask": np.ones((n_rows, seq_len), dtype=np.float32),
  }
  if valid_until is not None:
    real_BT = (row_starts[:, None] + 1 + t_T[None, :]) <= valid_until
    for key in ("inputs", "targets", "positions", "segment_ids"):
      batch[key] = np.where(real_BT, batch[key], 0).astype(np.int32)
    batch["loss_mask"] = real_BT.astype(np.float32)
  return batch


class PackedBlocks:
  """Random access to the seeded, packed training blocks (a pure function of seed and index)."""

  def __init__(self, docs: DocTable, *, block_len: int, seed: int, isolate: bool):
    self.docs = docs
    self.block_len = block_len
    self.seed = seed
    self.isolate = isolate
    self.blocks_per_epoch = (docs.n_tokens - 1) // block_len
    if self.blocks_per_epoch < 1:
      raise ValueError(
        f"the training split has {docs.n_tokens} tokens, fewer than data.seq_len+1 = "
        f"{block_len + 1}; lower data.seq_len or use a larger corpus"
      )
    self._lock = threading.Lock()
    self._epochs: dict[int, tuple[_StreamLayout, np.ndarray]] = {}

  def _epoch(self, epoch: int) -> tuple[_StreamLayout, np.ndarray]:
    with self._lock:
      if epoch not in self._epochs:
        order = sources.seeded_permutation(len(self.docs.lengths), self.seed, _DOCS_KEY, epoch)
        blocks = sources.seeded_permutation(self.blocks_per_epoch, self.seed, _BLOCKS_KEY, epoch)
        self._epochs[epoch] = (_layout(self.docs, order), blocks)
        while len(self._epochs) > 3:  # a batch touches at most two adjacent epochs
          del self._epochs[min(self._epochs)]
      return self._epochs[epoch]

  def rows(self, global_blocks: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
    """Rows for global block indices (in order), each the first ``seq_len`` tokens of its block."""
    epochs = global_blocks // self.blocks_per_epoch
    parts = []
    for epoch in np.unique(epochs):
      mask = epochs == epoch
      layout, block_order = self._epoch(int(epoch))
      starts = block_order[global_blocks[mask] % self.blocks_per_epoch] * self.block_len
      parts.append((mask, _rows(self.docs, layout, starts, seq_len, self.isolate)))
    if len(parts) == 1:
      return parts[0][1]
    out = {k: np.empty((len(global_blocks),) + v.shape[1:], v.dtype) for k, v in parts[0][1].items()}
    for mask, batch in parts:
      for k in out:
        out[k][mask] = batch[k]
    return out


class TrainIterator(StepIndexedIterator):
  """Yields this host's share of each global batch; ``get_state``/``set_state`` for checkpoints.

  Batches are built ahead by a grain pipeline (``data.prefetch`` batches, one thread), rebuilt at the restored
  step on ``set_state``."""

  def __init__(
    self,
    blocks: PackedBlocks,
    settings: DataSettings,
    *,
    seed: int,
    global_batch_size: int,
    process_index: int,
    process_count: int,
    start_step: int,
    data_id: str,
  ):
    super().__init__(
      global_batch_size=global_batch_size,
      process_index=process_index,
      process_count=process_count,
      fingerprint={
        "seed": seed,
        "global_batch_size": global_batch_size,
        "seq_len": settings.seq_len,
        "seq_len_schedule": settings.seq_len_schedule,
        "isolate_documents": settings.isolate_documents,
        "data": data_id,
      },
    )
    self._blocks = blocks
    self._schedule = parse_seq_len_schedule(settings.seq_len_schedule, settings.seq_len)
    self._prefetch = settings.prefetch
    self.num_steps: int | None = None
    if settings.num_epochs:
      self.num_steps = settings.num_epochs * blocks.blocks_per_epoch // global_batch_size
      if self.num_steps == 0:
        raise ValueError(
          f"data.num_epochs={settings.num_epochs} holds {settings.num_epochs * blocks.blocks_per_epoch} "
          f"rows, fewer than one global batch of {global_batch_size}; raise num_epochs or use 0 (repeat)"
        )
    self._grain_iter = None
    self._restart(start_step)

  @property
  def steps_per_epoch(self) -> float:
    return self._blocks.blocks_per_epoch / self._global_batch_size

  @property
  def tokens_per_epoch(self) -> int:
    """Training tokens in one pass over the data (whole blocks of ``data.seq_len``)."""
    return int(self._blocks.blocks_per_epoch * self._blocks.block_len)

  def seq_len_at(self, step: int) -> int:
    return _length_at(self._schedule, step)

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    """This host's batch for ``step`` (pure: does not move the iterator)."""
    return self._blocks.rows(self.host_rows(step), self.seq_len_at(step))

  def _restart(self, step: int) -> None:
    if self._grain_iter is not None:
      self._grain_iter.close()
    stop = self.num_steps if self.num_steps is not None else 2**62
    dataset = grain.MapDataset.range(step, max(step, stop)).map(self.batch_at)
    options = grain.ReadOptions(num_threads=1 if self._prefetch else 0, prefetch_buffer_size=self._prefetch)
    self._grain_iter = iter(dataset.to_iter_dataset(options))
    self._step = step

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._grain_iter)
    self._step += 1
    return batch

  def close(self) -> None:
    if self._grain_iter is not None:
      self._grain_iter.close()


def make_train_iterator(
  data_cfg: Any,
  tokenizer: Tokenizer,
  *,
  seed: int,
  global_batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  start_step: int = 0,
) -> TrainIterator:
  """The training batch iterator (see the module docstring for the exact order)."""
  check_batching(global_batch_size, process_index, process_count)
  settings = DataSettings.from_config(data_cfg)
  docs = load_doc_table(settings, tokenizer, "train", mix_seed=seed)
  blocks = PackedBlocks(docs, block_len=settings.seq_len, seed=seed, isolate=settings.isolate_documents)
  # What the order depends on, independent of file paths and times, so that a run moved to
  # another machine with the same data still restores.
  data_id = hashlib.sha256(
    json.dumps([settings.source, settings.val_source, tokenizer.identity, len(docs.lengths), docs.n_tokens]).encode()
  ).hexdigest()[:16]
  log.info(
    "training data: %d documents, %d tokens, %d blocks of %d per epoch",
    len(docs.lengths),
    docs.n_tokens,
    blocks.blocks_per_epoch,
    settings.seq_len,
  )
  return TrainIterator(
    blocks,
    settings,
    seed=seed,
    global_batch_size=global_batch_size,
    process_index=process_index,
    process_count=process_count,
    start_step=start_step,
    data_id=data_id,
  )


def make_eval_batches(
  data_cfg: Any,
  tokenizer: Tokenizer,
  *,
  batch_size: int,
  seq_len: int | None = None,
  process_index: int = 0,
  process_count: int = 1,
) -> list[dict[str, np.ndarray]]:
  """The validation split as fixed batches, identical across runs, seeds and model families.

  Validation documents in their natural order form one stream; its first ``data.val_tokens``
  targets are cut into rows of ``seq_len`` (default ``data.seq_len``). The last row and the last
  batch are padded (``segment_ids`` 0, ``loss_mask`` 0), so every batch has the same shape and
  ``loss_mask.sum()`` over all batches is the token budget. With several processes each gets a
  contiguous block of every batch's rows.
  """
  check_batching(batch_size, process_index, process_count)
  settings = DataSettings.from_config(data_cfg)
  seq_len = seq_len or settings.seq_len
  docs = load_doc_table(settings, tokenizer, "validation", mix_seed=_EVAL_MIX_SEED)
  if sources.is_mixture(_split_for(settings, "validation")[0]):
    # Interleave the components so that a token budget samples all of them.
    order = sources.seeded_permutation(len(docs.lengths), _EVAL_MIX_SEED, _DOCS_KEY)
  else:
    order = np.arange(len(docs.lengths))
  layout = _layout(docs, order)
  n_targets = docs.n_tokens - 1
  if settings.val_tokens > 0:
    n_targets = min(n_targets, settings.val_tokens)
  if n_targets < 1:
    raise ValueError("the validation split has fewer than 2 tokens; use a larger validation source")
  n_rows = -(-n_targets // seq_len)
  n_batches = -(-n_rows // batch_size)
  per_host = batch_size // process_count
  batches = []
  for b in range(n_batches):
    rows = np.arange(b * batch_size + process_index * per_host, b * batch_size + (process_index + 1) * per_host)
    batch = _rows(docs, layout, rows * seq_len, seq_len, settings.isolate_documents, valid_until=n_targets)
    batches.append(batch)
  return batches

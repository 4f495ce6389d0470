"""Tokenize a corpus once and keep it on disk as a memory-mapped token stream.

Layout of one cache entry ``<cache_root>/tokens/<name>-<key>/``:
  ``tokens.bin``       every document's ids followed by EOS, concatenated; raw uint16 when the
                       vocabulary fits (<= 65536 ids), else uint32
  ``doc_offsets.npy``  int64 [n_docs + 1]; document i is tokens[offsets[i]:offsets[i+1]] (EOS included)
  ``meta.json``        what was tokenized (spec, split, tokenizer identity, counts, dtype)

The key hashes (source fingerprint, split, tokenizer identity, format version), so a changed
file, split rule or vocabulary gets a new entry. An entry is written into a temporary folder and
renamed into place only when complete, so an interrupted run never leaves a cache that is later
trusted; temporary folders a killed run left behind are removed by the next build.

Every open verifies the entry against its metadata: file sizes (a truncated ``tokens.bin``, a
deleted ``doc_offsets.npy``), a content fingerprint (a sampled hash of ``tokens.bin`` plus a hash of the
offsets: an edited or swapped file) and, once per entry, that every id is below the tokenizer's
vocabulary (an out-of-range id would surface as a NaN blamed on the learning rate). A damaged entry is
rebuilt with a warning naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from modernlm_jax.data.tokenizers import Tokenizer

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
_ENCODE_CHUNK_CHARS = 4_000_000  # text handed to encode_batch at once: bounds memory, keeps threads busy
_PROGRESS_SECONDS = 5.0


def cache_root(cache_dir: str = "") -> Path:
  """``cache_dir``, else ``$MODERNLM_CACHE``, else ``~/.cache/modernlm_jax``."""
  chosen = cache_dir or os.environ.get("MODERNLM_CACHE", "") or "~/.cache/modernlm_jax"
  return Path(os.path.expanduser(chosen))


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


@dataclasses.dataclass(frozen=True)
class TokenizedCorpus:
  """A tokenized split: a flat token stream plus document boundaries."""

  tokens: np.ndarray  # 1-D uint16/uint32 (memmap); documents end with EOS
  doc_offsets: np.ndarray  # int64 [n_docs + 1]
  path: Path
  built: bool  # True when this call tokenized (cache miss), False when read from disk

  @property
  def n_docs(self) -> int:
    return len(self.doc_offsets) - 1

  @property
  def n_tokens(self) -> int:
    return int(self.doc_offsets[-1])

  @property
  def doc_lengths(self) -> np.ndarray:
    return np.diff(self.doc_offsets)


def cache_key(fingerprint: str, split: str, tokenizer_identity: str) -> str:
  payload = json.dumps(
    {"v": CACHE_FORMAT_VERSION, "source": fingerprint, "split": split, "tokenizer": tokenizer_identity},
    sort_keys=True,
  )
  return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


_FINGERPRINT_BLOCKS = 256  # sampled blocks of tokens.bin: the check reads at most 1 MiB of any cache
_FINGERPRINT_BLOCK_BYTES = 4096


class DamagedCacheError(ValueError):
  pass


def content_fingerprint(folder: Path) -> str:
  """A hash of the offsets and of evenly spaced blocks of ``tokens.bin`` (all of it below 1 MiB)."""
  h = hashlib.blake2b(digest_size=16)
  h.update((folder / "doc_offsets.npy").read_bytes())
  path = folder / "tokens.bin"
  size = path.stat().st_size
  h.update(str(size).encode())
  block = _FINGERPRINT_BLOCK_BYTES
  with open(path, "rb") as f:
    if size <= _FINGERPRINT_BLOCKS * block:
      h.update(f.read())
    else:
      for i in range(_FINGERPRINT_BLOCKS):
        f.seek((size - block) * i // (_FINGERPRINT_BLOCKS - 1))
        h.update(f.read(block))
  return h.hexdigest()


def _verify(folder: Path, meta: dict, tokenizer: Tokenizer | None) -> np.ndarray:
  """The entry's offsets after checking sizes, fingerprint and id range; DamagedCacheError names what is wrong."""
  for name in ("tokens.bin", "doc_offsets.npy"):
    if not (folder / name).is_file():
      raise DamagedCacheError(f"{folder / name} is missing")
  if tokenizer is not None and meta.get("tokenizer") not in (None, tokenizer.identity):
    raise DamagedCacheError(f"{folder} holds tokens of tokenizer {meta.get('tokenizer')!r}, not {tokenizer.identity!r}")
  try:
    offsets = np.load(folder / "doc_offsets.npy")
  except (OSError, ValueError) as e:
    raise DamagedCacheError(f"{folder / 'doc_offsets.npy'} is unreadable ({e})") from e
  dtype = np.dtype(meta["dtype"])
  n_tokens, n_docs = int(meta.get("n_tokens", -1)), int(meta.get("n_docs", -1))
  if offsets.ndim != 1 or len(offsets) != n_docs + 1 or int(offsets[-1]) != n_tokens or offsets[0] != 0:
    raise DamagedCacheError(
      f"{folder / 'doc_offsets.npy'} has {len(offsets) - 1} documents / "
      f"{int(offsets[-1]) if len(offsets) else 0} tokens; meta.json says {n_docs} / {n_tokens}"
    )
  size = (folder / "tokens.bin").stat().st_size
  if size != n_tokens * dtype.itemsize:
    raise DamagedCacheError(
      f"{folder / 'tokens.bin'} has {size} bytes, expected {n_tokens * dtype.itemsize} "
      f"({n_tokens} {dtype.name} tokens): truncated or overwritten"
    )
  if meta.get("content") and meta["content"] != content_fingerprint(folder):
    raise DamagedCacheError(
      f"{folder} content fingerprint mismatch: tokens.bin or doc_offsets.npy was changed after it was written"
    )
  return offsets


def _check_ids_once(folder: Path, meta: dict, tokens: np.ndarray, vocab_size: int) -> None:
  """Every id below ``vocab_size``: one pass over the tokens per entry and vocabulary, recorded in meta.json."""
  if meta.get("ids_below") == vocab_size:
    return
  top = int(tokens.max()) if len(tokens) else -1
  if top >= vocab_size:
    raise DamagedCacheError(
      f"{folder / 'tokens.bin'} holds id {top}, outside the tokenizer's vocabulary [0, {vocab_size})"
    )
  meta = dict(meta, ids_below=vocab_size)
  if not meta.get("content"):
    meta["content"] = content_fingerprint(folder)  # an entry written before fingerprints existed
  tmp = folder / f".meta-{uuid.uuid4().hex[:8]}.json"
  tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
  os.replace(tmp, folder / "meta.json")


def _open(folder: Path, built: bool, tokenizer: Tokenizer | None = None) -> TokenizedCorpus:
  try:
    meta = json.loads((folder / "meta.json").read_text())
  except (OSError, ValueError) as e:
    raise DamagedCacheError(f"{folder / 'meta.json'} is unreadable ({e})") from e
  offsets = _verify(folder, meta, tokenizer)
  tokens = np.memmap(folder / "tokens.bin", dtype=np.dtype(meta["dtype"]), mode="r", shape=(int(offsets[-1]),))
  if tokenizer is not None:
    _check_ids_once(folder, meta, tokens, int(tokenizer.vocab_size))
  return TokenizedCorpus(tokens=tokens, doc_offsets=offsets, path=folder, built=built)


def _clean_leftovers(root: Path) -> None:
  """Removes temporary folders of builds whose process is gone (killed mid-tokenisation) or older than a day."""
  for tmp in root.glob(".tmp-*"):
    try:
      pid = int(tmp.name.rsplit("-", 2)[-2])
      alive = True
      os.kill(pid, 0)
    except (ValueError, IndexError):
      alive = False
    except ProcessLookupError:
      alive = False
    except PermissionError:
      alive = True
    try:
      stale = time.time() - tmp.stat().st_mtime > 86400
    except OSError:
      continue
    if not alive or stale:
      log.warning("removing %s, left by an interrupted tokenisation", tmp)
      shutil.rmtree(tmp, ignore_errors=True)


def _safe_name(text: str) -> str:
  keep = "".join(c if c.isalnum() else "-" for c in text)[:40].strip("-")
  return keep or "corpus"


def tokenize_to_files(documents: Sequence[str], tokenizer: Tokenizer, folder: Path, meta: dict) -> None:
  """Write ``tokens.bin`` / ``doc_offsets.npy`` / ``meta.json`` for ``documents`` into ``folder``."""
  dtype = token_dtype(tokenizer.vocab_size)
  offsets = np.zeros(len(documents) + 1, dtype=np.int64)
  eos = [tokenizer.eos_id]
  start = last_report = time.perf_counter()
  n_tokens = 0
  i = 0
  with open(folder / "tokens.bin", "wb") as out:
    while i < len(documents):
      j, chars = i, 0
      while j < len(documents) and (j == i or chars < _ENCODE_CHUNK_CHARS):
        chars += len(documents[j])
        j += 1
      encoded = tokenizer.encode_batch(documents[i:j])
      lengths = np.fromiter((len(ids) + 1 for ids in encoded), dtype=np.int64, count=j - i)
      flat = np.fromiter(
        itertools.chain.from_iterable(part for ids in encoded for part in (ids, eos)),
        dtype=np.int64,
        count=int(lengths.sum()),
      )
      if len(flat) and (flat.min() < 0 or flat.max() >= tokenizer.vocab_size):
        raise ValueError(f"tokenizer {tokenizer.identity!r} produced ids outside [0, {tokenizer.vocab_size})")
      out.write(flat.astype(dtype).tobytes())
      offsets[i + 1 : j + 1] = n_tokens + np.cumsum(lengths)
      n_tokens += int(lengths.sum())
      i = j
      now = time.perf_counter()
      if now - last_report > _PROGRESS_SECONDS or i == len(documents):
        log.info(
          "tokenizing %d documents: %d done, %d tokens, %.0f tokens/s",
          len(documents),
          i,
          n_tokens,
          n_tokens / max(now - start, 1e-9),
        )
        last_report = now
  np.save(folder / "doc_offsets.npy", offsets)
  meta = dict(
    meta,
    dtype=dtype.name,
    n_docs=len(documents),
    n_tokens=n_tokens,
    seconds=round(time.perf_counter() - start, 3),
    format=CACHE_FORMAT_VERSION,
    content=content_fingerprint(folder),
    ids_below=int(tokenizer.vocab_size),
  )
  (folder / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))


def load_or_build(
  *,
  fingerprint: str,
  split: str,
  tokenizer: Tokenizer,
  documents: Callable[[], Sequence[str]],
  cache_dir: str = "",
  name: str = "corpus",
) -> TokenizedCorpus:
  """The cached tokenization of (fingerprint, split, tokenizer), building it on a miss.

  ``documents`` is only called on a miss, so a warm cache never re-reads the raw corpus.
  """
  root = cache_root(cache_dir) / "tokens"
  folder = root / f"{_safe_name(name)}-{split}-{cache_key(fingerprint, split, tokenizer.identity)}"
  if (folder / "meta.json").is_file() or folder.is_dir():
    try:
      return _open(folder, built=False, tokenizer=tokenizer)
    except DamagedCacheError as e:
      log.warning("token cache entry %s is damaged (%s); rebuilding it", folder, e)
      aside = folder.with_name(f".tmp-damaged-{folder.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
      os.rename(folder, aside)  # out of the way at once (atomic), then deleted
      shutil.rmtree(aside, ignore_errors=True)
  docs = documents()
  if not docs:
    raise ValueError(f"cannot tokenize an empty corpus ({name}, {split} split); point the source at some text")
  root.mkdir(parents=True, exist_ok=True)
  _clean_leftovers(root)
  tmp = root / f".tmp-{folder.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  tmp.mkdir()
  try:
    tokenize_to_files(
      docs,
      tokenizer,
      tmp,
      {"source": fingerprint, "split": split, "tokenizer": tokenizer.identity, "name": name},
    )
    try:
      os.rename(tmp, folder)
    except OSError:
      # Another process finished the same entry first; its copy is equally valid.
      if not (folder / "meta.json").is_file():
        raise
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  log.info("token cache written: %s", folder)
  return _open(folder, built=True, tokenizer=tokenizer)

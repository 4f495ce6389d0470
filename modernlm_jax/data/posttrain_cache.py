"""Tokenized SFT / DPO examples kept on disk, so a stage start or restart does not tokenize again.

One file per (kind, data settings that shape the examples, tokenizer identity, source files):
``<cache_root>/posttrain/<kind>-<key>.pkl``. The files enter the key by resolved path, size and
modification time (as for the pretraining token cache), so an edited file gets a new entry. Entries
are written to a temporary name and renamed when complete; one that cannot be read is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from modernlm_jax.data import formats
from modernlm_jax.data.token_cache import cache_root

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# The data settings that change which examples exist or what their tokens are (pack_sft only arranges rows).
EXAMPLE_SETTINGS = (
  "source",
  "val_source",
  "format",
  "seq_len",
  "truncation",
  "min_prompt_tokens",
  "skip_bad_rows",
  "val_fraction",
  "val_min_records",
)


def _files(spec: str) -> list:
  if not spec:
    return []
  return [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in formats.source_paths(spec)]


def cache_key(data_cfg: Any, tokenizer_identity: str, kind: str) -> str:
  settings = {k: data_cfg.get(k, "") for k in EXAMPLE_SETTINGS}
  parts = {
    "v": CACHE_VERSION,
    "kind": kind,
    "settings": settings,
    "tokenizer": tokenizer_identity,
    "files": _files(str(settings["source"])),
    "val_files": _files(str(settings["val_source"])),
  }
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cache_path(data_cfg: Any, tokenizer_identity: str, kind: str) -> Path:
  root = cache_root(str(data_cfg.get("cache_dir", "")))
  return root / "posttrain" / f"{kind}-{cache_key(data_cfg, tokenizer_identity, kind)}.pkl"


def load_or_build(data_cfg: Any, tokenizer_identity: str, kind: str, build: Callable[[], Any]) -> Any:
  """The cached result of `build()` for these settings, building and storing it on a miss."""
  path = cache_path(data_cfg, tokenizer_identity, kind)
  if path.is_file():
    try:
      with path.open("rb") as f:
        data = pickle.load(f)
      log.info(
        "%s data: %d train / %d validation examples from the cache %s", kind, len(data.train), len(data.val), path
      )
      return data
    except Exception as e:  # noqa: BLE001 - a damaged entry is rebuilt, never trusted
      log.warning("post-training cache entry %s is unreadable (%s: %s); tokenizing again", path, type(e).__name__, e)
  t0 = time.perf_counter()
  data = build()
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
  with tmp.open("wb") as f:
    pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
  os.replace(tmp, path)  # atomic: readers see no entry or a whole one
  log.info("%s data tokenized in %.1fs; cached at %s", kind, time.perf_counter() - t0, path)
  return data

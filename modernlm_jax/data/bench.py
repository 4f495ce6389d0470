"""Data pipeline benchmark: first-time tokenization and cached batch throughput, as JSON lines.

    python -m modernlm_jax.data.bench                       # Gutenberg books if present, else builtin
    python -m modernlm_jax.data.bench --source 'text@file:/data/wikitext2/train.txt' \
        --val-source 'text@file:/data/wikitext2/valid.txt' --tokenizer gpt2

Each run tokenizes into a fresh temporary cache (so the first figure is a true first-time cost)
unless ``--cache-dir`` names a cache to reuse.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from modernlm_jax.data import pipeline
from modernlm_jax.data.tokenizers import build_tokenizer, default_tokenizer_config


def _default_source() -> str:
  shared = Path(os.environ.get("MODERNLM_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
  books = shared / "gutenberg"
  return f"text@file:{books}/*.txt" if books.is_dir() else "builtin"


def _emit(record: dict) -> None:
  print(json.dumps(record), flush=True)


def run(
  source: str, val_source: str, tokenizer_kind: str, seq_len: int, batch_size: int, steps: int, cache_dir: str
) -> None:
  tok_cfg = default_tokenizer_config()
  tok_cfg.kind = tokenizer_kind
  tokenizer = build_tokenizer(tok_cfg)
  data_cfg = pipeline.default_data_config()
  data_cfg.update(source=source, val_source=val_source, seq_len=seq_len, cache_dir=cache_dir, prefetch=0)

  start = time.perf_counter()
  docs = list(pipeline.tokenizer_training_texts(data_cfg)())
  read_s = time.perf_counter() - start
  chars = sum(len(d) for d in docs)
  del docs
  _emit({"phase": "read_documents", "source": source, "chars": chars, "seconds": round(read_s, 3)})

  start = time.perf_counter()
  table = pipeline.load_doc_table(data_cfg, tokenizer, "train")
  seconds = time.perf_counter() - start
  _emit(
    {
      "phase": "first_tokenization",
      "tokenizer": tokenizer.identity,
      "documents": len(table.lengths),
      "tokens": table.n_tokens,
      "seconds": round(seconds, 3),
      "tokens_per_s_including_read": round(table.n_tokens / seconds),
      "tokens_per_s_tokenize_only": round(table.n_tokens / max(seconds - read_s, 1e-9)),
    }
  )

  for prefetch in (0, 2):
    data_cfg.prefetch = prefetch
    start = time.perf_counter()
    iterator = pipeline.make_train_iterator(data_cfg, tokenizer, seed=0, global_batch_size=batch_size)
    open_s = time.perf_counter() - start
    next(iterator)  # first epoch's permutations
    start = time.perf_counter()
    for _ in range(steps):
      batch = next(iterator)
    seconds = time.perf_counter() - start
    iterator.close()
    tokens = steps * batch["inputs"].size
    _emit(
      {
        "phase": "cached_iteration",
        "prefetch": prefetch,
        "batch": list(batch["inputs"].shape),
        "steps": steps,
        "open_cache_seconds": round(open_s, 3),
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds),
      }
    )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--source", default=_default_source())
  parser.add_argument("--val-source", default="", help="separate validation source (default: hold out 1%%)")
  parser.add_argument("--tokenizer", default="gpt2", choices=["gpt2", "bytes"])
  parser.add_argument("--seq-len", type=int, default=1024)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--cache-dir", default="", help="reuse this cache (default: a fresh temporary one)")
  args = parser.parse_args()
  logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
  cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="modernlm-bench-")
  try:
    run(args.source, args.val_source, args.tokenizer, args.seq_len, args.batch_size, args.steps, cache_dir)
  finally:
    if not args.cache_dir:
      shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
  main()

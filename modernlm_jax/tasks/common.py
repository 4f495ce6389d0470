"""Pieces every task shares: the tokenizer for a run, and the global view of host batches."""

from __future__ import annotations

from pathlib import Path

import jax


def run_tokenizer(config, workdir: str | Path):
  """Builds (or reloads) the run's tokenizer; SentencePiece trains on the training source once."""
  from modernlm_jax.data.pipeline import tokenizer_training_texts
  from modernlm_jax.data.tokenizers import build_tokenizer, check_vocab_fits

  tok = build_tokenizer(config.tokenizer, str(workdir), train_texts=tokenizer_training_texts(config.data))
  check_vocab_fits(tok, int(config.model.vocab_size))
  return tok


def process_rows(batch: dict) -> dict:
  """This process's contiguous block of rows of a global host batch."""
  n, pc, pi = None, jax.process_count(), jax.process_index()
  out = {}
  for k, v in batch.items():
    n = v.shape[0]
    if n % pc:
      raise ValueError(f"eval batch of {n} rows is not divisible by {pc} processes")
    out[k] = v[pi * n // pc:(pi + 1) * n // pc]
  return out

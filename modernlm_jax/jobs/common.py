"""Pieces every task shares: the tokenizer for a run, and the global view of host batches."""

from __future__ import annotations

from pathlib import Path


def run_tokenizer(config, workdir: str | Path):
  """Builds (or reloads) the run's tokenizer; SentencePiece trains on the training source once."""
  import jax

  from modernlm_jax.data.pipeline import tokenizer_training_texts
  from modernlm_jax.data.tokenizers import build_tokenizer, check_vocab_fits

  build = lambda: build_tokenizer(config.tokenizer, str(workdir), train_texts=tokenizer_training_texts(config.data))
  if jax.process_count() == 1:
    tok = build()
  else:  # process 0 trains and writes the shared tokenizer files; the others then read them
    from jax.experimental import multihost_utils

    tok = build() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("modernlm_jax:run_tokenizer")
    tok = tok or build()
  check_vocab_fits(tok, int(config.model.vocab_size))
  return tok

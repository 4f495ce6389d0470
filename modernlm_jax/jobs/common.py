"""Pieces every task shares: the tokenizer for a run, and the global view of host batches."""

from __future__ import annotations

from pathlib import Path


def run_tokenizer(config, workdir: str | Path):
  """Builds (or reloads) the run's tokenizer; SentencePiece trains on the training source once."""
  from modernlm_jax.data.pipeline import tokenizer_training_texts
  from modernlm_jax.data.tokenizers import build_tokenizer, check_vocab_fits

  tok = build_tokenizer(config.tokenizer, str(workdir), train_texts=tokenizer_training_texts(config.data))
  check_vocab_fits(tok, int(config.model.vocab_size))
  return tok

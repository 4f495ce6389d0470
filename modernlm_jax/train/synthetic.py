"""A deterministic, checkpointable iterator of synthetic token batches (benchmarks and loop tests).

Batch i is a pure function of (seed, i), so its state is just the index. Rows follow a learnable
pattern (a random walk over a small set of token cycles) so that loss curves actually fall.
"""

from __future__ import annotations

import numpy as np


class SyntheticBatches:
  def __init__(
    self,
    *,
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    seed: int = 0,
    period: int = 7,
    process_index: int = 0,
    process_count: int = 1,
  ):
    if batch_size % process_count:
      raise ValueError(f"batch_size {batch_size} is not divisible by process_count {process_count}")
    self.batch_size, self.seq_len, self.vocab, self.seed, self.period = batch_size, seq_len, vocab_size, seed, period
    self.rows = slice(process_index * batch_size // process_count, (process_index + 1) * batch_size // process_count)
    self.index = 0

  def batch_at(self, i: int) -> dict:
    rng = np.random.default_rng([self.seed, i])
    start = rng.integers(0, self.vocab, size=(self.batch_size, 1))
    step = rng.integers(1, self.period + 1, size=(self.batch_size, 1))
    seq = (start + step * np.arange(self.seq_len + 1)[None]) % self.vocab
    seq = seq[self.rows].astype(np.int32)
    b, t = seq.shape[0], self.seq_len
    return {
      "inputs": seq[:, :-1],
      "targets": seq[:, 1:],
      "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
      "segment_ids": np.ones((b, t), np.int32),
      "loss_mask": np.ones((b, t), np.float32),
    }

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = self.batch_at(self.index)
    self.index += 1
    return batch

  def get_state(self) -> dict:
    return {"index": self.index}

  def set_state(self, state: dict) -> None:
    self.index = int(state["index"])

"""The step-indexed iterator both pipelines share: a batch is a pure function of (seed, step), each process
reads its own contiguous block of rows, and the checkpointed state is the step plus a fingerprint of what the
order depends on (a resume with other data or settings is refused, not replayed silently)."""

from __future__ import annotations

from typing import Any

import numpy as np

from modernlm_jax.data import iterator_state


def check_batching(global_batch_size: int, process_index: int, process_count: int) -> None:
  if global_batch_size < 1 or process_count < 1:
    raise ValueError("global_batch_size and process_count must be positive")
  if global_batch_size % process_count:
    raise ValueError(
      f"global batch size {global_batch_size} is not divisible by process_count={process_count}; "
      f"use a multiple of {process_count}"
    )
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} must be in [0, {process_count})")


class StepIndexedIterator:
  """Subclasses define ``batch_at(step)`` (this process's rows, pure) and may override ``_restart`` (to rebuild
  a prefetching pipeline at a step); ``RESUME_HINT`` is the fix a refused resume names."""

  RESUME_HINT = "resume with the same seed, global batch size and data config, or start a new run"

  def __init__(self, *, global_batch_size: int, process_index: int, process_count: int, fingerprint: dict[str, Any]):
    check_batching(global_batch_size, process_index, process_count)
    self._global_batch_size = global_batch_size
    self._rows_per_host = global_batch_size // process_count
    self._first_row = process_index * self._rows_per_host
    self._fingerprint = fingerprint
    self._step = 0

  @property
  def step(self) -> int:
    """The step whose batch ``__next__`` returns next."""
    return self._step

  def host_rows(self, step: int) -> np.ndarray:
    """Global row indices of this process's share of ``step``'s batch."""
    first = step * self._global_batch_size + self._first_row
    return np.arange(first, first + self._rows_per_host, dtype=np.int64)

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def _restart(self, step: int) -> None:
    self._step = step

  def __iter__(self) -> "StepIndexedIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.batch_at(self._step)
    self._step += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return iterator_state.make_state(self._step, self._fingerprint)

  def set_state(self, state: dict[str, Any]) -> None:
    self._restart(iterator_state.restored_step(state, self._fingerprint, self.RESUME_HINT))

  def close(self) -> None:
    pass

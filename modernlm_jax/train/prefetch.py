"""Background batch preparation: next host batch + device placement while the device computes.

Each batch travels with the data-iterator state *after* it, so a checkpoint records exactly the
batches consumed, not the ones merely prefetched.
"""

from __future__ import annotations

import queue
import threading

import jax
import numpy as np

from modernlm_jax.train import mesh as mesh_lib


def to_global(batch: dict, mesh, accum_steps: int) -> dict:
  """Host-local rows -> globally sharded arrays (works for one or many processes)."""
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    if accum_steps > 1:
      v = v.reshape(accum_steps, v.shape[0] // accum_steps, *v.shape[1:])
    sharding = mesh_lib.batch_sharding(mesh, ndim=v.ndim, leading_accum=accum_steps > 1)
    row_axis = 1 if accum_steps > 1 else 0
    global_shape = list(v.shape)
    global_shape[row_axis] *= jax.process_count()
    out[k] = jax.make_array_from_process_local_data(sharding, v, tuple(global_shape))
  return out


def batch_tokens(batch: dict) -> tuple[int, int]:
  """(real tokens, sequence length) of a host batch, counted from the batch itself.

  Real tokens are the non-padding positions (`segment_ids` > 0; every `*segment_ids` key of a DPO
  pair batch counts), else the `loss_mask` positions, else every position. So a shortened row of a
  sequence-length schedule or a padded SFT row is counted as what it holds, not as `data.seq_len`.
  The count covers this host's rows times the process count (hosts hold equal numbers of rows).
  """
  inputs = [k for k in batch if k.endswith("inputs")]  # "inputs", or "chosen_inputs" / "rejected_inputs"
  keys = [k for k in batch if k.endswith("segment_ids")] or [k for k in batch if k.endswith("loss_mask")]
  if keys:
    n = sum(int(np.count_nonzero(np.asarray(batch[k]))) for k in keys)
  else:
    n = sum(int(np.asarray(batch[k]).size) for k in inputs)
  return n * jax.process_count(), int(np.asarray(batch[inputs[0]]).shape[-1])


class DevicePrefetcher:
  """Yields (device batch, data state) or, with `with_tokens`, (device batch, data state, batch_tokens)."""

  def __init__(self, iterator, mesh, *, accum_steps: int = 1, size: int = 2, with_tokens: bool = False):
    self._it, self._mesh, self._accum, self._with_tokens = iterator, mesh, accum_steps, with_tokens
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self):
    try:
      while not self._stop.is_set():
        batch = next(self._it)
        state = self._it.get_state()
        item = (to_global(batch, self._mesh, self._accum), state)
        if self._with_tokens:
          item += (batch_tokens(batch),)
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
    except BaseException as e:  # noqa: BLE001 - re-raised in the consumer thread
      self._queue.put(e)

  def __next__(self):
    item = self._queue.get()
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self):
    self._stop.set()
    self._thread.join(timeout=5)

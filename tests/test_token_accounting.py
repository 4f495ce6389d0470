"""Token accounting from the batches themselves, and interval timing that credits device time correctly."""

from __future__ import annotations

import time

import ml_collections
import numpy as np
import pytest
from train_utils import FakeTokenizer, tiny_config

from modernlm_jax.data import pipeline
from modernlm_jax.data.iterator_state import make_state, restored_step
from modernlm_jax.train import loop as loop_lib
from modernlm_jax.train.loop import StageData
from modernlm_jax.train.prefetch import batch_tokens

SCHEDULE = "32:2,64:4,128"


class ScheduledBatches:
  """Batches whose length follows the schedule; row 0 is padded past half its length (segment id 0)."""

  def __init__(self, data_cfg, batch_size: int, vocab: int):
    self.data_cfg, self.batch_size, self.vocab, self.step = data_cfg, batch_size, vocab, 0

  def batch_at(self, step: int) -> dict:
    T = pipeline.seq_len_at_step(self.data_cfg, step)
    rng = np.random.default_rng(step)
    tokens = rng.integers(1, self.vocab, (self.batch_size, T + 1)).astype(np.int32)
    seg = np.ones((self.batch_size, T), np.int32)
    seg[0, T // 2 + step :] = 0  # a different amount of padding every step
    return {
      "inputs": tokens[:, :-1],
      "targets": tokens[:, 1:],
      "positions": np.tile(np.arange(T, dtype=np.int32), (self.batch_size, 1)),
      "segment_ids": seg,
      "loss_mask": (seg > 0).astype(np.float32),
    }

  def __next__(self):
    b = self.batch_at(self.step)
    self.step += 1
    return b

  def get_state(self):
    return make_state(self.step, {"kind": "scheduled"})

  def set_state(self, state):
    self.step = restored_step(state, {"kind": "scheduled"}, "same test")


def _config(steps: int):
  c = tiny_config(steps=steps, batch_size=8, seq_len=128, log_every=1, checkpoint_every=3, eval_every=3)
  c.model.max_len = 128
  c.data = ml_collections.ConfigDict(dict(seq_len=128, seq_len_schedule=SCHEDULE))
  return c


def _stage(c):
  it = ScheduledBatches(c.data, 8, int(c.model.vocab_size))
  return StageData(train_iter=it, eval_batches=[it.batch_at(100)], tokenizer=FakeTokenizer())


def _real_tokens(c, steps: int) -> list[int]:
  it = ScheduledBatches(c.data, 8, int(c.model.vocab_size))
  return [int((it.batch_at(s)["segment_ids"] > 0).sum()) for s in range(steps)]


def test_batch_tokens_counts_non_padding_and_pair_batches():
  b = {"inputs": np.zeros((2, 8), np.int32), "segment_ids": np.array([[1] * 8, [1] * 3 + [0] * 5])}
  assert batch_tokens(b) == (11, 8)
  pair = {
    "chosen_inputs": np.zeros((1, 4)),
    "rejected_inputs": np.zeros((1, 4)),
    "chosen_segment_ids": np.ones((1, 4)),
    "rejected_segment_ids": np.array([[1, 1, 0, 0]]),
  }  # a DPO batch has no plain "inputs"
  assert batch_tokens(pair) == (6, 4)
  assert batch_tokens({"inputs": np.zeros((3, 5))}) == (15, 5)


def test_scheduled_tokens_sums_each_steps_length():
  cfg = ml_collections.ConfigDict(dict(seq_len=128, seq_len_schedule=SCHEDULE))
  for steps in (0, 1, 2, 3, 4, 7):
    want = sum(2 * pipeline.seq_len_at_step(cfg, s) for s in range(steps))
    assert pipeline.scheduled_tokens(cfg, steps, 2) == want
  assert pipeline.scheduled_tokens(cfg, 6, 2) == 2 * (2 * 32 + 2 * 64 + 2 * 128)


@pytest.mark.slow
def test_tokens_seen_is_the_sum_of_real_tokens_under_a_schedule_and_across_a_resume(tmp_path):
  c = _config(steps=6)
  seen = []
  loop_lib.train(c, tmp_path, _stage(c), on_step=lambda m: seen.append(dict(m)), stop_at=3)
  loop_lib.train(c, tmp_path, _stage(c), on_step=lambda m: seen.append(dict(m)))  # resumes at step 3
  real = _real_tokens(c, 6)
  assert [m["step"] for m in seen] == [1, 2, 3, 4, 5, 6]
  assert [m["tokens"] for m in seen] == real
  assert [m["tokens_seen"] for m in seen] == list(np.cumsum(real))
  # The old count, batch × data.seq_len per step, would say 6 × 8 × 128.
  assert seen[-1]["tokens_seen"] == sum(real) < 6 * 8 * 128


@pytest.mark.slow
def test_device_wait_is_credited_to_the_interval_it_belongs_to(tmp_path, monkeypatch):
  c = tiny_config(steps=8, log_every=2)
  from train_utils import synthetic_stage

  real_fetch, calls = loop_lib._host_metrics, []

  def slow_fetch(pending):
    calls.append([p[0] for p in pending])
    out = real_fetch(pending)
    if len(calls) == 4:  # the steps 4-5 interval: as if the device were still busy with them
      time.sleep(1.0)
    return out

  monkeypatch.setattr(loop_lib, "_host_metrics", slow_fetch)
  rows = {}
  loop_lib.train(c, tmp_path, synthetic_stage(c), on_step=lambda m: rows.__setitem__(m["step"], m["step_time_s"]))
  assert calls[3] == [4, 5]
  assert rows[5] >= 0.5 and rows[6] >= 0.5, rows  # its own interval holds the wait
  assert rows[7] < 0.5 and rows[8] < 0.5, rows  # the next interval does not

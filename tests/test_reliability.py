"""Nothing lost, nothing silent: signals, the workdir lock, restore checks, save failures, resume settings, metrics.

In-process and small (a 2-layer model on synthetic batches); the subprocess SIGTERM and two-runs tests are in
test_preemption.py.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import pytest
from train_utils import synthetic_stage, tiny_config

from modernlm_jax.train import checkpoint as ckpt_lib
from modernlm_jax.train import preemption, workdir_lock
from modernlm_jax.train.loop import train
from modernlm_jax.train.metrics import read_metrics, truncate_metrics

# ----------------------------------------------------------------------------- signals


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_first_signal_sets_the_flag_second_exits_at_once(sig, code, capsys):
  exits = []
  guard = preemption.PreemptionGuard(exit_now=exits.append).install()
  try:
    assert guard.check(0) == (False, False)
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # Python runs the handler between bytecodes of the main thread
    assert guard.check(1) == (True, False) and not exits
    assert guard.preempted(2).code == code
    os.kill(os.getpid(), sig)
    time.sleep(0.05)
    assert exits == [code]
  finally:
    guard.uninstall()
  out = capsys.readouterr().out
  assert "finishing this step, saving a checkpoint and exiting" in out and "exiting at once without saving" in out
  assert signal.getsignal(sig) is not guard._handle  # handlers restored


def test_checkpoint_minutes_trigger_a_save_by_wall_time():
  guard = preemption.PreemptionGuard(checkpoint_minutes=0.5 / 60)
  assert guard.check(0) == (False, False)
  time.sleep(0.6)
  assert guard.check(1) == (False, True)
  guard.saved()
  assert guard.check(2) == (False, False)


def _losses(config, workdir, **kw):
  out = {}
  final = train(config, workdir, synthetic_stage(config), on_step=lambda m: out.update({m["step"]: m["loss"]}), **kw)
  return out, final


@pytest.mark.slow
def test_sigterm_in_process_saves_the_step_and_resume_is_exact(tmp_path, capsys):
  config = tiny_config(steps=6, checkpoint_every=100, mesh=(1, 1, 1))
  reference, ref_final = _losses(config, tmp_path / "ref")

  def on_step(m):
    if m["step"] == 2:
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.raises(preemption.Preempted) as e:
    train(config, tmp_path / "run", synthetic_stage(config), on_step=on_step)
  assert e.value.code == 143 and e.value.step >= 2
  assert "saved step" in capsys.readouterr().out
  assert ckpt_lib.Checkpointer(tmp_path / "run" / "checkpoints").steps() == [e.value.step]
  assert not (tmp_path / "run" / "run.lock").exists()
  resumed, final = _losses(config, tmp_path / "run")
  assert resumed == {s: reference[s] for s in range(e.value.step + 1, 7)}
  chex.assert_trees_all_equal(jax.device_get(final["params"]), jax.device_get(ref_final["params"]))


# ----------------------------------------------------------------------------- workdir lock


def _write_lock(workdir, **info):
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "started_unix": time.time(), **info}))


def test_live_holder_is_refused_by_name(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _write_lock(tmp_path, pid=holder.pid, start_ticks=workdir_lock._process_start_ticks(holder.pid))
    with pytest.raises(
      workdir_lock.WorkdirLockedError,
      match=rf"is in use by another run \(PID {holder.pid} on host '{socket.gethostname()}'",
    ):
      workdir_lock.acquire(tmp_path)
    config = tiny_config(steps=2)
    with pytest.raises(workdir_lock.WorkdirLockedError):
      train(config, tmp_path, synthetic_stage(config))
    assert not (tmp_path / "checkpoints").exists()
  finally:
    holder.kill()
    holder.wait()


def test_other_host_lock_is_refused_with_how_to_remove_it(tmp_path):
  _write_lock(tmp_path, pid=1, host="some-other-host")
  with pytest.raises(workdir_lock.WorkdirLockedError, match=r"host 'some-other-host'.*If that run is gone .*delete"):
    workdir_lock.acquire(tmp_path)


@pytest.mark.parametrize("why", ["dead_pid", "reused_pid", "empty_file"])
def test_stale_lock_is_taken_over_with_a_warning(why, tmp_path, caplog):
  if why == "dead_pid":
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    _write_lock(tmp_path, pid=p.pid)
  elif why == "reused_pid":  # the PID is alive but belongs to a process started after the lock was written
    _write_lock(tmp_path, pid=os.getpid(), start_ticks="1")
  else:
    (tmp_path / "run.lock").write_text("")
    os.utime(tmp_path / "run.lock", (time.time() - 60, time.time() - 60))
  with caplog.at_level(logging.WARNING):
    path = workdir_lock.acquire(tmp_path)
  assert "taking over the stale lock" in caplog.text
  assert json.loads(path.read_text())["pid"] == os.getpid()
  workdir_lock.release(path)
  assert not path.exists()


def test_lock_is_reentrant_within_a_process(tmp_path):
  a = workdir_lock.acquire(tmp_path)
  b = workdir_lock.acquire(tmp_path)
  workdir_lock.release(b)
  assert a.exists()
  workdir_lock.release(a)
  assert not a.exists()


# ----------------------------------------------------------------------------- checkpoints


def test_keep_checkpoints_zero_is_refused(tmp_path):
  with pytest.raises(ValueError, match=r"train\.keep_checkpoints=0 would keep no checkpoint"):
    ckpt_lib.Checkpointer(tmp_path / "checkpoints", keep=0)


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
  """A finished 4-step run with checkpoints at 2 and 4, its losses, and its config."""
  workdir = tmp_path_factory.mktemp("four") / "run"
  config = tiny_config(steps=4, checkpoint_every=2, mesh=(1, 1, 1), keep_checkpoints=5)
  losses, _ = _losses(config, workdir)
  return config, workdir, losses


def _copy(src, dst):
  import shutil

  shutil.copytree(src, dst)
  return dst


@pytest.mark.slow
def test_data_position_must_equal_the_model_step(four_steps, tmp_path, caplog):
  config, src, reference = four_steps
  workdir = _copy(src, tmp_path / "run")
  (workdir / "checkpoints" / "4" / "data" / "metadata").write_text(json.dumps({"index": 3}))
  more = config.copy_and_resolve_references()
  more.train.steps = 4
  with caplog.at_level(logging.WARNING):
    losses, _ = _losses(more, workdir)
  assert "the data iterator position 3 does not match the model step 4" in caplog.text
  assert sorted(losses) == [3, 4] and losses == {s: reference[s] for s in (3, 4)}  # resumed from step 2
  assert (workdir / "checkpoints_unreadable" / "4").is_dir()


@pytest.mark.slow
def test_changed_schedule_is_refused_listing_the_differences(four_steps, tmp_path):
  config, src, _ = four_steps
  workdir = _copy(src, tmp_path / "run")
  changed = config.copy_and_resolve_references()
  changed.train.update(dict(steps=8, lr=1e-3))
  with pytest.raises(
    ckpt_lib.CheckpointError,
    match=r"other optimizer/schedule settings \(train\.steps: 4 -> 8, "
    r"train\.lr: 0\.003 -> 0\.001\).*train\.allow_schedule_change=True",
  ):
    train(changed, workdir, synthetic_stage(changed))
  changed.train.allow_schedule_change = True
  losses, _ = _losses(changed, workdir)
  assert sorted(losses) == [5, 6, 7, 8]
  rows = [r for r in read_metrics(workdir) if "schedule_changed" in r]
  assert rows and rows[0]["step"] == 4 and json.loads(rows[0]["schedule_changed"])["lr"] == [0.003, 0.001]


@pytest.mark.slow
def test_metrics_are_truncated_to_the_restored_step(four_steps, tmp_path):
  config, src, reference = four_steps
  workdir = _copy(src, tmp_path / "run")
  import shutil

  shutil.rmtree(workdir / "checkpoints" / "4")  # as if the run crashed after logging steps 3 and 4
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "loss": 1.0')  # a row cut short by the crash
  _losses(config, workdir)
  steps = [r["step"] for r in read_metrics(workdir) if "loss" in r]
  assert steps == [1, 2, 3, 4]
  assert {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r} == reference
  assert truncate_metrics(workdir, 2) > 0 and [r["step"] for r in read_metrics(workdir)] == [1, 2]


@pytest.mark.slow
def test_failed_background_save_stops_the_run_at_the_next_log_step(tmp_path, monkeypatch):
  from orbax.checkpoint._src.path import atomicity

  async def disk_full(self, *args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", disk_full)
  config = tiny_config(steps=12, checkpoint_every=4, mesh=(1, 1, 1), async_checkpoint=True)
  seen = []
  with pytest.raises(
    ckpt_lib.CheckpointError,
    match=r"saving a checkpoint into .*checkpoints failed \(.*No space "
    r"left on device.*free space there: [0-9.]+ GiB.*Free disk space",
  ):
    train(config, tmp_path, synthetic_stage(config), on_step=lambda m: (seen.append(m["step"]), time.sleep(0.3)))
  assert max(seen) < 8, seen  # noticed within a few steps of the failed save, not at the next checkpoint


def test_too_little_free_space_is_refused_before_training(tmp_path, monkeypatch):
  monkeypatch.setattr(ckpt_lib, "free_bytes", lambda path: 1000)
  config = tiny_config(steps=2)
  seen = []
  with pytest.raises(ckpt_lib.CheckpointError, match=r"has 0\.00 GiB free, less than one checkpoint needs"):
    train(config, tmp_path, synthetic_stage(config), on_step=seen.append)
  assert not seen

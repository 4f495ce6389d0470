"""SIGKILL a real training run (text corpus, byte tokenizer, async orbax saves) and restart it.

The restarted run must continue from the newest *committed* checkpoint, with the data iterator
where it was, and reproduce the uninterrupted run's losses bit for bit. The worker is
tests/kill_worker.py; the parent synchronises on its stdout lines only (every wait has a timeout).
Kill steps come from a seeded RNG; set MODERNLM_KILL_SEED to replay another draw.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from kill_worker import write_corpus

pytestmark = pytest.mark.slow

STEPS = 10  # checkpoint_every=2 in the worker: committed checkpoints at 2, 4, ..., 10
WAIT_S = 300  # per line; generous because the CI machine is shared
WORKER = Path(__file__).resolve().parent / "kill_worker.py"
SEED = int(os.environ.get("MODERNLM_KILL_SEED", "20240611"))


class Worker:
  """One kill_worker.py process; its stdout lines arrive on a queue read with timeouts."""

  def __init__(self, workdir: Path, corpus: Path, jax_cache: Path, *extra: str):
    env = {**os.environ, "KILL_WORKER_JAX_CACHE": str(jax_cache)}
    runs = len(list(workdir.parent.glob(workdir.name + ".stderr.*")))
    self.log_path = workdir.parent / f"{workdir.name}.stderr.{runs}"
    self._stderr = open(self.log_path, "w")
    command = [sys.executable, str(WORKER), str(workdir), str(corpus), "--steps", str(STEPS), *extra]
    self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env)
    self.lines: queue.Queue = queue.Queue()
    self.losses: dict[int, str] = {}
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.proc.stdout:
      self.lines.put(line.rstrip("\n"))
    self.lines.put(None)

  def wait_for(self, prefix: str) -> str:
    """Consumes lines up to the first one starting with `prefix` (recording losses on the way)."""
    while True:
      try:
        line = self.lines.get(timeout=WAIT_S)
      except queue.Empty:
        self.kill()
        pytest.fail(f"no {prefix!r} line from the worker within {WAIT_S}s; stderr: {self.stderr_tail()}")
      if line is None:
        self.proc.wait(timeout=WAIT_S)
        pytest.fail(f"worker exited (rc={self.proc.returncode}) before {prefix!r}; stderr: {self.stderr_tail()}")
      if line.startswith("STEP "):
        _, step, loss = line.split()
        self.losses[int(step)] = loss
      if line.startswith(prefix):
        return line

  def finish(self) -> dict[int, str]:
    self.wait_for("DONE")
    assert self.proc.wait(timeout=WAIT_S) == 0, self.stderr_tail()
    self._stderr.close()
    return self.losses

  def kill(self) -> None:
    if self.proc.poll() is None:
      os.kill(self.proc.pid, signal.SIGKILL)
    self.proc.wait(timeout=WAIT_S)
    assert self.proc.returncode in (-signal.SIGKILL, 0), self.proc.returncode
    self._stderr.close()

  def stderr_tail(self) -> str:
    self._stderr.flush()
    return self.log_path.read_text()[-3000:]


def committed_steps(workdir: Path) -> list[int]:
  """Finished checkpoints: orbax renames `<step>.orbax-checkpoint-tmp-*` to `<step>` on commit."""
  ckpts = workdir / "checkpoints"
  return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.is_dir() else []


def unfinished_dirs(workdir: Path) -> list[str]:
  return sorted(p.name for p in (workdir / "checkpoints").iterdir() if not p.name.isdigit())


def logged_losses(workdir: Path) -> dict[int, str]:
  """metrics.jsonl read the way reports read it: per step, the last training row."""
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: repr(r["loss"]) for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
  return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory) -> Path:
  return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory, corpus, jax_cache) -> dict[int, str]:
  losses = Worker(tmp_path_factory.mktemp("reference") / "run", corpus, jax_cache).finish()
  assert sorted(losses) == list(range(1, STEPS + 1))
  return losses


def test_sigkill_at_random_step_resumes_from_last_commit_with_identical_losses(
  tmp_path, corpus, jax_cache, reference_losses
):
  kill_step = random.Random(SEED).randint(5, STEPS - 1)
  print(f"MODERNLM_KILL_SEED={SEED}: SIGKILL after step {kill_step}")
  workdir = tmp_path / "run"
  w = Worker(workdir, corpus, jax_cache)
  # The save at step 4 waits for the save at step 2 to commit, so by step 5 one checkpoint is committed.
  w.wait_for(f"STEP {kill_step} ")
  w.kill()
  committed = committed_steps(workdir)
  print(f"after the kill: committed {committed}, unfinished {unfinished_dirs(workdir)}")
  assert committed and max(committed) >= 2, (committed, unfinished_dirs(workdir))
  assert all(reference_losses[s] == w.losses[s] for s in w.losses)  # the killed run was the same run

  resumed = Worker(workdir, corpus, jax_cache).finish()
  assert min(resumed) == max(committed) + 1, (sorted(resumed), committed)
  assert sorted(resumed) == list(range(max(committed) + 1, STEPS + 1))
  assert {s: resumed[s] for s in resumed} == {s: reference_losses[s] for s in resumed}
  assert committed_steps(workdir)[-1] == STEPS
  assert logged_losses(workdir) == reference_losses  # steps run twice are logged twice; the last row wins


def test_sigkill_during_async_save_never_loads_the_half_written_checkpoint(
  tmp_path, corpus, jax_cache, reference_losses
):
  blocked = random.Random(SEED + 1).choice([4, 6, 8])
  print(f"MODERNLM_KILL_SEED={SEED}: SIGKILL while the save of step {blocked} is being written")
  workdir = tmp_path / "run"
  w = Worker(workdir, corpus, jax_cache, "--block-save-at", str(blocked))
  w.wait_for(f"SAVE_BLOCKED {blocked} ")
  w.kill()
  committed = committed_steps(workdir)
  print(f"after the kill: committed {committed}, unfinished {unfinished_dirs(workdir)}")
  assert blocked not in committed and max(committed) == blocked - 2, committed
  half_written = [d for d in unfinished_dirs(workdir) if d.startswith(f"{blocked}.")]
  assert half_written, f"expected the interrupted save's temporary directory, found {unfinished_dirs(workdir)}"
  assert any((workdir / "checkpoints" / half_written[0]).rglob("*")), "the interrupted save wrote nothing"

  resumed = Worker(workdir, corpus, jax_cache).finish()
  assert min(resumed) == blocked - 1, sorted(resumed)  # resumed from the previous, committed checkpoint
  assert {s: resumed[s] for s in resumed} == {s: reference_losses[s] for s in resumed}
  assert blocked in committed_steps(workdir) and committed_steps(workdir)[-1] == STEPS
  assert logged_losses(workdir) == reference_losses

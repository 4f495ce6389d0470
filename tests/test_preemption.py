"""SIGTERM a real training run (tests/kill_worker.py) and resume it; start a second run on a busy workdir.

A SIGTERM at a random step must leave a checkpoint at that step (exit code 143) and the resumed run must
reproduce the uninterrupted run's later losses and final parameters bit for bit. A second run on a workdir
in use must be refused within seconds, naming the holder, while the first finishes untouched.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from kill_worker import write_corpus
from test_kill_resume import WAIT_S, Worker, committed_steps, logged_losses

pytestmark = pytest.mark.slow

STEPS = 10
SEED = int(os.environ.get("MODERNLM_KILL_SEED", "20240611"))
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
  return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory) -> Path:
  return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus, jax_cache) -> tuple[dict[int, str], dict]:
  root = tmp_path_factory.mktemp("reference")
  losses = Worker(root / "run", corpus, jax_cache, "--params-out", str(root / "params.npz")).finish()
  assert sorted(losses) == list(range(1, STEPS + 1))
  return losses, dict(np.load(root / "params.npz"))


def metrics_steps(workdir: Path) -> list[int]:
  import json

  return [
    json.loads(line)["step"]
    for line in (workdir / "metrics.jsonl").read_text().splitlines()
    if "loss" in json.loads(line)
  ]


def test_sigterm_at_random_step_saves_that_step_and_resumes_bit_identically(tmp_path, corpus, jax_cache, reference):
  ref_losses, ref_params = reference
  term_step = random.Random(SEED).randint(2, STEPS - 3)
  print(f"MODERNLM_KILL_SEED={SEED}: SIGTERM after step {term_step}")
  workdir = tmp_path / "run"
  w = Worker(workdir, corpus, jax_cache, "--step-delay", "0.5")
  w.wait_for(f"STEP {term_step} ")
  os.kill(w.proc.pid, signal.SIGTERM)
  saved = int(w.wait_for("saved step ").split()[2])
  assert w.proc.wait(timeout=WAIT_S) == 143, w.stderr_tail()
  assert term_step <= saved < STEPS  # the step in flight when the signal came, not the last periodic checkpoint
  assert max(committed_steps(workdir)) == saved
  assert max(w.losses) == saved and all(w.losses[s] == ref_losses[s] for s in w.losses)

  out = tmp_path / "params.npz"
  resumed = Worker(workdir, corpus, jax_cache, "--params-out", str(out)).finish()
  assert sorted(resumed) == list(range(saved + 1, STEPS + 1))
  assert resumed == {s: ref_losses[s] for s in resumed}
  params = dict(np.load(out))
  assert sorted(params) == sorted(ref_params)
  for k in params:
    assert params[k].dtype == ref_params[k].dtype and params[k].tobytes() == ref_params[k].tobytes(), k
  assert logged_losses(workdir) == ref_losses
  assert metrics_steps(workdir) == list(range(1, STEPS + 1))  # each step logged once


def test_second_run_on_a_busy_workdir_is_refused_and_the_first_finishes_untouched(
  tmp_path, corpus, jax_cache, reference
):
  workdir = tmp_path / "run"
  first = Worker(workdir, corpus, jax_cache, "--step-delay", "0.4")
  first.wait_for("STEP 1 ")
  t0 = time.monotonic()
  second = subprocess.run(
    [
      sys.executable,
      "-m",
      "modernlm_jax.main",
      "--config=configs/pretrain.py",
      f"--workdir={workdir}",
      "--config.train.steps=3",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=WAIT_S,
  )
  seconds = time.monotonic() - t0
  assert second.returncode != 0
  assert f"is in use by another run (PID {first.proc.pid} on host" in second.stderr, second.stderr[-2000:]
  assert f"lock file {workdir.absolute() / 'run.lock'}" in second.stderr
  assert seconds < 60, seconds  # refused at start-up (imports only), not after tokenizer training
  assert first.finish() == reference[0]  # the first run went on as if alone
  assert metrics_steps(workdir) == list(range(1, STEPS + 1))
  assert not (workdir / "run.lock").exists()

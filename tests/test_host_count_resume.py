"""Resume on a different host count: a run checkpointed by 2 processes continues on 1 and vice versa.

Batches are a pure function of (seed, step) and the global batch, never of the host count, so with the
same global batch the resumed run must log the losses of the uninterrupted run (one process owning both
devices). A changed global batch is refused with the setting that fixes it. Same workers and helpers as
tests/test_multiprocess.py (gloo collectives on 127.0.0.1).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from test_multiprocess import REPO, STEPS, WORKER, _check_same_global_loss, _child_env, _launch, _Run, _train_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("uninterrupted")
  run = _Run(tmp / "run", tmp / "logs", num_processes=1, local_devices=2, args=["--mesh", "data"])

  def result() -> dict:
    (r,) = run.results()
    assert r["steps"] == list(range(1, STEPS + 1))
    return r

  yield result
  run.kill()


def _resume(tmp_path, first_processes: int, second_processes: int) -> tuple[list[dict], list[dict]]:
  workdir = tmp_path / "run"
  topology = {1: dict(num_processes=1, local_devices=2), 2: dict(num_processes=2, local_devices=1)}
  args = ["--mesh", "data", "--checkpoint-every", "2"]
  first = _launch(workdir, tmp_path / "logs", **topology[first_processes], args=[*args, "--stop-at", "2"])
  second = _launch(workdir, tmp_path / "logs", **topology[second_processes], args=args)
  for results, n in ((first, first_processes), (second, second_processes)):
    assert [r["process_count"] for r in results] == [n] * n
    if n > 1:
      _check_same_global_loss(results)
  assert first[0]["steps"] == [1, 2] and second[0]["steps"] == [3, 4], "the restart must resume at step 3"
  assert _train_rows(workdir) == list(range(1, STEPS + 1))
  return first, second


def test_two_processes_resume_on_one_with_the_same_losses(uninterrupted, tmp_path):
  first, second = _resume(tmp_path, 2, 1)
  reference = uninterrupted()
  np.testing.assert_allclose(
    first[0]["losses"] + second[0]["losses"],
    reference["losses"],
    rtol=1e-5,
    err_msg="2 processes -> 1 process diverges from the uninterrupted run",
  )
  np.testing.assert_allclose(second[0]["val_loss"], reference["val_loss"], rtol=1e-5)

  # The same run with another global batch would see other data: refused before any step, naming the fix.
  res = subprocess.run(
    [sys.executable, str(WORKER), "--workdir", str(tmp_path / "run"), "--steps", str(STEPS + 2), "--batch-size", "4"],
    env=_child_env(2),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert res.returncode != 0
  assert "--config.train.batch_size=8" in res.stderr and "global batch" in res.stderr, res.stderr[-3000:]


def test_one_process_resumes_on_two_with_the_same_losses(uninterrupted, tmp_path):
  first, second = _resume(tmp_path, 1, 2)
  reference = uninterrupted()
  np.testing.assert_allclose(
    first[0]["losses"] + second[0]["losses"],
    reference["losses"],
    rtol=1e-5,
    err_msg="1 process -> 2 processes diverges from the uninterrupted run",
  )
  np.testing.assert_allclose(second[0]["val_loss"], reference["val_loss"], rtol=1e-5)

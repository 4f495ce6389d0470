"""Two processes on localhost (`jax.distributed` + gloo CPU collectives) train like one process with two devices.

Each worker (tests/multiprocess_worker.py) owns one CPU device and feeds only its own rows of every
global batch through the real training loop; the reference is the same run in one process with two
devices. Per-step losses must agree, and checkpoints written cooperatively by both processes into a
shared workdir must resume the run exactly.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

WORKER = Path(__file__).resolve().parent / "multiprocess_worker.py"
REPO = WORKER.parents[1]
STEPS = 4
TIMEOUT_S = 420  # per launch; generous because CI machines are shared. A hung collective ends here.
# Optimisation level 0 cuts XLA's CPU compile time ~7x; every process here (reference included) uses it,
# so the comparison is like for like.
XLA_FAST_COMPILE = "--xla_backend_optimization_level=0"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _child_env(local_devices: int, **extra: str) -> dict[str, str]:
  env = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_"))
  }
  # Replaces (not extends) the 8 fake devices the root conftest gives the test process.
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices} {XLA_FAST_COMPILE}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  env.update(extra)
  return env


class _Run:
  """The processes of one run, started in the background; `results()` waits for all of them."""

  def __init__(self, workdir: Path, logs: Path, *, num_processes: int, local_devices: int, args: list[str]):
    logs.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    self.procs: list[subprocess.Popen] = []
    self.logs: list[Path] = []
    self._results: list[dict] | None = None
    try:
      for pid in range(num_processes):
        dist = (
          {}
          if num_processes == 1
          else dict(
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(pid)
          )
        )
        log_path = logs / f"process{pid}-{time.monotonic_ns()}.log"
        self.logs.append(log_path)
        with open(log_path, "w") as log:  # a file, not a pipe: a full pipe buffer would block the child
          self.procs.append(
            subprocess.Popen(
              [sys.executable, str(WORKER), "--workdir", str(workdir), "--steps", str(STEPS), *args],
              env=_child_env(local_devices, **dist),
              stdout=log,
              stderr=subprocess.STDOUT,
              cwd=REPO,
            )
          )
      self.deadline = time.monotonic() + TIMEOUT_S
    except BaseException:
      self.kill()
      raise

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait(timeout=30)

  def results(self) -> list[dict]:
    if self._results is not None:
      return self._results
    try:
      for p in self.procs:
        p.wait(timeout=max(1.0, self.deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      pytest.fail(f"run did not finish within {TIMEOUT_S}s; logs:\n" + _tails(self.logs))
    finally:
      self.kill()  # on any failure no process may outlive the test (a peer would wait in a collective)
    failed = [i for i, p in enumerate(self.procs) if p.returncode != 0]
    assert not failed, f"processes {failed} failed; logs:\n" + _tails(self.logs)
    results = []
    for path in self.logs:
      lines = [line for line in path.read_text().splitlines() if line.startswith("RESULT ")]
      assert len(lines) == 1, f"{path} has no RESULT line:\n" + _tails([path])
      results.append(json.loads(lines[0][len("RESULT ") :]))
    self._results = results
    return results


def _launch(workdir: Path, logs: Path, **kwargs) -> list[dict]:
  return _Run(workdir, logs, **kwargs).results()


def _tails(paths: list[Path], chars: int = 3000) -> str:
  return "\n".join(f"--- {p.name}\n{p.read_text()[-chars:] if p.exists() else '(no log)'}" for p in paths)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """The uninterrupted run in one process that owns both devices; started at once, so it runs next to
  the first multi-process run (one process compiles on one core: a 2-core machine has room for three)."""
  tmp = tmp_path_factory.mktemp("reference")
  run = _Run(tmp / "run", tmp / "logs", num_processes=1, local_devices=2, args=["--mesh", "data"])

  def result() -> dict:
    (r,) = run.results()
    assert (r["process_count"], r["local_devices"]) == (1, 2)
    assert r["steps"] == list(range(1, STEPS + 1))
    return r

  yield result
  run.kill()


def _check_topology(results: list[dict]) -> None:
  assert sorted(r["process_index"] for r in results) == [0, 1]
  for r in results:
    assert (r["process_count"], r["local_devices"], r["global_devices"]) == (2, 1, 2), r


def _check_same_global_loss(results: list[dict]) -> None:
  # The loss is a global mean, so every process must log the same numbers.
  np.testing.assert_array_equal(results[0]["losses"], results[1]["losses"])
  assert results[0]["val_loss"] == results[1]["val_loss"]


def _train_rows(workdir: Path) -> list[int]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
  return [r["step"] for r in rows if "loss" in r]


def test_data_parallel_two_processes_match_one_process_two_devices(reference_run, tmp_path):
  results = _launch(
    tmp_path / "run", tmp_path / "logs", num_processes=2, local_devices=1, args=["--mesh", "data", "--async-checkpoint"]
  )
  reference = reference_run()
  _check_topology(results)
  _check_same_global_loss(results)
  assert results[0]["steps"] == reference["steps"]
  np.testing.assert_allclose(
    results[0]["losses"],
    reference["losses"],
    rtol=1e-5,
    err_msg="two processes × one device diverge from one process × two devices",
  )
  np.testing.assert_allclose(results[0]["val_loss"], reference["val_loss"], rtol=1e-5)
  # Only process 0 writes metrics: one row per step, not one per process.
  assert _train_rows(tmp_path / "run") == list(range(1, STEPS + 1))
  assert (tmp_path / "run" / "checkpoints" / str(STEPS) / "commit_success.txt").exists()


def test_fsdp_checkpoint_written_by_both_processes_resumes_exactly(reference_run, tmp_path):
  """Parameters sharded across the processes: each writes its own shard, and a restart restores both."""
  workdir = tmp_path / "run"
  first = _launch(
    workdir,
    tmp_path / "logs",
    num_processes=2,
    local_devices=1,
    args=["--mesh", "fsdp", "--async-checkpoint", "--checkpoint-every", "2", "--stop-at", "2"],
  )
  _check_topology(first)
  _check_same_global_loss(first)
  state_dir = workdir / "checkpoints" / "2" / "state"
  assert (state_dir / "commit_success.txt").exists(), sorted(p.name for p in state_dir.parent.iterdir())
  assert sorted(p.name for p in state_dir.glob("ocdbt.process_*")) == ["ocdbt.process_0", "ocdbt.process_1"], (
    "each process must write its own parameter shard"
  )

  second = _launch(
    workdir,
    tmp_path / "logs",
    num_processes=2,
    local_devices=1,
    args=["--mesh", "fsdp", "--async-checkpoint", "--checkpoint-every", "2"],
  )
  _check_topology(second)
  _check_same_global_loss(second)
  assert first[0]["steps"] == [1, 2] and second[0]["steps"] == [3, 4], "the restart must resume at step 3"
  reference = reference_run()
  # FSDP reduce-scatters where data parallelism all-reduces: same sums, possibly different rounding.
  np.testing.assert_allclose(
    first[0]["losses"] + second[0]["losses"],
    reference["losses"],
    rtol=1e-5,
    err_msg="stopped-and-resumed FSDP run diverges from the uninterrupted reference",
  )
  np.testing.assert_allclose(second[0]["val_loss"], reference["val_loss"], rtol=1e-5)
  assert _train_rows(workdir) == list(range(1, STEPS + 1))
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]


def test_sigterm_on_one_process_saves_the_same_step_on_both(tmp_path):
  """Only process 0 is signalled; the all-reduced flag makes both save the same step together, then exit 143."""
  workdir = tmp_path / "run"
  run = _Run(
    workdir,
    tmp_path / "logs",
    num_processes=2,
    local_devices=1,
    args=["--mesh", "data", "--async-checkpoint", "--sigterm-at", "1", "--preemption-check-every", "2"],
  )
  try:
    for p in run.procs:
      p.wait(timeout=TIMEOUT_S)
  finally:
    run.kill()
  assert [p.returncode for p in run.procs] == [143, 143], _tails(run.logs)
  results = [
    json.loads(next(line for line in path.read_text().splitlines() if line.startswith("RESULT "))[7:])
    for path in run.logs
  ]
  assert [r["preempted_at"] for r in results] == [2, 2]  # the first agreed check after the signal
  assert all("saved step 2 on SIGTERM" in path.read_text() for path in run.logs)
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [2]
  assert (workdir / "checkpoints" / "2" / "commit_success.txt").exists()

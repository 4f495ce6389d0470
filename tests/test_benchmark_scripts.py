"""The benchmark helper scripts run end to end on CPU at tiny sizes (their GPU numbers are in benchmarks/)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = (
  "--config.model.n_layers=1 --config.model.d_model=32 --config.model.n_heads=2 --config.model.d_ff=64 "
  "--config.model.vocab_size=64"
)


def _env():
  # PYTHON: the scripts run the interpreter running the tests, not whichever python3 is first on PATH.
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", PYTHON=sys.executable)
  env.pop("XLA_FLAGS", None)  # one CPU device is enough; main.py adds its own CPU workaround
  return env


@pytest.mark.slow
def test_gpu_matrix_script_prints_a_row_per_variant_and_reports_failures(tmp_path):
  bench = (
    f"--config={REPO}/configs/bench.py:modern-tiny {TINY_MODEL} --config.bench.batch_size=2 "
    "--config.bench.seq_len=16 --config.bench.steps=1 --config.bench.warmup=1 --config.mesh.data=1"
  )
  out = tmp_path / "out"
  proc = subprocess.run(
    [
      "bash",
      str(REPO / "benchmarks" / "gpu_matrix.sh"),
      str(out),
      f"ok|{bench}",
      f"typo|{bench} --config.bench.stepz=1",
    ],
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(_env(), BENCH_WORK_ROOT=str(tmp_path)),
    cwd=tmp_path,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  assert [r["variant"] for r in rows] == ["ok"] and rows[0]["result"]["tokens_per_s"] > 0
  assert "variant typo failed" in proc.stdout and (out / "typo.log").is_file()
  table = proc.stdout.split("tok/s", 1)[1]
  assert "\nok " in table and "typo" not in table
  assert (tmp_path / "bench_ok" / "bench.json").is_file()


@pytest.mark.slow
def test_decode_speed_script_measures_prefill_and_decode():
  proc = subprocess.run(
    [
      sys.executable,
      str(REPO / "benchmarks" / "decode_speed.py"),
      "gpt2-tiny",
      "--prefill=16",
      "--decode=4",
      "--repeats=1",
      "--dtype=float32",
    ],
    capture_output=True,
    text=True,
    timeout=300,
    env=_env(),
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith("{"))
  result = json.loads(line)
  assert result["preset"] == "gpt2-tiny" and result["prefill"]["n_tokens"] == 16
  assert result["decode"]["n_tokens"] == 4 and result["decode"]["tokens_per_s"] > 0
  assert proc.stdout.rstrip().splitlines()[-1].startswith("gpt2-tiny")


@pytest.mark.slow
def test_hlo_dump_script_packs_the_optimised_step(tmp_path):
  import tarfile

  args = [
    f"--config={REPO}/configs/bench.py:modern-tiny",
    *TINY_MODEL.split(),
    "--config.bench.batch_size=2",
    "--config.bench.seq_len=16",
  ]
  proc = subprocess.run(
    ["bash", str(REPO / "benchmarks" / "hlo_dump.sh"), str(tmp_path), *args],
    capture_output=True,
    text=True,
    timeout=300,
    env=_env(),
    cwd=tmp_path,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  with tarfile.open(tmp_path / "hlo.tgz") as tar:
    names = tar.getnames()
  assert any(n.endswith("after_optimizations.txt") and "step_fn" in n for n in names), names


@pytest.mark.slow
def test_torch_reference_benchmark_runs_tiny_on_cpu():
  proc = subprocess.run(
    [
      sys.executable,
      str(REPO / "benchmarks" / "torch_reference.py"),
      "--n_layer=1",
      "--n_embd=32",
      "--n_head=2",
      "--vocab=64",
      "--batch=2",
      "--seq=16",
      "--steps=2",
      "--warmup=1",
      "--device=cpu",
    ],
    capture_output=True,
    text=True,
    timeout=300,
    env=_env(),
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["impl"] == "torch" and result["dtype"] == "float32" and result["compiled"] is False
  assert result["tokens_per_s"] > 0 and result["tokens_per_cpu_s"] > 0
  assert abs(result["loss"] - 4.16) < 0.5  # ≈ ln(64) at init: the model and loss are wired right
  bad = subprocess.run(
    [sys.executable, str(REPO / "benchmarks" / "torch_reference.py"), "--n_embd=30", "--n_head=4"],
    capture_output=True,
    text=True,
    timeout=120,
    env=_env(),
  )
  assert bad.returncode != 0 and "divisible" in bad.stderr

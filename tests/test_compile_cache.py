"""The per-host persistent compilation cache (train.compilation_cache_dir) and the global-batch resume check."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from modernlm_jax.train import compile_cache
from modernlm_jax.train.checkpoint import CheckpointError, check_identity

REPO = Path(__file__).resolve().parents[1]


def test_cache_folder_is_per_host_local_and_can_be_off(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compile_cache.resolve_dir("auto") == str(
    tmp_path / "modernlm_jax" / "jax_compilation_cache" / socket.gethostname()
  )
  assert compile_cache.resolve_dir("") is None
  assert compile_cache.resolve_dir("~/cc") == os.path.expanduser("~/cc")
  with pytest.raises(ValueError, match="must be a local folder"):
    compile_cache.resolve_dir("gs://bucket/cache")


_CHILD = """
import json, sys
import jax, jax.numpy as jnp
from modernlm_jax.train import compile_cache
folder = compile_cache.setup(sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # the test program compiles in milliseconds
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
f(jnp.ones((8, 8))).block_until_ready()
print("STATS " + json.dumps({"folder": folder, **compile_cache.stats()}))
"""


def _start(cache: str, env: dict) -> dict:
  res = subprocess.run([sys.executable, "-c", _CHILD, cache], capture_output=True, text=True, timeout=120, env=env)
  assert res.returncode == 0, res.stderr[-3000:]
  (line,) = [s for s in res.stdout.splitlines() if s.startswith("STATS ")]
  return json.loads(line[len("STATS ") :])


@pytest.mark.slow
def test_second_start_loads_programs_from_the_cache(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  cold = _start(str(tmp_path / "cc"), env)
  assert cold["folder"] == str(tmp_path / "cc") and cold["hits"] == 0 and cold["misses"] >= 1
  assert any((tmp_path / "cc").iterdir()), "the first start must write the compiled program"
  warm = _start(str(tmp_path / "cc"), env)
  assert warm["hits"] >= 1 and warm["misses"] == 0
  off = _start("", env)
  assert off["folder"] is None and off["hits"] == 0


def _identity(batch: int) -> dict:
  return {"model": {"d_model": 8}, "tokenizer_kind": "bytes", "global_batch_size": batch}


def test_resume_with_another_global_batch_is_refused_naming_the_fix():
  check_identity(_identity(8), _identity(8), None, "runs/x")
  with pytest.raises(CheckpointError, match=r"--config.train.batch_size=8 \(the global batch"):
    check_identity(_identity(8), _identity(4), None, "runs/x")
  # Checkpoints from before the field existed: the stored config names the batch.
  old = {"model": {"d_model": 8}, "config": {"train": {"batch_size": 16}}}
  with pytest.raises(CheckpointError, match="batch_size=16"):
    check_identity(old, _identity(4), None, "runs/x")

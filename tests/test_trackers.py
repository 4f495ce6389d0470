"""Trackers: W&B (offline mode) and Trackio (a local project) get the scalars of metrics.jsonl, the resolved config
and the sample; TensorBoard stays the default. Each run is a subprocess so tracker settings read from the
environment at import time (TRACKIO_DIR) point into tmp_path."""

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modernlm_jax.train.trackers import parse_trackers

REPO = Path(__file__).resolve().parents[1]


def tracker_env(tmp_path):
  return {
    **os.environ,
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "WANDB_DISABLE_GIT": "true",
    "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
    "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
    "TRACKIO_DIR": str(tmp_path / "trackio"),
    "TRACKIO_PROJECT": "modernlm_test",
    "HF_HUB_OFFLINE": "1",
    "JAX_PLATFORMS": "cpu",
  }


def _wandb_records(path: Path):
  """Protobuf records of an offline `.wandb` file: a 7-byte header, then LevelDB-log framing (32 KiB blocks of
  [crc32 u32, length u16, type u8] chunks; type 1 full, 2 first, 3 middle, 4 last)."""
  from wandb.proto import wandb_internal_pb2 as pb

  data, pos, block, pending = path.read_bytes(), 7, 32768, b""
  assert data[:4] == b":W&B"
  while pos + 7 <= len(data):
    left = block - pos % block
    if left < 7:
      pos += left
      continue
    _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
    if length == 0 and kind == 0:
      pos += left
      continue
    chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
    pending = chunk if kind in (1, 2) else pending + chunk
    if kind in (1, 4):
      record = pb.Record()
      record.ParseFromString(pending)
      yield record


def wandb_run(workdir: Path) -> tuple[list[dict], dict, dict]:
  """(history rows, final summary, config) of the newest offline W&B run under <workdir>/wandb."""
  runs = sorted((workdir / "wandb").glob("offline-run-*/run-*.wandb"))
  assert runs, f"no offline W&B run folder under {workdir / 'wandb'}"
  history, summary, config = [], {}, {}
  for r in _wandb_records(runs[-1]):
    kind = r.WhichOneof("record_type")
    if kind == "history":
      history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item})
    elif kind == "summary":
      summary.update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in r.summary.update})
    elif kind in ("run", "config"):
      items = r.run.config.update if kind == "run" else r.config.update
      config.update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in items})
  return history, summary, config


def trackio_logs(tmp_path, run_name: str) -> tuple[list[dict], dict]:
  code = (
    "import json\nfrom trackio.sqlite_storage import SQLiteStorage as S\n"
    f"print(json.dumps([S.get_logs('modernlm_test', {run_name!r}), S.get_run_config('modernlm_test', "
    f"{run_name!r})], default=str))"
  )
  res = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=tracker_env(tmp_path)
  )
  assert res.returncode == 0, res.stderr[-2000:]
  logs, config = json.loads(res.stdout.strip().splitlines()[-1])
  return logs, config or {}


def test_tracker_names_are_checked():
  assert parse_trackers("tensorboard, wandb") == ["tensorboard", "wandb"]
  assert parse_trackers("") == []
  with pytest.raises(ValueError, match="unknown tracker.*'mlflow'"):
    parse_trackers("tensorboard,mlflow")


@pytest.mark.slow
def test_metric_writer_feeds_wandb_offline_and_a_local_trackio_project(tmp_path):
  pytest.importorskip("wandb")
  pytest.importorskip("trackio")
  workdir = tmp_path / "run-a"
  code = textwrap.dedent(f"""
      from pathlib import Path
      from modernlm_jax.train.metrics import MetricWriter
      from modernlm_jax.train.trackers import log_sample
      w = MetricWriter(Path({str(workdir)!r}), tensorboard=True, trackers="tensorboard,wandb,trackio",
                       config={{"train": {{"lr": 0.003, "optimizer": "muon"}}, "preset": "modern-tiny"}})
      for step in (1, 2, 3):
        w.write({{"step": step, "loss": 5.0 - step, "lr": 0.001 * step, "note": "text is not a scalar"}})
      w.write({{"step": 3, "val_loss": 2.5}})
      w.close()
      log_sample(Path({str(workdir)!r}), "Once upon a time there was", 3)
      """)
  (workdir).mkdir()
  res = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=tracker_env(tmp_path), cwd=REPO
  )
  assert res.returncode == 0, res.stderr[-3000:]
  history, summary, config = wandb_run(workdir)
  assert [row["loss"] for row in history] == [4.0, 3.0, 2.0] and history[-1]["val_loss"] == 2.5
  assert "note" not in history[0]
  assert summary["sample"] == "Once upon a time there was"
  assert config["train"]["optimizer"] == "muon" and config["preset"] == "modern-tiny"
  assert (workdir / "wandb_run_id").is_file()
  logs, tconfig = trackio_logs(tmp_path, "run-a")
  assert [row["loss"] for row in logs if "loss" in row] == [4.0, 3.0, 2.0]
  assert any(row.get("val_loss") == 2.5 for row in logs)
  assert any("sample" in row for row in logs)
  assert tconfig.get("train", {}).get("optimizer") == "muon"
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_missing_tracker_package_is_a_clear_error(tmp_path):
  code = (
    "import sys; sys.modules['wandb'] = None\nfrom pathlib import Path\n"
    "from modernlm_jax.train.metrics import MetricWriter\n"
    f"MetricWriter(Path({str(tmp_path)!r}), tensorboard=False, trackers='wandb')"
  )
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
  assert res.returncode != 0 and "pip install -e '.[wandb]'" in res.stderr


@pytest.mark.slow
def test_main_job_logs_the_same_scalars_config_and_sample_to_every_tracker(tmp_path):
  pytest.importorskip("wandb")
  pytest.importorskip("trackio")
  run = tmp_path / "tiny-run"
  cmd = [
    sys.executable,
    "-m",
    "modernlm_jax.main",
    f"--config={REPO}/configs/pretrain.py",
    f"--workdir={run}",
    "--config.train.trackers=tensorboard,wandb,trackio",
    "--config.train.steps=10",
    "--config.train.log_every=5",
    "--config.train.eval_every=10",
    "--config.train.checkpoint_every=10",
    "--config.train.batch_size=8",
    "--config.data.seq_len=64",
    "--config.train.eval_batches=1",
    "--config.sample.max_new_tokens=4",
  ]
  res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=tracker_env(tmp_path))
  assert res.returncode == 0, res.stderr[-3000:]
  rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if "loss" in r]
  final = json.loads((run / "final_metrics.json").read_text())
  history, summary, config = wandb_run(run)
  assert [row["loss"] for row in history if "loss" in row] == pytest.approx([r["loss"] for r in train_rows])
  assert summary["val_loss"] == pytest.approx(final["val_loss"])
  assert summary["sample"] == final["sample"]
  assert config["train"]["trackers"] == "tensorboard,wandb,trackio"
  assert config["objective"] == "next_token"
  logs, tconfig = trackio_logs(tmp_path, "tiny-run")
  assert [row["loss"] for row in logs if "loss" in row] == pytest.approx([r["loss"] for r in train_rows])
  assert tconfig["train"]["trackers"] == "tensorboard,wandb,trackio"
  assert any("sample" in row for row in logs)

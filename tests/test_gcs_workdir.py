"""gs:// run folders end to end, against a real GCS JSON API (an in-memory emulator on 127.0.0.1).

Every client the project uses is pointed at the emulator: gcsfs (etils.epath: tokenizer, metrics, reports,
eval outputs) through STORAGE_EMULATOR_HOST, tensorstore (orbax's array data) through
TENSORSTORE_GCS_HTTP_URL. Nothing here needs network beyond 127.0.0.1 or any credentials.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("gcsfs")
pytest.importorskip("gcp_storage_emulator")

from gcs_emulator import GcsEmulator  # noqa: E402

from modernlm_jax import paths  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUCKET = "test-bucket"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  emulator = GcsEmulator(BUCKET, str(tmp_path_factory.mktemp("emulator") / "server.log"))
  os.environ.update(emulator.env)
  yield emulator
  emulator.stop()


def _child_env(extra: dict[str, str], home: Path) -> dict[str, str]:
  env = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("STORAGE_EMULATOR", "TENSORSTORE_GCS", "GOOGLE_APPLICATION", "JAX_COORDINATOR"))
  }
  env.update(
    PYTHONPATH=str(REPO),
    JAX_PLATFORMS="cpu",
    HOME=str(home),
    XDG_CACHE_HOME=str(home / ".cache"),
    CLOUDSDK_CONFIG=str(home / "gcloud"),
    MODERNLM_CACHE=str(home / "token_cache"),
    XLA_FLAGS="--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0",
  )
  env.update(extra)
  return env


def test_paths_read_write_copy_and_mirror_on_gcs(gcs, tmp_path):
  root = paths.path(f"gs://{BUCKET}/unit")
  assert paths.is_remote(root) and str(root) == f"gs://{BUCKET}/unit"
  paths.write_text_atomic(root / "a" / "x.json", '{"k": 1}')
  assert json.loads((root / "a" / "x.json").read_text()) == {"k": 1}
  paths.copy_tree(root, tmp_path / "down")
  assert (tmp_path / "down" / "a" / "x.json").read_text() == '{"k": 1}'
  paths.copy_tree(tmp_path / "down", root / "copy")
  assert (root / "copy" / "a" / "x.json").exists()

  mirror = paths.LocalMirror(root / "run", interval_s=3600)
  assert not paths.is_remote(mirror.local)
  (Path(mirror.local) / "log.jsonl").write_text("1\n")
  mirror.sync()  # inside the interval: nothing uploaded yet
  assert not (root / "run" / "log.jsonl").exists()
  mirror.close()  # forced upload, then the local stand-in is removed
  assert (root / "run" / "log.jsonl").read_text() == "1\n" and not Path(mirror.local).exists()
  again = paths.LocalMirror(root / "run")
  again.pull("log.jsonl")  # a resumed writer continues the remote file
  with open(Path(again.local) / "log.jsonl", "a") as f:
    f.write("2\n")
  again.close()
  assert (root / "run" / "log.jsonl").read_text() == "1\n2\n"


def test_local_paths_are_absolute_and_unchanged(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  p = paths.path("runs/x")
  assert not paths.is_remote(p) and str(p) == str(tmp_path / "runs" / "x")
  mirror = paths.LocalMirror("runs/x")
  assert Path(mirror.local) == tmp_path / "runs" / "x"  # local runs write in place, no copy
  paths.check_access("runs/x")  # nothing to check for local folders


def test_check_access_names_a_missing_bucket(gcs):
  paths.check_access(f"gs://{BUCKET}/anything")
  with pytest.raises(paths.StorageAccessError, match="gs://nobucket.*does not exist"):
    paths.check_access("gs://nobucket/x")


def test_metric_writer_on_gcs_appends_across_restarts(gcs):
  from modernlm_jax.train.metrics import MetricWriter, read_metrics

  workdir = f"gs://{BUCKET}/metrics-run"
  for step in (1, 2):
    w = MetricWriter(workdir, tensorboard=True)
    w.write({"step": step, "loss": 1.0 / step})
    w.close()
  assert [r["step"] for r in read_metrics(workdir)] == [1, 2]
  assert any(p.name.startswith("events.out.tfevents") for p in paths.path(workdir + "/tensorboard").iterdir())


@pytest.mark.slow
def test_gs_workdir_without_credentials_fails_fast_and_writes_nothing(tmp_path):
  cwd, home = tmp_path / "cwd", tmp_path / "home"
  cwd.mkdir()
  home.mkdir()
  t0 = time.monotonic()
  res = subprocess.run(
    [
      sys.executable,
      "-m",
      "modernlm_jax.main",
      f"--config={REPO / 'configs' / 'pretrain.py'}",
      "--workdir=gs://nobucket/x",
    ],
    cwd=cwd,
    env=_child_env({"NO_GCE_CHECK": "True"}, home),
    capture_output=True,
    text=True,
    timeout=120,
  )
  elapsed = time.monotonic() - t0
  assert res.returncode != 0
  assert "gs://nobucket" in res.stderr and "gcloud auth application-default login" in res.stderr, res.stderr[-2000:]
  assert "Traceback" not in res.stderr
  assert elapsed < 30, f"took {elapsed:.1f}s"
  assert not list(cwd.iterdir()) and not list(home.iterdir()), "nothing may be written locally"


def _pretrain(workdir: str, tmp_path: Path, name: str, extra: dict[str, str]) -> str:
  args = [
    sys.executable,
    "-m",
    "modernlm_jax.main",
    f"--config={REPO / 'configs' / 'pretrain.py'}",
    f"--workdir={workdir}",
    "--config.train.steps=4",
    "--config.train.batch_size=4",
    "--config.data.seq_len=32",
    "--config.train.checkpoint_every=2",
    "--config.train.eval_every=4",
    "--config.train.eval_batches=1",
    "--config.train.log_every=1",
    "--config.sample.max_new_tokens=2",
    "--config.train.compilation_cache_dir=",
  ]
  home = tmp_path / "home"
  home.mkdir(exist_ok=True)
  res = subprocess.run(args, cwd=tmp_path, env=_child_env(extra, home), capture_output=True, text=True, timeout=600)
  (tmp_path / f"{name}.log").write_text(res.stdout + res.stderr)
  assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
  return res.stdout + res.stderr


def _losses(workdir: str) -> list[tuple[int, float]]:
  from modernlm_jax.train.metrics import read_metrics

  return [(r["step"], r["loss"]) for r in read_metrics(workdir) if "loss" in r]


@pytest.mark.slow
def test_pretrain_on_gs_resumes_bit_identically_and_feeds_eval_and_sft(gcs, tmp_path):
  import jax

  from modernlm_jax.train.init_from import load_params, read_meta

  workdir = f"gs://{BUCKET}/run"
  _pretrain(workdir, tmp_path, "first", gcs.env)
  run = paths.path(workdir)
  assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
  for name in ("tokenizer/sentencepiece.model", "final_metrics.json", "checkpoints/4/commit_success.txt"):
    assert (run / name).exists(), name
  assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())
  assert not (tmp_path / "gs:").exists(), "the gs:// workdir must not become a local folder"
  first = _losses(workdir)
  assert [s for s, _ in first] == [1, 2, 3, 4]
  saved = read_meta(f"{workdir}/checkpoints/4")["fingerprints"]

  # A second process resumes from step 2 and must reach the same step-4 state, bit for bit.
  (run / "checkpoints" / "4").rmtree()
  log = _pretrain(workdir, tmp_path, "resumed", gcs.env)
  assert "resumed from checkpoint step 2" in log
  assert read_meta(f"{workdir}/checkpoints/4")["fingerprints"] == saved
  resumed = _losses(workdir)  # metrics.jsonl is cut back to step 2 on resume, then the resumed rows appended
  assert resumed == first

  # Evaluation and SFT's init_from read the run straight from the bucket.
  from modernlm_jax.eval.checkpoint_model import load_eval_model

  model = load_eval_model(workdir)
  assert model.step == 4 and model.tokenizer.identity == model.meta["tokenizer_identity"]
  params, meta = load_params(workdir)
  assert meta["step"] == 4
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(model.params)

  import ml_collections

  from modernlm_jax.jobs.posttrain import init_from_tokenizer

  config = ml_collections.ConfigDict(
    dict(init_from=workdir, tokenizer=dict(kind="sentencepiece", path=""), model=dict(vocab_size=model.cfg.vocab_size))
  )
  tok = init_from_tokenizer(config, f"gs://{BUCKET}/sft", meta, workdir)
  assert tok.identity == meta["tokenizer_identity"]
  assert paths.path(f"gs://{BUCKET}/sft/tokenizer/sentencepiece.model").exists()

  res = subprocess.run(
    [
      sys.executable,
      "-m",
      "modernlm_jax.main",
      f"--config={REPO / 'configs' / 'eval.py'}",
      f"--config.checkpoint={workdir}",
      f"--workdir=gs://{BUCKET}/eval",
      f"--config.data_root={tmp_path / 'no_data'}",
    ],
    cwd=tmp_path,
    env=_child_env(gcs.env, tmp_path / "home"),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
  out = json.loads(paths.path(f"gs://{BUCKET}/eval/eval.json").read_text())
  assert workdir in out["checkpoints"]


@pytest.mark.slow
def test_comparison_results_and_report_on_gcs(gcs):
  from test_report import make_results

  from modernlm_jax.compare import report as report_lib
  from modernlm_jax.compare import results as results_lib
  from modernlm_jax.jobs.compare import _write_report

  workdir = paths.path(f"gs://{BUCKET}/compare")
  results = make_results()
  results_lib.save(results, workdir / "results.json")
  assert results_lib.load(workdir / "results.json") == json.loads(json.dumps(results))
  report = _write_report(results, workdir)
  assert str(report) == f"gs://{BUCKET}/compare/{report_lib.REPORT_NAME}"
  assert "# Matched comparison report" in report.read_text()
  assert any(p.name.endswith(".png") for p in workdir.iterdir()), "figures are uploaded next to the report"


def test_one_emulator_setting_points_tensorstore_there_too(monkeypatch):
  monkeypatch.delenv("TENSORSTORE_GCS_HTTP_URL", raising=False)
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:9")
  paths.path("gs://b/x")
  assert os.environ["TENSORSTORE_GCS_HTTP_URL"] == "http://127.0.0.1:9"
  assert os.environ["EPATH_USE_TF"] == "false"  # gs:// always through gcsfs, TensorFlow installed or not

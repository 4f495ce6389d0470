"""The benchmark task (one JSON line with every field) and the profile command (top operations)."""

import importlib.util
import json
import os
from pathlib import Path

import jax
import pytest

from modernlm_jax.jobs import bench, profile
from modernlm_jax.model import ModelConfig
from modernlm_jax.train import flops

TINY = dict(vocab_size=64, max_len=64, n_layers=2, d_model=32, n_heads=4, d_ff=64)


def bench_config_module():
  spec = importlib.util.spec_from_file_location(
    "bench_config", Path(__file__).resolve().parents[1] / "configs" / "bench.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny_bench_config(**bench_overrides):
  c = bench_config_module().get_config("modern-tiny")
  c.model.update(TINY)
  c.bench.update(dict(batch_size=2, seq_len=32, steps=2, warmup=1, dtype="float32", loss_chunk=8))
  c.bench.update(bench_overrides)
  c.mesh.update(dict(data=1, fsdp=1, tensor=1))
  return c


@pytest.fixture(scope="module")
def profiled_bench(tmp_path_factory):
  """One compile for the JSON and profile tests: the profile command runs the benchmark, then traces."""
  import contextlib
  import io

  workdir = tmp_path_factory.mktemp("bench")
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    rows = profile.run(tiny_bench_config(profile_steps=2, top_ops=8), workdir)
  return workdir, rows, out.getvalue()


def _last_json(out: str) -> dict:
  lines = [l for l in out.splitlines() if l.startswith("{")]
  assert lines, f"no JSON line in output:\n{out}"
  return json.loads(lines[-1])


@pytest.mark.slow
def test_bench_on_cpu_prints_every_field(profiled_bench):
  workdir, _, out = profiled_bench
  printed = _last_json(out)
  for field in bench.RESULT_FIELDS:
    assert field in printed, field
  assert printed["backend"] == "cpu" and printed["mfu"] is None and printed["peak_tflops_per_device"] is None
  assert printed["tokens_per_s"] > 0 and printed["step_ms"] > 0 and printed["compile_s"] > 0
  assert printed["tokens_per_s"] == pytest.approx(2 * 32 / (printed["step_ms"] / 1e3), rel=1e-6)
  cfg = ModelConfig.from_dict(tiny_bench_config().model)
  assert printed["flops_per_token"] == pytest.approx(flops.flops_per_token(cfg, 32))
  assert printed["model_tflops"] == pytest.approx(printed["flops_per_token"] * printed["tokens_per_s"] / 1e12)
  assert printed["peak_memory_source"] == "host_peak_rss" and printed["peak_memory_bytes"] > 1e6
  assert 0 < printed["loss"] < 10
  c = printed["config"]
  assert (c["batch_size"], c["seq_len"], c["steps"], c["warmup"]) == (2, 32, 2, 1)
  assert (c["dtype"], c["loss_chunk"], c["remat"], c["synthetic"]) == ("float32", 8, "none", True)
  assert c["attention_kernel"] == "xla"
  assert json.loads((workdir / "bench.json").read_text())["step_ms"] == printed["step_ms"]


def test_resolve_fills_cpu_defaults_and_applies_knobs():
  c = tiny_bench_config(batch_size=0, seq_len=0, steps=0, warmup=-1, dtype="bfloat16", remat="dots")
  r = bench.resolve(c)
  assert (r.train.batch_size, r.data.seq_len, r.bench.steps, r.bench.warmup) == (4, 64, 5, 1)  # seq capped at max_len
  assert (r.model.dtype, r.model.remat, r.train.loss_chunk) == ("bfloat16", "dots", 8)
  assert r.data.isolate_documents is False
  assert c.model.dtype == "float32"  # the caller's config is not modified


def test_resolve_rejects_bad_settings():
  with pytest.raises(ValueError, match="exceeds model.max_len"):
    bench.resolve(tiny_bench_config(seq_len=128))
  with pytest.raises(ValueError, match="attention_impl"):
    bench.resolve(tiny_bench_config(attention_impl="flash9"))


def test_gpu_preset_uses_the_fast_path(monkeypatch):
  """On a GPU the default gpt2-125m bench is bf16, chunked loss, 16×1024, and cuDNN attention is selected."""
  from modernlm_jax.model.attention import select_attention_impl
  from modernlm_jax.train.registry import make_objective

  c = bench_config_module().get_config(None)
  assert c.preset == "gpt2-125m"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  r = bench.resolve(c)
  assert (r.train.batch_size, r.data.seq_len, r.bench.steps) == (16, 1024, 20)
  assert (r.model.dtype, r.train.loss_chunk) == ("bfloat16", 4096)
  objective = make_objective(r)
  assert objective.use_segment_ids is False
  kernel, reason = select_attention_impl(
    ModelConfig.from_dict(r.model), backend="gpu", has_segments=objective.use_segment_ids, decoding=False, seq_len=1024
  )
  assert kernel == "cudnn", reason


@pytest.mark.parametrize(
  "kind,peak",
  [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-40GB", 312e12),
    ("TPU v4", 275e12),
    ("TPU v3", 123e12),
    ("cpu", None),
  ],
)
def test_peak_table(kind, peak):
  class Fake:
    device_kind = kind

  assert flops.device_peak_flops(Fake()) == peak


def test_top_ops_sums_by_hlo_op_and_falls_back_to_device_events():
  events = [
    {"ph": "X", "name": "k1", "dur": 30.0, "args": {"hlo_op": "fusion.1"}},
    {"ph": "X", "name": "k2", "dur": 10.0, "args": {"hlo_op": "fusion.1"}},
    {"ph": "X", "name": "k3", "dur": 60.0, "args": {"hlo_op": "dot.2"}},
    {"ph": "X", "name": "python", "dur": 999.0},
  ]
  rows = profile.top_ops(events, 5)
  assert [(r.name, r.count) for r in rows] == [("dot.2", 1), ("fusion.1", 2)]
  assert rows[1].total_ms == pytest.approx(0.04) and rows[0].share == pytest.approx(0.6)
  device_only = [
    {"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/device:GPU:0"}},
    {"ph": "X", "pid": 7, "name": "gemm", "dur": 5.0},
    {"ph": "X", "pid": 1, "name": "host", "dur": 50.0},
  ]
  assert [r.name for r in profile.top_ops(device_only)] == ["gemm"]
  assert "gemm" in profile.format_top_ops(profile.top_ops(device_only))


def test_op_families_add_up_per_layer_copies():
  rows = [
    profile.OpTime("custom-call.36", 4, 9.0, 0.45),
    profile.OpTime("fusion.2", 1, 1.0, 0.05),
    profile.OpTime("custom-call.85", 6, 6.0, 0.30),
    profile.OpTime("dot_product_attention_bwd.104", 2, 4.0, 0.2),
  ]
  fams = profile.op_families(rows)
  assert [(f.name, f.count) for f in fams] == [("custom-call", 10), ("dot_product_attention_bwd", 2), ("fusion", 1)]
  assert fams[0].total_ms == pytest.approx(15.0) and fams[0].share == pytest.approx(0.75)


def test_profile_asks_for_op_level_gpu_traces(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  profile.prefer_op_level_trace()
  assert os.environ["XLA_FLAGS"].endswith(profile.NO_COMMAND_BUFFERS)
  profile.prefer_op_level_trace()  # idempotent
  assert os.environ["XLA_FLAGS"].count(profile.NO_COMMAND_BUFFERS) == 1


def test_find_trace_file_names_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match="run a profile first"):
    profile.find_trace_file(tmp_path)


@pytest.mark.slow
def test_profile_command_prints_top_ops(profiled_bench):
  workdir, rows, out = profiled_bench
  assert (workdir / "profile").is_dir() and "trace:" in out
  assert len(rows) >= 3 and all(r.total_ms > 0 for r in rows)
  for r in rows[:3]:
    assert r.name[:20] in out


@pytest.mark.slow
def test_profile_cli_summarises_an_existing_trace(profiled_bench, capsys):
  workdir, rows, _ = profiled_bench
  printed_rows = profile.main(["profile", f"--trace_dir={workdir / 'profile'}", "--top=3"])
  assert printed_rows == rows[:3]
  out = capsys.readouterr().out
  top, families = out.split("by operation family:")
  assert rows[0].name[:20] in top and len([l for l in top.splitlines() if "%" in l]) == 3
  assert len([l for l in families.splitlines() if "%" in l]) == 3  # the family table honours --top too
